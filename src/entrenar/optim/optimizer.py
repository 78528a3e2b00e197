"""Optimizer base: parameter groups, zero_grad, step, and a state dict in torch.optim's layout.

A subclass validates its hyper-parameters (`_check_hyperparameters`, run on the defaults in
`__init__`, on every group added, and on every group loaded) and writes the update for one parameter
group (`_update_group`). State is a dict per parameter of plain ndarrays, so a checkpoint needs
nothing special:

    state_dict() == {"state": {index: {"exp_avg": ndarray, ...}, ...},
                     "param_groups": [{"lr": 0.001, ..., "params": [0, 1, 2]}, ...]}

with parameters numbered in group order, as torch does.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from entrenar.autograd.tape import enable_grad
from entrenar.tensor import Tensor

__all__ = ["Optimizer", "ParamsT", "check_bool", "check_real"]

ParamsT = Iterable[Tensor] | Iterable[Mapping[str, Any]]


def check_real(
    where: str, name: str, value: Any, *, low: float | None = None, low_open: bool = False,
    high: float | None = None, high_open: bool = False,
) -> float:
    """`value` as a Python float after checking that it is a finite real number within the bounds.

    Raises TypeError for a non-number and ValueError out of range, naming `where` + `name`.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}{name} must be a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{where}{name} must be finite, got {value!r}")
    if low is not None and (v <= low if low_open else v < low):
        raise ValueError(f"{where}{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (v >= high if high_open else v > high):
        raise ValueError(f"{where}{name} must be {'<' if high_open else '<='} {high}, got {value!r}")
    return v


def check_bool(where: str, name: str, value: Any) -> bool:
    """`value` after checking that it is a bool (NumPy bools too)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{where}{name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


_UNORDERED = (
    "{where}params must be an ordered collection (list or tuple) so that the parameter order is the same "
    "between runs; got a set"
)


def _group_params(where: str, params: Any) -> list[Tensor]:
    if isinstance(params, Tensor):
        return [params]
    if isinstance(params, (set, frozenset)):
        raise TypeError(_UNORDERED.format(where=where))
    if isinstance(params, (str, bytes, Mapping)) or not isinstance(params, Iterable):
        raise TypeError(f"{where}params must be an iterable of Tensors, got {type(params).__name__}")
    out = list(params)
    seen: set[int] = set()
    for i, p in enumerate(out):
        if not isinstance(p, Tensor):
            raise TypeError(
                f"{where}params[{i}]: an optimizer can only optimize Tensors, got {type(p).__name__}"
            )
        if not p.is_leaf:
            raise ValueError(f"{where}params[{i}]: can't optimize a non-leaf Tensor (made by {p.grad_fn})")
        if id(p) in seen:
            raise ValueError(f"{where}params[{i}]: the same parameter is listed twice in one group")
        seen.add(id(p))
    return out


class Optimizer:
    """Base class of optimizers: holds `param_groups` (dicts of hyper-parameters plus 'params'),
    `defaults` and per-parameter `state` (dict keyed by the parameter, of plain ndarrays).

    `params` is an iterable of Tensors (one group) or of dicts, each with a 'params' entry and any
    hyper-parameters that override the defaults for that group. A parameter may appear only once.
    """

    defaults: dict[str, Any]
    param_groups: list[dict[str, Any]]
    state: dict[Tensor, dict[str, Any]]

    # state entry names: ndarrays shaped like the parameter, 0-d integer counters, and the entries a
    # non-empty state must have (checked on load)
    _array_state: tuple[str, ...] = ()
    _counter_state: tuple[str, ...] = ()
    _required_state: tuple[str, ...] = ()

    def __init__(self, params: ParamsT, defaults: Mapping[str, Any]) -> None:
        self.defaults = dict(defaults)
        self._check_hyperparameters(self.defaults, "")
        self.state = {}
        self.param_groups = []
        if isinstance(params, (Tensor, str, bytes, Mapping)) or not isinstance(params, Iterable):
            got = "a Tensor" if isinstance(params, Tensor) else type(params).__name__
            raise TypeError(f"optimizer params must be an iterable of Tensors or dicts, got {got}")
        if isinstance(params, (set, frozenset)):
            raise TypeError(_UNORDERED.format(where=""))
        items = list(params)
        if not items:
            raise ValueError("optimizer got an empty parameter list")
        n_dicts = sum(isinstance(x, Mapping) for x in items)
        if n_dicts == 0:
            self.add_param_group({"params": items})
        elif n_dicts == len(items):
            for group in items:
                self.add_param_group(group)  # type: ignore[arg-type]
        else:
            raise TypeError("params must be all Tensors (one group) or all dicts (param groups), not a mix")

    # ------------------------------------------------------------------ to write in a subclass
    def _check_hyperparameters(self, group: dict[str, Any], where: str) -> None:
        """Validate and normalize (in place) the hyper-parameters of one group; `where` prefixes errors."""
        raise NotImplementedError

    def _update_group(self, group: dict[str, Any]) -> None:
        """Update every parameter of `group` that has a gradient and requires one."""
        raise NotImplementedError

    # ------------------------------------------------------------------ groups
    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Add a group: its 'params' and any hyper-parameters overriding the defaults (validated)."""
        where = f"param group {len(self.param_groups)}: "
        if not isinstance(param_group, Mapping):
            raise TypeError(f"{where}a param group must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError(f"{where}a param group must have a 'params' entry")
        params = _group_params(where, param_group["params"])
        group = {**self.defaults, **{k: v for k, v in param_group.items() if k != "params"}}
        self._check_hyperparameters(group, where)
        existing = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in existing for p in params):
            raise ValueError(f"{where}some parameters appear in more than one parameter group")
        group["params"] = params
        self.param_groups.append(group)

    def _params_with_grad(self, group: Mapping[str, Any]) -> Iterator[tuple[Tensor, np.ndarray]]:
        """(parameter, gradient) for each parameter of the group that requires grad and has one."""
        for p in group["params"]:
            g = p.grad
            if g is None or not p.requires_grad:
                continue
            if not isinstance(g, np.ndarray):
                raise TypeError(f"a parameter's gradient must be an ndarray, got {type(g).__name__}")
            if g.shape != p.data.shape:
                raise ValueError(f"gradient of shape {g.shape} for a parameter of shape {p.data.shape}")
            yield p, g

    # ------------------------------------------------------------------ training-loop API
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every parameter's gradient (`set_to_none`), or fill it with zeros."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    if set_to_none:
                        p.grad = None
                    else:
                        p.grad.fill(0)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update the parameters once; `closure` (re-evaluating the loss, with grad on) runs first.

        Returns the closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._update_group(group)
        return loss

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """{'state': {index: {name: ndarray}}, 'param_groups': [{hyper-parameters, 'params': [index]}]}.

        Parameters are numbered consecutively through the groups; everything is a deep copy.
        """
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(packed)
        state = {
            index[id(p)]: {k: np.array(v, copy=True) for k, v in s.items()}
            for p, s in self.state.items()
            if id(p) in index
        }
        return {"state": dict(sorted(state.items())), "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load what `state_dict` returned (copied; arrays cast to each parameter's dtype).

        Raises ValueError when the groups do not match this optimizer's in number and sizes, when a
        state entry names no parameter, or when an entry is unknown or has the wrong shape.
        """
        if not isinstance(state_dict, Mapping) or set(state_dict) != {"state", "param_groups"}:
            keys = sorted(state_dict) if isinstance(state_dict, Mapping) else type(state_dict).__name__
            raise ValueError(
                f"an optimizer state dict has exactly the keys 'state' and 'param_groups', got {keys}"
            )
        saved_groups = state_dict["param_groups"]
        saved_state = state_dict["state"]
        if not isinstance(saved_groups, (list, tuple)) or not isinstance(saved_state, Mapping):
            raise ValueError("optimizer state dict: 'param_groups' must be a list and 'state' a dict")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(
                f"loaded state dict has {len(saved_groups)} parameter groups, "
                f"this optimizer has {len(self.param_groups)}"
            )
        id_map: dict[Any, Tensor] = {}
        new_groups = []
        for i, (saved, group) in enumerate(zip(saved_groups, self.param_groups, strict=True)):
            if not isinstance(saved, Mapping) or not isinstance(saved.get("params"), (list, tuple)):
                raise ValueError(f"loaded param group {i} must be a dict with a 'params' list")
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(
                    f"loaded param group {i} has {len(saved['params'])} parameters, "
                    f"this optimizer's group {i} has {len(group['params'])}"
                )
            for saved_index, p in zip(saved["params"], group["params"], strict=True):
                if saved_index in id_map:
                    raise ValueError(f"loaded param group {i}: parameter index {saved_index!r} appears twice")
                id_map[saved_index] = p
            new_group = {k: v for k, v in group.items() if k != "params"}
            new_group.update(copy.deepcopy({k: v for k, v in saved.items() if k != "params"}))
            self._check_hyperparameters(new_group, f"loaded param group {i}: ")
            new_group["params"] = group["params"]
            new_groups.append(new_group)

        new_state: dict[Tensor, dict[str, Any]] = {}
        for key, entries in saved_state.items():
            if key not in id_map:
                raise ValueError(
                    f"loaded state has an entry for parameter {key!r}, which no param group lists"
                )
            p = id_map[key]
            if not isinstance(entries, Mapping):
                raise ValueError(f"loaded state of parameter {key!r} must be a dict")
            missing = [name for name in self._required_state if entries.get(name) is None]
            if entries and missing:
                raise ValueError(f"loaded state of parameter {key!r} lacks {missing}")
            # a None entry (torch may keep 'momentum_buffer': None) is the same as no entry
            new_state[p] = {
                name: self._load_state_value(key, name, value, p)
                for name, value in entries.items()
                if value is not None
            }
        self.param_groups = new_groups
        self.state = new_state

    def _load_state_value(self, key: Any, name: str, value: Any, p: Tensor) -> np.ndarray:
        where = f"loaded state of parameter {key!r}: {name!r}"
        if name in self._counter_state:
            count = np.asarray(value)
            if count.shape != () or not np.isfinite(count) or count != np.round(count) or count < 0:
                raise ValueError(f"{where} must be a non-negative whole number, got {value!r}")
            return np.array(int(count), dtype=np.int64)
        if name in self._array_state:
            arr = np.array(value, dtype=p.data.dtype, copy=True)
            if arr.shape != p.data.shape:
                raise ValueError(f"{where} has shape {arr.shape}, the parameter has shape {p.data.shape}")
            return arr
        known = sorted(self._array_state + self._counter_state)
        raise ValueError(f"{where} is not a state entry of {type(self).__name__} (known: {known})")

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines.extend(f"    {k}: {v}" for k, v in sorted(group.items()) if k != "params")
        return "\n".join([*lines, ")"])
