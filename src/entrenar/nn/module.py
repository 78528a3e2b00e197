"""Module and Parameter: parameters and sub-modules are discovered by walking attributes.

A Module's parameters are its attributes that are `Parameter`s, its buffers those registered with
`register_buffer`, and its children its attributes that are Modules, or lists, tuples and dicts of
them. The dotted names of that walk (`encoder.layer.0.attention.self.query.weight`) are the
state-dict keys, the safetensors keys and the names LoRA targets.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from entrenar.autograd.tape import no_grad
from entrenar.tensor import Tensor

__all__ = ["IncompatibleKeys", "Module", "Parameter"]


class Parameter(Tensor):
    """A Tensor that a Module owns and an optimizer updates; it requires grad unless told otherwise."""

    __slots__ = ()

    def __init__(self, data: Any, requires_grad: bool = True) -> None:
        if isinstance(data, Tensor):
            data = data.data
        arr = data if isinstance(data, np.ndarray) else np.asarray(data, dtype=np.float32)
        super().__init__(arr, requires_grad=requires_grad)

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()


class IncompatibleKeys(NamedTuple):
    """What `load_state_dict(strict=False)` could not match, as PyTorch returns it."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def _module_items(name: str, value: Any) -> Iterator[tuple[str, Module]]:
    if isinstance(value, Module):
        yield name, value
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            if isinstance(v, Module):
                yield f"{name}.{i}", v
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, Module):
                yield f"{name}.{k}", v


