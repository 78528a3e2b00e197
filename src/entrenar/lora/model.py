"""PeftModel and get_peft_model: PEFT's user-facing API over an entrenar Module.

    model = get_peft_model(bert, LoraConfig(r=8, target_modules=["query", "value"]), generator=0)
    model.print_trainable_parameters()
    ...train...
    model.save_pretrained("adapter/")                    # adapter_config.json + adapter_model.safetensors
    model = PeftModel.from_pretrained(fresh_bert, "adapter/")

A PeftModel's state-dict names are PEFT's (`base_model.model.<path>.lora_A.<adapter>.weight`), so
they equal those of a PEFT PeftModel over a PyTorch model with the same module names. With
quantize="nf4" or "int4" the base model's Linear layers become 4-bit QuantLinear layers first (QLoRA);
the adapters stay float32 and no gradient reaches the base.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from entrenar.lora import formats
from entrenar.lora.base import QuantReport, is_quantized
from entrenar.lora.config import LoraConfig
from entrenar.lora.inject import find_targets, prepare_config
from entrenar.lora.qlora import check_quantize, quantize_base
from entrenar.lora.tuner import LoraModel
from entrenar.nn.module import Module

__all__ = ["PeftModel", "get_peft_model"]

Seed = np.random.Generator | int


def _rng(generator: Seed) -> np.random.Generator:
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, (int, np.integer)) and not isinstance(generator, bool):
        return np.random.default_rng(int(generator))
    raise TypeError(
        f"LoRA: generator must be an np.random.Generator or an int seed, got {type(generator).__name__}"
    )


class PeftModel(Module):
    """A base model with LoRA adapters, with PEFT's method names. Build it with `get_peft_model` or
    `PeftModel.from_pretrained`; the forward is the base model's forward."""

    def __init__(
        self, model: Module, peft_config: LoraConfig, adapter_name: str = "default", *, generator: Seed = 0
    ) -> None:
        super().__init__()
        self.base_model = LoraModel(model, peft_config, adapter_name, generator=_rng(generator))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model.model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # only reached for attributes PeftModel lacks: the base model's (config, generate, ...), as in PEFT
        if name.startswith("__") or "base_model" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        return getattr(self.base_model.model, name)

    # ------------------------------------------------------------------------------ adapters
    @property
    def peft_config(self) -> dict[str, LoraConfig]:
        return self.base_model.peft_config

    @property
    def active_adapter(self) -> str:
        return self.base_model.active_adapter

    @property
    def active_adapters(self) -> list[str]:
        return [self.base_model.active_adapter]

    def get_base_model(self) -> Module:
        return self.base_model.model

    def add_adapter(self, adapter_name: str, peft_config: LoraConfig) -> None:
        """Add a new adapter (frozen and inactive until `set_adapter` selects it)."""
        self.base_model.add_adapter(adapter_name, peft_config)

    def set_adapter(self, adapter_name: str) -> None:
        self.base_model.set_adapter(adapter_name)

    def delete_adapter(self, adapter_name: str) -> None:
        self.base_model.delete_adapter(adapter_name)

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """`with model.disable_adapter():` the forward gives the base model's output."""
        with self.base_model.disable_adapter():
            yield

    # ------------------------------------------------------------------------------ merging
    def merge_adapter(
        self, adapter_names: Sequence[str] | None = None, safe_merge: bool = False
    ) -> dict[str, QuantReport]:
        """Merge into the base weights; {module: rounding report} for quantized layers (see LoraModel)."""
        return self.base_model.merge_adapter(adapter_names, safe_merge)

    def unmerge_adapter(self) -> None:
        self.base_model.unmerge_adapter()

    def merge_and_unload(
        self, safe_merge: bool = False, adapter_names: Sequence[str] | None = None
    ) -> Module:
        """The base model with the adapters merged in and the LoRA layers removed (rounding report of a
        quantized base in `self.merge_report`)."""
        model = self.base_model.unload(merge=True, safe_merge=safe_merge, adapter_names=adapter_names)
        self.merge_report = self.base_model.merge_report
        return model

    def unload(self) -> Module:
        """The base model with the LoRA layers removed, nothing merged."""
        return self.base_model.unload(merge=False)

    # ------------------------------------------------------------------------------ counting
    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """(trainable parameters, all parameters); a 4-bit layer counts its in * out logical weights."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        total += sum(
            m.in_features * m.out_features  # type: ignore[attr-defined]
            for m in self.modules()
            if is_quantized(m)
        )
        return trainable, total

    def print_trainable_parameters(self) -> None:
        """Print PEFT's line: trainable params: 1,234 || all params: 5,678 || trainable%: 21.7330."""
        trainable, total = self.get_nb_trainable_parameters()
        print(
            f"trainable params: {trainable:,d} || all params: {total:,d} || "
            f"trainable%: {100 * trainable / total:.4f}"
        )

    # ------------------------------------------------------------------------------ files
    def save_pretrained(
        self,
        save_directory: str | os.PathLike[str],
        selected_adapters: Sequence[str] | None = None,
        format: str = "peft",
    ) -> None:
        """Save the adapters (never the base weights): "default" into `save_directory`, any other into a
        subfolder named after it. format "peft" (adapter_config.json + adapter_model.safetensors) or
        "json" (adapter.json)."""
        if os.path.isfile(save_directory):
            raise ValueError(f"save_pretrained: {save_directory} should be a directory, not a file")
        names = list(self.peft_config) if selected_adapters is None else list(selected_adapters)
        for name in names:
            self.base_model.check_adapter(name)
        for name in names:
            directory = formats.adapter_dir(save_directory, name)
            formats.write_adapter(self, directory, name, self.peft_config[name], format)

    def load_adapter(
        self, model_id: str | os.PathLike[str], adapter_name: str, is_trainable: bool = False
    ) -> None:
        """Add adapter `adapter_name` from a directory saved in either format; the model is unchanged if it
        raises (missing or unexpected keys, shapes that do not fit, a malformed file)."""
        config, tensors = formats.read_adapter(model_id)
        config.inference_mode = not is_trainable
        self.base_model.add_adapter(adapter_name, config)
        try:
            formats.load_tensors(
                self, adapter_name, self.peft_config[adapter_name], tensors, os.fspath(model_id)
            )
        except BaseException:
            self.base_model.delete_adapter(adapter_name)
            raise
        if not is_trainable:
            self.eval()

    @classmethod
    def from_pretrained(
        cls,
        model: Module,
        model_id: str | os.PathLike[str],
        adapter_name: str = "default",
        is_trainable: bool = False,
        *,
        generator: Seed = 0,
        quantize: str | None = None,
        double_quant: bool = False,
        block_size: int = 64,
    ) -> PeftModel:
        """`model` with the adapter saved in `model_id` (either format); frozen and in eval mode unless
        is_trainable. quantize as in `get_peft_model`."""
        config, tensors = formats.read_adapter(model_id)
        config.inference_mode = not is_trainable
        peft = get_peft_model(
            model,
            config,
            adapter_name,
            generator=generator,
            quantize=quantize,
            double_quant=double_quant,
            block_size=block_size,
        )
        try:
            formats.load_tensors(
                peft, adapter_name, peft.peft_config[adapter_name], tensors, os.fspath(model_id)
            )
        except BaseException:
            peft.unload()  # take the LoRA layers out of the caller's model again
            raise
        if not is_trainable:
            peft.eval()
        return peft


def get_peft_model(
    model: Module,
    peft_config: LoraConfig,
    adapter_name: str = "default",
    *,
    generator: Seed = 0,
    quantize: str | None = None,
    double_quant: bool = False,
    block_size: int = 64,
) -> PeftModel:
    """Wrap `model` (any entrenar Module, changed in place) with a LoRA adapter.

    `generator` (an np.random.Generator or an int seed) draws the A matrices and the dropout masks.
    quantize "nf4" or "int4" first replaces the base model's Linear layers (but not modules_to_save
    nor the output layer) by 4-bit QuantLinear layers with `block_size` and `double_quant` (QLoRA).
    """
    if quantize is not None:
        check_quantize(quantize, block_size, double_quant)
        find_targets(model, prepare_config(peft_config, model))  # a config error leaves the model as it was
        quantize_base(model, peft_config, quantize, block_size=block_size, double_quant=double_quant)
    return PeftModel(model, peft_config, adapter_name, generator=generator)
