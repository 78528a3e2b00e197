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
                                         "dtype": "float32", "shape": [...]} when no `arrays` is given;
                                         a float array holding inf or NaN (which JSON cannot write)
                                         inline as {"__ndarray__": base64 of its little-endian bytes,
                                         "dtype": ..., "shape": ...}, exact to the bit

Nothing else is accepted (TypeError naming the place), so a checkpoint never needs pickle.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from entrenar.nn.module import Module

__all__ = [
    "LogWindow",
    "check_generator_state",
    "check_trainer_state",
    "from_json_tree",
    "module_generators",
    "set_generator_states",
    "to_json_tree",
    "trainer_state",
]


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
            head = {"dtype": obj.dtype.name, "shape": list(obj.shape)}
            if obj.dtype.kind == "f" and not np.isfinite(obj).all():
                raw = np.ascontiguousarray(obj, dtype=obj.dtype.newbyteorder("<")).tobytes()
                return {"__ndarray__": base64.b64encode(raw).decode("ascii"), **head}
            return {"__ndarray__": obj.tolist(), **head}
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
    payload = tree["__ndarray__"]
    if isinstance(payload, str):  # a float array with inf or NaN: its little-endian bytes, base64
        little = np.dtype(dtype).newbyteorder("<")
        try:
            raw = base64.b64decode(payload, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"state: __ndarray__ of dtype {dtype} holds bad base64: {exc}") from None
        if np.dtype(dtype).kind != "f" or len(raw) != math.prod(shape) * little.itemsize:
            raise ValueError(
                f"state: __ndarray__ bytes must be a float array of shape {shape}: {math.prod(shape)} "
                f"values of {little.itemsize} bytes, got {len(raw)} bytes of dtype {dtype}"
            )
        return np.frombuffer(raw, dtype=little).astype(np.dtype(dtype)).reshape(tuple(shape))
    try:
        return np.array(payload, dtype=np.dtype(dtype)).reshape(tuple(shape))
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


# ------------------------------------------------------------------------------ resume-state checks
MAX_COUNT = 2**63 - 1  # every counter must fit an int64, as the arrays and loaders that use it do
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")
_WINDOW_TYPES: dict[str, tuple[type, ...]] = {
    "loss_sum": (int, float),
    "steps": (int,),
    "samples": (int,),
    "seconds": (int, float),
    "sums": (dict,),
    "lr": (int, float),
    "grad_norm": (int, float, type(None)),
    "skipped": (int,),
}


def _count(field_name: str, value: Any, high: int = MAX_COUNT) -> int:
    """`value` as a counter: an int (not a bool) in [0, high]; ValueError naming the field otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= high:
        raise ValueError(f"field {field_name!r} must be an int in [0, {high}], got {value!r}")
    return value


def _finite(field_name: str, value: Any, low: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value < math.inf:
        raise ValueError(f"field {field_name!r} must be a finite number >= {low}, got {value!r}")
    return float(value)


def check_generator_state(field_name: str, state: Any) -> None:
    """ValueError naming `field_name` unless `state` is a `bit_generator.state` NumPy accepts: the
    state is set on a fresh generator of the named kind, so nothing half-restores a live one."""
    kind = state.get("bit_generator") if isinstance(state, dict) else None
    if kind not in _BIT_GENERATORS:
        raise ValueError(
            f"field {field_name!r} must be a random generator state with 'bit_generator' one of "
            f"{list(_BIT_GENERATORS)}, got {kind!r}"
        )
    try:
        getattr(np.random, kind)().state = state
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise ValueError(f"field {field_name!r}: not a valid {kind} state ({exc!r})") from None


def _check_loader(state: Any) -> None:
    """An epoch loader's state (the keys of `EpochLoader.state_dict`) must point inside its epoch."""
    if state is None or not isinstance(state, dict):
        if state is not None:
            raise ValueError(f"field 'loader' must be an object or null, got {type(state).__name__}")
        return
    if not {"epoch", "position", "num_items", "batch_size", "drop_last"} <= set(state):
        return  # another loader's state: its own load_state_dict checks it
    _count("loader.epoch", state["epoch"])
    items = _count("loader.num_items", state["num_items"])
    size = _count("loader.batch_size", state["batch_size"])
    if size == 0 or not isinstance(state["drop_last"], bool):
        raise ValueError(
            f"fields 'loader.batch_size' and 'loader.drop_last' must be a positive int and a bool, got "
            f"{size!r} and {state['drop_last']!r}"
        )
    batches = items // size + (1 if items % size and not state["drop_last"] else 0)
    position = _count("loader.position", state["position"])
    if position >= batches:
        raise ValueError(
            f"field 'loader.position' is {position}, beyond the {batches} batches of an epoch of "
            f"{items} items in batches of {size}"
        )


