"""ModulesToSaveWrapper: a module trained in full next to the adapters (PEFT's `modules_to_save`).

The wrapper keeps the frozen `original_module` and, per adapter, a trainable copy
`modules_to_save.<adapter>`; the forward runs the active adapter's copy (the original when that
adapter has none, or while adapters are disabled). The parameter names are PEFT's:
`<path>.original_module.weight`, `<path>.modules_to_save.<adapter>.weight`.
"""

from __future__ import annotations

import copy
from typing import Any

from entrenar.nn.module import Module

__all__ = ["ModulesToSaveWrapper"]


class ModulesToSaveWrapper(Module):
    """Wraps `module_to_save`; `update(name)` adds a trainable copy of the original for adapter `name`."""

    def __init__(self, module_to_save: Module, adapter_name: str) -> None:
        super().__init__()
        self.original_module = module_to_save
        self.modules_to_save: dict[str, Module] = {}
        self.active_adapter: str | None = None
        self.disable_adapters = False
        self.original_module.requires_grad_(False)
        self.update(adapter_name)

    def update(self, adapter_name: str) -> None:
        """Add adapter `adapter_name`'s copy of the original module (frozen until `set_adapter` picks it)."""
        if adapter_name not in self.modules_to_save:
            module = copy.deepcopy(self.original_module)
            module.train(self.original_module.training)
            self.modules_to_save[adapter_name] = module
        self.modules_to_save[adapter_name].requires_grad_(False)

    def set_adapter(self, adapter_name: str, inference_mode: bool = False) -> None:
        """Run (and, unless inference_mode, train) `adapter_name`'s copy; the original stays frozen."""
        for name, module in self.modules_to_save.items():
            module.requires_grad_(name == adapter_name and not inference_mode)
        self.active_adapter = adapter_name if adapter_name in self.modules_to_save else None

    def delete_adapter(self, adapter_name: str) -> None:
        self.modules_to_save.pop(adapter_name, None)
        if self.active_adapter == adapter_name:
            self.active_adapter = None

    @property
    def active_module(self) -> Module:
        """The module the forward runs now."""
        if self.disable_adapters or self.active_adapter is None:
            return self.original_module
        return self.modules_to_save[self.active_adapter]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.active_module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # only reached for attributes the wrapper lacks: read them from the module it runs, as PEFT does
        if name.startswith("__") or "disable_adapters" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.active_module, name)
