"""QLoRA's first step: the base model's Linear layers become 4-bit QuantLinear layers.

The modules that stay in full precision are those that train in full (modules_to_save, and the
classifier head that task_type "SEQ_CLS" adds) and the output layer, which QLoRA recipes keep
unquantized. The adapters put on top stay float32 (`LoraLinear` gives them the float32 dtype of a
dequantized weight), and the 4-bit codes are no Parameter, so no gradient or optimizer reaches them.
"""

from __future__ import annotations

from entrenar.lora.config import LoraConfig
from entrenar.lora.inject import SEQ_CLS_HEAD_NAMES, named_modules_outside_adapters, output_layer_names
from entrenar.nn.module import Module
from entrenar.quant import quantize_linears

__all__ = ["QUANT_KINDS", "check_quantize", "quantize_base"]

QUANT_KINDS = ("nf4", "int4")


def check_quantize(kind: str, block_size: int, double_quant: bool) -> None:
    """Validate get_peft_model's quantize arguments, naming the valid values."""
    if kind not in QUANT_KINDS:
        raise ValueError(f"quantize must be None or one of {list(QUANT_KINDS)}, got {kind!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if not isinstance(double_quant, bool):
        raise ValueError(f"double_quant must be a bool, got {double_quant!r}")


def full_precision_names(model: Module, config: LoraConfig) -> list[str]:
    """Names that keep float weights: modules_to_save matches (PEFT's suffix rule) and the output layer."""
    keep = list(config.modules_to_save or [])
    if config.task_type == "SEQ_CLS":
        keep += [h for h in SEQ_CLS_HEAD_NAMES if h not in keep]
    names = {n for n, _ in named_modules_outside_adapters(model) if n and any(n.endswith(k) for k in keep)}
    names |= output_layer_names(model, config.task_type)
    return sorted(names)


def quantize_base(
    model: Module, config: LoraConfig, kind: str, *, block_size: int, double_quant: bool
) -> list[str]:
    """Replace the base model's Linear layers (except `full_precision_names`) by QuantLinear; their names."""
    check_quantize(kind, block_size, double_quant)
    exclude = tuple(full_precision_names(model, config))
    return quantize_linears(
        model, kind=kind, block_size=block_size, double_quant=double_quant, exclude=exclude
    )