def check_trainer_state(step: int, state: Mapping[str, Any]) -> None:
    """ValueError naming the field unless `state` (a checkpoint's decoded trainer_state.json, without
    "format" and "step") has every field the trainer restores, of the right type and range:

        batches_seen, bad_evals, skipped_steps   ints in [0, 2**63 - 1]; skipped_steps <= step
        epoch, elapsed                            finite numbers >= 0
        loader                                    null, or an object (an epoch loader's position < its
                                                  batches per epoch)
        rng, module_rngs                          generator states NumPy accepts (module_rngs by name)
        best                                      {"metric", "value", "step"}: step null or <= step
        stopped_early                             a bool
        last_eval_step                            null or an int <= step
        last_metrics                              null or an object
        window                                    exactly LogWindow's fields, each of its type
    """
    _count("step", step)
    for name in ("batches_seen", "bad_evals"):
        _count(name, state.get(name))
    _count("skipped_steps", state.get("skipped_steps", 0), step)
    for name in ("epoch", "elapsed"):
        _finite(name, state.get(name))
    _check_loader(state.get("loader"))
    check_generator_state("rng", state.get("rng"))
    module_rngs = state.get("module_rngs")
    if not isinstance(module_rngs, dict):
        raise ValueError(f"field 'module_rngs' must be an object, got {type(module_rngs).__name__}")
    for name, value in module_rngs.items():
        check_generator_state(f"module_rngs.{name}", value)
    best = state.get("best")
    if not isinstance(best, dict) or set(best) != {"metric", "value", "step"}:
        raise ValueError(f"field 'best' must be an object with the keys metric, value, step, got {best!r}")
    if best["step"] is not None:
        _count("best.step", best["step"], step)
    if best["value"] is not None:
        _finite("best.value", best["value"], -math.inf)
    if not isinstance(state.get("stopped_early"), bool):
        raise ValueError(f"field 'stopped_early' must be a bool, got {state.get('stopped_early')!r}")
    if state.get("last_eval_step") is not None:
        _count("last_eval_step", state["last_eval_step"], step)
    if "last_eval_step" not in state or "last_metrics" not in state:
        raise ValueError("fields 'last_eval_step' and 'last_metrics' must be present (null or a value)")
    metrics = state["last_metrics"]
    if metrics is not None and not (
        isinstance(metrics, dict)
        and all(isinstance(k, str) and isinstance(v, dict) for k, v in metrics.items())
    ):
        raise ValueError(f"field 'last_metrics' must be null or an object of objects, got {metrics!r:.80}")
    window = state.get("window")
    if not isinstance(window, dict) or set(window) != set(_WINDOW_TYPES):
        got = sorted(window) if isinstance(window, dict) else type(window).__name__
        raise ValueError(f"field 'window' must have exactly the keys {sorted(_WINDOW_TYPES)}, got {got}")
    for name, kinds in _WINDOW_TYPES.items():
        if kinds == (int,):
            _count(f"window.{name}", window[name])
        elif isinstance(window[name], bool) or not isinstance(window[name], kinds):
            allowed = " or ".join(k.__name__ for k in kinds)
            raise ValueError(f"field 'window.{name}' must be {allowed}, got {window[name]!r}")


def trainer_state(t: Any, window: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint saves of Trainer `t` beyond weights, optimizer and scheduler: counters, the
    train loader's position, every generator's state, early-stopping bookkeeping and the open log
    `window` (as a dict)."""
    loader_state = getattr(t.train_loader, "state_dict", None)
    return {
        "batches_seen": t.batches_seen,
        "epoch": t.epoch,
        "elapsed": t.elapsed,
        "loader": loader_state() if callable(loader_state) else None,
        "rng": t.rng.bit_generator.state,
        "module_rngs": {n: g.bit_generator.state for n, g in t._generators.items()},
        "best": {"metric": t._tracked.metric, "value": t.best_value, "step": t.best_step},
        "bad_evals": t.bad_evals,
        "stopped_early": t.stopped_early,
        "skipped_steps": t.skipped_steps,
        "last_eval_step": t.last_eval_step,
        "last_metrics": t.last_metrics,
        "window": window,
    }
