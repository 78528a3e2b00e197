"""LoraModel: the base model with adapters injected, and the model-wide adapter operations.

It holds the user's model as `model` (so PeftModel's parameter names are `base_model.model.<path>`),
one validated LoraConfig per adapter in `peft_config`, and the active adapter's name. Merging,
unmerging, unloading, switching, deleting and disabling act on every LoraLinear and
ModulesToSaveWrapper in the model.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from entrenar.lora.base import QuantReport
from entrenar.lora.config import LoraConfig
from entrenar.lora.inject import inject_adapter, prepare_config, replace_module, wrap_modules_to_save
from entrenar.lora.layer import LoraLinear
from entrenar.lora.wrappers import ModulesToSaveWrapper
from entrenar.nn.module import Module

__all__ = ["LoraModel"]


class LoraModel(Module):
    """`model` with LoRA adapters; built with one adapter, more come from `add_adapter`."""

    def __init__(
        self, model: Module, config: LoraConfig, adapter_name: str, *, generator: np.random.Generator
    ) -> None:
        super().__init__()
        if not isinstance(model, Module):
            raise TypeError(f"LoRA: the base model must be an entrenar Module, got {type(model).__name__}")
        self.model = model
        self.peft_config: dict[str, LoraConfig] = {}
        self.active_adapter = adapter_name
        self.generator = generator
        self.merge_report: dict[str, QuantReport] = {}
        self.add_adapter(adapter_name, config)
        self.set_adapter(adapter_name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    # ------------------------------------------------------------------------------ walking
    def lora_layers(self) -> list[tuple[str, LoraLinear]]:
        return [(n, m) for n, m in self.model.named_modules() if isinstance(m, LoraLinear)]

    def wrappers(self) -> list[tuple[str, ModulesToSaveWrapper]]:
        return [(n, m) for n, m in self.model.named_modules() if isinstance(m, ModulesToSaveWrapper)]

    def check_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.peft_config:
            raise ValueError(f"unknown adapter {adapter_name!r}; this model has {sorted(self.peft_config)}")

    # ------------------------------------------------------------------------------ adapters
    def add_adapter(self, adapter_name: str, config: LoraConfig) -> None:
        """Inject adapter `adapter_name` (not made active); the model is unchanged if it raises."""
        if not isinstance(adapter_name, str) or not adapter_name or "." in adapter_name:
            raise ValueError(f"adapter name must be a non-empty string without '.', got {adapter_name!r}")
        if adapter_name in self.peft_config:
            raise ValueError(f"adapter {adapter_name!r} already exists; delete it first or pick another name")
        cfg = prepare_config(config, self.model)
        self.peft_config[adapter_name] = cfg
        try:
            inject_adapter(self.model, cfg, adapter_name, self.generator)
            if cfg.modules_to_save:
                wrap_modules_to_save(self.model, cfg.modules_to_save, adapter_name)
        except BaseException:
            self._remove(adapter_name)
            raise
        self.mark_trainable()

    def set_adapter(self, adapter_name: str) -> None:
        """Make `adapter_name` the active adapter (trainable unless its config is in inference mode)."""
        self.check_adapter(adapter_name)
        self.active_adapter = adapter_name
        self.mark_trainable()

    def mark_trainable(self) -> None:
        """Freeze everything but the active adapter (unless in inference mode), its modules_to_save copies
        and the biases its `bias` setting trains."""
        cfg = self.peft_config[self.active_adapter]
        self.model.requires_grad_(False)
        for _, layer in self.lora_layers():
            layer.set_adapter(self.active_adapter, inference_mode=cfg.inference_mode)
        if not cfg.inference_mode and cfg.bias == "all":
            for name, p in self.model.named_parameters():
                if name == "bias" or name.endswith(".bias"):
                    p.requires_grad_(True)
        elif not cfg.inference_mode and cfg.bias == "lora_only":
            for _, layer in self.lora_layers():
                bias = getattr(layer.base_layer, "bias", None)
                if bias is not None:
                    bias.requires_grad_(True)
        for _, w in self.wrappers():  # last: a wrapper decides for its own parameters, as in PEFT
            w.original_module.requires_grad_(False)
            w.set_adapter(self.active_adapter, inference_mode=cfg.inference_mode)

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove an adapter (it must not be merged); another one becomes active if it was."""
        self.check_adapter(adapter_name)
        for name, layer in self.lora_layers():
            if adapter_name in layer.merged_adapters:
                raise ValueError(
                    f"cannot delete adapter {adapter_name!r}: it is merged into {name}; unmerge first"
                )
        self._remove(adapter_name)
        if self.active_adapter == adapter_name and self.peft_config:
            self.active_adapter = sorted(self.peft_config)[0]
        if self.peft_config:
            self.mark_trainable()

    def _remove(self, adapter_name: str) -> None:
        """Take `adapter_name` out of every layer and the config; unwrap layers left without adapters."""
        self.peft_config.pop(adapter_name, None)
        for name, layer in self.lora_layers():
            if adapter_name in layer.lora_A:
                layer.delete_adapter(adapter_name)
            if not layer.lora_A:
                replace_module(self.model, name, layer.base_layer)
        for name, w in self.wrappers():
            w.delete_adapter(adapter_name)
            if not w.modules_to_save:
                replace_module(self.model, name, w.original_module)

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Within the block the model computes the base model's output (merged adapters are unmerged)."""
        bias = self.peft_config[self.active_adapter].bias
        if bias != "none":
            warnings.warn(
                f"Careful, disabling adapter layers with bias configured to be '{bias}' does not produce the "
                "same output as the base model would without adaption.",
                stacklevel=3,
            )
        layers: list[LoraLinear | ModulesToSaveWrapper] = [m for _, m in self.lora_layers()]
        layers += [w for _, w in self.wrappers()]
        old = [m.disable_adapters for m in layers]
        for m in layers:
            m.disable_adapters = True
        try:
            yield
        finally:
            for m, flag in zip(layers, old, strict=True):
                m.disable_adapters = flag

    # ------------------------------------------------------------------------------ merging
    def merge_adapter(
        self, adapter_names: Sequence[str] | None = None, safe_merge: bool = False
    ) -> dict[str, QuantReport]:
        """Merge adapters (default: the active one) into the base weights.

        Returns {module name: rounding report} for the quantized layers it re-quantized (empty for a
        float model) and warns once with the worst numbers.
        """
        for a in adapter_names or ():
            self.check_adapter(a)
        reports: dict[str, QuantReport] = {}
        for name, layer in self.lora_layers():
            report = layer.merge(safe_merge=safe_merge, adapter_names=adapter_names, warn=False)
            if report is not None:
                reports[name] = report
        if reports:
            worst = max(reports.items(), key=lambda kv: kv[1]["max_abs_error"])
            mean = float(np.mean([r["mean_abs_error"] for r in reports.values()]))
            warnings.warn(
                f"LoRA: merging into {len(reports)} quantized layer(s) re-quantized their weights, "
                "which rounds: "
                f"mean |error| {mean:.4g} (averaged over layers), worst max |error| "
                f"{worst[1]['max_abs_error']:.4g} in {worst[0]} (relative {worst[1]['rel_error']:.4g}); "
                "the per-layer numbers are returned",
                stacklevel=3,
            )
        return reports

    def unmerge_adapter(self) -> None:
        for _, layer in self.lora_layers():
            layer.unmerge()

    def unload(
        self, merge: bool = False, safe_merge: bool = False, adapter_names: Sequence[str] | None = None
    ) -> Module:
        """The base model with every LoRA layer replaced by its base layer (merged first if `merge`) and
        every modules_to_save wrapper by its active copy. The LoRA layers are gone afterwards."""
        reports = self.merge_adapter(adapter_names, safe_merge) if merge else {}
        for name, layer in self.lora_layers():
            replace_module(self.model, name, layer.base_layer)
        for name, w in self.wrappers():
            replace_module(self.model, name, w.modules_to_save.get(w.active_adapter or "", w.original_module))
        self.merge_report = reports
        return self.model
