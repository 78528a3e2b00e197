"""What LoRA needs from the layer it wraps: a float `Linear`, a 4-bit `QuantLinear` or a packed GGML
`GGMLLinear` (Q4_0 / Q4_1 / Q8_0 blocks from a GGUF file) alike.

A float base is read and written in place. A quantized base is dequantized to read it, and writing
re-quantizes it (into the same NF4/int4 or GGML kind), which rounds: `write_weight` returns the
rounding report of `set_weight` ({"max_abs_error", "mean_abs_error", "rel_error"}) for a quantized
base and None for a float one. `set_codes` puts back codes saved before a merge.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from entrenar.nn.layers import Linear
from entrenar.nn.module import Module
from entrenar.quant import QuantLinear
from entrenar.quant.ggml import GGMLLinear

__all__ = [
    "LINEAR_TYPES",
    "QuantReport",
    "is_linear",
    "is_quantized",
    "read_weight",
    "set_codes",
    "weight_dtype",
    "write_weight",
]

LINEAR_TYPES: tuple[type[Module], ...] = (Linear, QuantLinear, GGMLLinear)
_QUANTIZED = (QuantLinear, GGMLLinear)
_EXPECTED = "a Linear, QuantLinear or GGMLLinear base layer"

QuantReport = dict[str, float]


def is_linear(module: Any) -> bool:
    """Whether LoRA can wrap `module`: a Linear, QuantLinear or GGMLLinear."""
    return isinstance(module, LINEAR_TYPES)


def is_quantized(module: Any) -> bool:
    return isinstance(module, _QUANTIZED)


def weight_dtype(layer: Module) -> np.dtype[Any]:
    """The dtype adapters on this layer use: the weight's; for a quantized layer its bias's, else float32."""
    if isinstance(layer, Linear):
        return layer.weight.data.dtype
    bias = getattr(layer, "bias", None)
    return np.dtype(np.float32) if bias is None else bias.data.dtype


def read_weight(layer: Module) -> np.ndarray:
    """The (out, in) weight as a float array (the parameter's own array for a Linear: do not write to it)."""
    if isinstance(layer, Linear):
        return layer.weight.data
    if isinstance(layer, _QUANTIZED):
        return layer.dequantize_weight(np.float32)
    raise TypeError(f"LoRA: expected {_EXPECTED}, got {type(layer).__name__}")


def write_weight(layer: Module, weight: np.ndarray) -> QuantReport | None:
    """Store `weight` (out, in) into the layer; re-quantize a quantized one and return its rounding report."""
    if isinstance(layer, Linear):
        np.copyto(layer.weight.data, weight, casting="same_kind")
        return None
    if isinstance(layer, _QUANTIZED):
        return dict(layer.set_weight(weight.astype(np.float32, copy=False)))
    raise TypeError(f"LoRA: expected {_EXPECTED}, got {type(layer).__name__}")


def set_codes(layer: Module, qweight: Any) -> None:
    """Put back a quantized layer's `qweight` (as saved before a merge), exactly, without re-quantizing."""
    if isinstance(layer, GGMLLinear):
        layer.set_qweight(qweight)  # the packed-blocks buffer follows
    elif isinstance(layer, QuantLinear):
        layer.qweight = qweight
    else:
        raise TypeError(f"LoRA: set_codes needs a QuantLinear or GGMLLinear, got {type(layer).__name__}")