class Module:
    """Base class of layers and models: override `forward`; call the module to run it."""

    training: bool
    _buffers: dict[str, bool]

    def __init__(self) -> None:
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_buffers", {})

    # ------------------------------------------------------------------------------ forward
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        # a registered buffer stays a Tensor (or None): an ndarray assigned to it is wrapped, not kept bare
        if name in self.__dict__.get("_buffers", ()) and value is not None and not isinstance(value, Tensor):
            if not isinstance(value, np.ndarray):
                kind = type(value).__name__
                raise TypeError(f"cannot assign {kind} as buffer '{name}' (Tensor, ndarray or None expected)")
            value = Tensor(value)
        object.__setattr__(self, name, value)

    # ------------------------------------------------------------------------------ discovery
    def _check_init(self) -> None:
        if "_buffers" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() first")

    def register_buffer(self, name: str, value: Tensor | np.ndarray | None, persistent: bool = True) -> None:
        """Keep `value` as non-trainable state under `name` (in the state dict if persistent)."""
        self._check_init()
        if "." in name or not name:
            raise KeyError(f"buffer name must be a non-empty name without '.', got {name!r}")
        if value is not None and not isinstance(value, Tensor):
            value = Tensor(np.asarray(value))
        self._buffers[name] = persistent
        object.__setattr__(self, name, value)

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """Direct sub-modules: attributes that are Modules, or lists/tuples/dicts holding them."""
        seen: set[int] = set()
        for name, value in vars(self).items():
            for child_name, child in _module_items(name, value):
                if id(child) not in seen:
                    seen.add(id(child))
                    yield child_name, child

    def children(self) -> Iterator[Module]:
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module and every sub-module, depth first, each once, with dotted names."""
        seen: set[int] = set()

        def walk(module: Module, name: str) -> Iterator[tuple[str, Module]]:
            if id(module) in seen:
                return
            seen.add(id(module))
            yield name, module
            for child_name, child in module.named_children():
                yield from walk(child, f"{name}.{child_name}" if name else child_name)

        yield from walk(self, prefix)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def _own_parameters(self) -> Iterator[tuple[str, Parameter]]:
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield name, value

    def named_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, Parameter]]:
        """(dotted name, Parameter) pairs; a parameter shared by two modules appears once."""
        seen: set[int] = set()
        modules = self.named_modules(prefix) if recurse else iter([(prefix, self)])
        for mod_name, module in modules:
            for name, p in module._own_parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
        for mod_name, module in self.named_modules(prefix):
            for name in module._buffers:
                value = getattr(module, name)
                if value is not None:
                    yield (f"{mod_name}.{name}" if mod_name else name), value

    def buffers(self) -> Iterator[Tensor]:
        for _, b in self.named_buffers():
            yield b

    # ------------------------------------------------------------------------------ state
    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Dotted name -> array for every parameter and persistent buffer (the arrays themselves)."""
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        seen: set[int] = set()
        for mod_name, module in self.named_modules():
            for name, p in module._own_parameters():
                key = f"{mod_name}.{name}" if mod_name else name
                if id(p) in seen:  # a tied parameter is saved under its first name only
                    continue
                seen.add(id(p))
                out[key] = p.data
            for name, persistent in module._buffers.items():
                value = getattr(module, name)
                if persistent and value is not None:
                    out[f"{mod_name}.{name}" if mod_name else name] = value.data
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> IncompatibleKeys:
        """Copy arrays into this module's parameters and buffers by name.

        strict=True raises KeyError listing every missing and unexpected key; a shape mismatch is
        always a ValueError naming the key and both shapes, and an array that cannot be cast to the
        parameter's dtype (same kind) a TypeError. Nothing is changed when it raises.
        """
        own: dict[str, Tensor] = {}
        for mod_name, module in self.named_modules():
            for name, p in module._own_parameters():
                own.setdefault(f"{mod_name}.{name}" if mod_name else name, p)
            for name, persistent in module._buffers.items():
                value = getattr(module, name)
                if persistent and value is not None:
                    own[f"{mod_name}.{name}" if mod_name else name] = value
        # a tied parameter may be given under any of its names; it is needed under one
        by_id: dict[int, list[str]] = {}
        for key, t in own.items():
            by_id.setdefault(id(t), []).append(key)
        missing = [keys[0] for keys in by_id.values() if not any(k in state_dict for k in keys)]
        unexpected = [k for k in state_dict if k not in own]
        problems = []
        bad_dtypes = []
        for key, value in state_dict.items():
            if key in own:
                arr = value.data if isinstance(value, Tensor) else np.asarray(value)
                if arr.shape != own[key].data.shape:
                    problems.append(f"{key}: expected shape {own[key].data.shape}, got {arr.shape}")
                elif not np.can_cast(arr.dtype, own[key].data.dtype, casting="same_kind"):
                    bad_dtypes.append(f"{key}: cannot copy dtype {arr.dtype} into {own[key].data.dtype}")
        if problems:
            raise ValueError(
                f"load_state_dict for {type(self).__name__}: size mismatch for " + "; ".join(problems)
            )
        if bad_dtypes:
            raise TypeError(f"load_state_dict for {type(self).__name__}: " + "; ".join(bad_dtypes))
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append("missing keys: " + ", ".join(missing))
            if unexpected:
                parts.append("unexpected keys: " + ", ".join(unexpected))
            raise KeyError(f"load_state_dict for {type(self).__name__}: " + "; ".join(parts))
        with no_grad():
            for key, value in state_dict.items():
                if key in own:
                    arr = value.data if isinstance(value, Tensor) else np.asarray(value)
                    np.copyto(own[key].data, arr, casting="same_kind")
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> Module:
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self) -> Module:
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parameters():
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad = np.zeros_like(p.grad)

    def apply(self, fn: Callable[[Module], Any]) -> Module:
        """Call fn on every sub-module (children first) and on this module, as PyTorch does."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    # ------------------------------------------------------------------------------ display
    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        """As PyTorch's: a one-line extra_repr inline, otherwise one line per extra line and child."""
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        child_lines = [
            f"({name}): " + repr(child).replace("\n", "\n  ") for name, child in self.named_children()
        ]
        head = f"{type(self).__name__}("
        if len(extra_lines) == 1 and not child_lines:
            return head + extra_lines[0] + ")"
        if not extra_lines and not child_lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(extra_lines + child_lines) + "\n)"
