"""Nested training state <-> JSON (+ named arrays), and the random generators a model owns.

`to_json_tree` turns a state dict (optimizer, scheduler, loader, counters) into JSON values that
`from_json_tree` turns back into an equal structure, exactly:

    None, bool, int, str, finite float   as themselves
    non-finite float                     {"__float__": "nan" | "inf" | "-inf"}
    NumPy scalar                         its Python value
    tuple                                {"__tuple__": [...]}
    dict with str keys (none "__...")    a JSON object; any other dict {"__items__": [[key, value], ...]}
    ndarray                              {"__array__": name} with the array put in `arrays[name]` (saved
                                         as safetensors), or inline as {"__ndarray__": nested list,
                                         "dtype": "float32", "shape": [...]} when no `arrays` is given

Nothing else is accepted (TypeError naming the place), so a checkpoint never needs pickle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from entrenar.nn.module import Module

__all__ = ["LogWindow", "from_json_tree", "module_generators", "set_generator_states", "to_json_tree"]


@dataclass
class LogWindow:
    """What the trainer's train events average over: the steps since the last event (`steps` made an
    update, `skipped` had a non-finite loss or gradient). Saved in checkpoints, so a resumed run's next
    event averages over the same steps as a straight run's."""

    loss_sum: float = 0.0
    steps: int = 0
    samples: int = 0
    seconds: float = 0.0
    sums: dict[str, Any] = field(default_factory=dict)
    lr: float = 0.0
    grad_norm: float | None = None
    skipped: int = 0


_ARRAY_DTYPES = frozenset({"bool", "float16", "float32", "float64"}) | {
    f"{kind}int{bits}" for kind in ("", "u") for bits in (8, 16, 32, 64)
}
_TAGS = ("__float__", "__tuple__", "__items__", "__array__", "__ndarray__")


def to_json_tree(obj: Any, arrays: dict[str, np.ndarray] | None = None, path: str = "") -> Any:
    """JSON values for `obj` (see the module docstring); arrays go into `arrays` named by their path."""
    where = path or "<root>"
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, np.generic) and not isinstance(obj, np.void):
        return to_json_tree(obj.item(), arrays, path)
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise TypeError(f"state at {where}: cannot save an array of dtype {obj.dtype}")
        if arrays is None:
            return {"__ndarray__": obj.tolist(), "dtype": obj.dtype.name, "shape": list(obj.shape)}
        if path in arrays:
            raise ValueError(f"state at {where}: two arrays would share the name {path!r}")
        arrays[path] = obj
        return {"__array__": path}
    if isinstance(obj, tuple):
        return {"__tuple__": [to_json_tree(v, arrays, f"{path}.{i}".lstrip(".")) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [to_json_tree(v, arrays, f"{path}.{i}".lstrip(".")) for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: to_json_tree(v, arrays, f"{path}.{k}".lstrip(".")) for k, v in obj.items()}
        return {
            "__items__": [
                [to_json_tree(k, None, f"{path}.<key>"), to_json_tree(v, arrays, f"{path}.{k}".lstrip("."))]
                for k, v in obj.items()
            ]
        }
    raise TypeError(
        f"state at {where}: cannot save a {type(obj).__name__} (numbers, str, lists, dicts, arrays)"
    )


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


def from_json_tree(tree: Any, arrays: Mapping[str, np.ndarray] | None = None) -> Any:
    """The structure `to_json_tree` encoded; KeyError naming a missing array, ValueError a malformed
    tag (a file can hold anything: every tag's payload is checked before it is used)."""
    if isinstance(tree, list):
        return [from_json_tree(v, arrays) for v in tree]
    if not isinstance(tree, dict):
        return tree
    tags = [t for t in _TAGS if t in tree]
    if not tags:
        return {k: from_json_tree(v, arrays) for k, v in tree.items()}
    tag = tags[0]
    payload = tree[tag]
    if tag == "__float__":
        if payload not in ("nan", "inf", "-inf"):
            raise ValueError(f"state: bad non-finite float {payload!r}")
        return float(payload)
    if tag == "__tuple__":
        if not isinstance(payload, list):
            raise ValueError(f"state: __tuple__ must hold a list, got {type(payload).__name__}")
        return tuple(from_json_tree(v, arrays) for v in payload)
    if tag == "__items__":
        if not isinstance(payload, list) or not all(isinstance(p, list) and len(p) == 2 for p in payload):
            raise ValueError("state: __items__ must hold a list of [key, value] pairs")
        out = {}
        for k, v in payload:
            key = _hashable(from_json_tree(k, None))
            try:
                hash(key)
            except TypeError:
                raise ValueError(f"state: __items__ key {k!r} cannot be a dict key") from None
            out[key] = from_json_tree(v, arrays)
        return out
    if tag == "__array__":
        if not isinstance(payload, str):
            raise ValueError(f"state: __array__ must name an array, got {payload!r}")
        if arrays is None or payload not in arrays:
            raise KeyError(f"state: the array {payload!r} is missing from the saved arrays")
        return arrays[payload]
    return _inline_array(tree)


def _inline_array(tree: dict[str, Any]) -> np.ndarray:
    """{"__ndarray__": nested list, "dtype": name, "shape": [...]} -> the array; ValueError otherwise."""
    dtype, shape = tree.get("dtype"), tree.get("shape")
    if not isinstance(dtype, str) or dtype not in _ARRAY_DTYPES:
        raise ValueError(f"state: __ndarray__ dtype must be one of {sorted(_ARRAY_DTYPES)}, got {dtype!r}")
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise ValueError(f"state: __ndarray__ shape must be a list of non-negative ints, got {shape!r}")
    try:
        return np.array(tree["__ndarray__"], dtype=np.dtype(dtype)).reshape(tuple(shape))
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"state: __ndarray__ of dtype {dtype} and shape {shape}: {exc}") from None


def module_generators(model: Module) -> dict[str, np.random.Generator]:
    """Every np.random.Generator a module of `model` holds as an attribute (e.g. Dropout.generator), each
    once, under the dotted name where the walk first meets it (`bert.embeddings.dropout.generator`)."""
    out: dict[str, np.random.Generator] = {}
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, np.random.Generator) and id(value) not in seen:
                seen.add(id(value))
                out[f"{mod_name}.{attr}" if mod_name else attr] = value
    return out


def set_generator_states(generators: Mapping[str, np.random.Generator], states: Mapping[str, Any]) -> None:
    """Give each generator its saved `bit_generator.state`; ValueError when the names differ."""
    if set(generators) != set(states):
        missing = sorted(set(generators) - set(states))
        unexpected = sorted(set(states) - set(generators))
        raise ValueError(
            f"the model's random generators do not match the checkpoint's: not saved {missing}, "
            f"saved but not in the model {unexpected}"
        )
    for name, g in generators.items():
        try:
            g.bit_generator.state = states[name]
        except (TypeError, ValueError, KeyError) as exc:
            raise ValueError(f"cannot restore the random generator {name}: {exc}") from None
