"""Adapter files: PEFT's format (adapter_config.json + adapter_model.safetensors) and a readable JSON one.

Which tensors an adapter's file holds, and under which key, is decided in one place: `adapter_key_map`
lists (model state-dict key -> checkpoint key) pairs using `checkpoint_key`, PEFT's rule:

    base_model.model.<path>.lora_A.<adapter>.weight               -> base_model.model.<path>.lora_A.weight
    base_model.model.<path>.lora_magnitude_vector.<adapter>.weight
                                                          -> base_model.model.<path>.lora_magnitude_vector
    base_model.model.<wrapper>.modules_to_save.<adapter>.<k>      -> base_model.model.<wrapper>.<k>

Saving writes the pairs; loading inverts the same map, so the two cannot drift. Biases are included
as PEFT selects them (bias="all": every bias; "lora_only": the adapted layers'). Base weights are never
saved. A non-default adapter goes to a subfolder named after it, as PEFT saves it.

The JSON format is one file, `adapter.json`: {"format": "entrenar-lora", "version": 1, "config": {...},
"tensors": {key: {"dtype": "float32", "shape": [...], "data": [flat row-major values]}}}. Every value is
written with the shortest repr that reads back to the same float, so float32 round-trips exactly.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from entrenar.io import FormatError, atomic_write_text, load_safetensors, save_safetensors
from entrenar.lora.config import LoraConfig
from entrenar.lora.layer import LoraLinear
from entrenar.lora.wrappers import ModulesToSaveWrapper
from entrenar.nn.module import Module

__all__ = [
    "CONFIG_NAME",
    "JSON_NAME",
    "WEIGHTS_NAME",
    "adapter_dir",
    "adapter_key_map",
    "checkpoint_key",
    "read_adapter",
    "write_adapter",
]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
JSON_NAME = "adapter.json"
JSON_FORMAT = "entrenar-lora"
JSON_VERSION = 1
PREFIX = "base_model.model."
_JSON_DTYPES = ("float16", "float32", "float64")


# ----------------------------------------------------------------------------------- key mapping
def checkpoint_key(model_key: str, adapter_name: str, wrappers: frozenset[str] = frozenset()) -> str:
    """The checkpoint key of a model state-dict key: the adapter name removed where PEFT removes it.

    `wrappers` are the state-dict paths of the ModulesToSaveWrappers (`base_model.model.classifier`).
    """
    for w in wrappers:
        inner = f"{w}.modules_to_save.{adapter_name}."
        if model_key.startswith(inner):
            return f"{w}.{model_key[len(inner) :]}"
    dora = f".lora_magnitude_vector.{adapter_name}.weight"
    if model_key.endswith(dora):
        return model_key[: -len(dora) + len(".lora_magnitude_vector")]
    return _remove_adapter_name(model_key, adapter_name)


def _remove_adapter_name(key: str, adapter_name: str) -> str:
    """PEFT's rule: 'x.lora_A.<a>.weight' -> 'x.lora_A.weight'; 'x.<a>' -> 'x'; other keys unchanged."""
    if "." not in key:
        return key
    if key.endswith(f".{adapter_name}"):
        return key[: -len(adapter_name) - 1]
    head, _, last = key.rpartition(".")
    return f"{re.sub(re.escape(f'.{adapter_name}') + '$', '', head)}.{last}"


def _named(model: Module, kind: type[Module]) -> Iterator[tuple[str, Any]]:
    for name, m in model.named_modules():
        if isinstance(m, kind):
            yield name, m


def adapter_key_map(model: Module, adapter_name: str, config: LoraConfig) -> dict[str, str]:
    """Model state-dict key -> checkpoint key for every tensor adapter `adapter_name`'s file holds.

    `model` is the PeftModel (its keys start with base_model.model.). Raises RuntimeError if two
    tensors would share a checkpoint key.
    """
    state = model.state_dict()
    wrappers = frozenset(
        n for n, m in _named(model, ModulesToSaveWrapper) if adapter_name in m.modules_to_save
    )
    selected: list[str] = []
    for name, layer in _named(model, LoraLinear):
        if adapter_name in layer.lora_A:
            for part in ("lora_A", "lora_B", "lora_magnitude_vector"):
                prefix = f"{name}.{part}.{adapter_name}."
                selected += [k for k in state if k.startswith(prefix)]
        if config.bias == "lora_only" and f"{name}.base_layer.bias" in state:
            selected.append(f"{name}.base_layer.bias")
    if config.bias == "all":
        others = [a for a in _adapter_names(model) if a != adapter_name]
        selected += [
            k
            for k in state
            if (k == "bias" or k.endswith(".bias"))
            and not any(f".{o}." in k or k.endswith(f".{o}") for o in others)
        ]
    for w in sorted(wrappers):
        selected += [k for k in state if k.startswith(f"{w}.modules_to_save.{adapter_name}.")]
    mapping = {k: checkpoint_key(k, adapter_name, wrappers) for k in dict.fromkeys(selected)}
    seen: dict[str, str] = {}
    for k, ck in mapping.items():
        if ck in seen:
            raise RuntimeError(f"adapter {adapter_name!r}: {seen[ck]} and {k} would both be saved as {ck}")
        seen[ck] = k
    return mapping


def _peft_duplicates(model: Module, adapter_name: str, config: LoraConfig) -> set[str]:
    """Keys PEFT also writes with bias="all": wrapped copies' biases as 'modules_to_save.<k>' (unused)."""
    if config.bias != "all":
        return set()
    return {
        _remove_adapter_name(k, adapter_name)
        for k in model.state_dict()
        if f".modules_to_save.{adapter_name}." in k and k.endswith(".bias")
    }


def _adapter_names(model: Module) -> set[str]:
    names: set[str] = set()
    for _, layer in _named(model, LoraLinear):
        names.update(layer.lora_A)
    for _, w in _named(model, ModulesToSaveWrapper):
        names.update(w.modules_to_save)
    return names


# ----------------------------------------------------------------------------------- writing
def adapter_dir(save_directory: str | os.PathLike[str], adapter_name: str) -> Path:
    """Where PEFT keeps an adapter: the directory for "default", a subfolder named after any other."""
    root = Path(save_directory)
    return root if adapter_name == "default" else root / adapter_name


def write_adapter(
    model: Module, directory: str | os.PathLike[str], adapter_name: str, config: LoraConfig, fmt: str = "peft"
) -> Path:
    """Save adapter `adapter_name` of PeftModel `model` into `directory` (made if needed): "peft" / "json"."""
    if fmt not in ("peft", "json"):
        raise ValueError(f"save_pretrained: format must be 'peft' or 'json', got {fmt!r}")
    state = model.state_dict()
    tensors = {
        ck: np.ascontiguousarray(state[k]) for k, ck in adapter_key_map(model, adapter_name, config).items()
    }
    saved = config.to_dict()
    saved["inference_mode"] = True  # as PEFT writes it: a saved adapter loads for inference unless asked
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "peft":
        save_safetensors(out / WEIGHTS_NAME, tensors, metadata={"format": "pt"})
        atomic_write_text(out / CONFIG_NAME, json.dumps(saved, indent=2, sort_keys=True) + "\n")
        return out
    doc = {
        "format": JSON_FORMAT,
        "version": JSON_VERSION,
        "config": saved,
        "tensors": {k: _tensor_json(k, v) for k, v in tensors.items()},
    }
    atomic_write_text(out / JSON_NAME, json.dumps(doc, indent=1, allow_nan=False) + "\n")
    return out


def _tensor_json(key: str, a: np.ndarray) -> dict[str, Any]:
    if a.dtype.name not in _JSON_DTYPES:
        raise ValueError(
            f"JSON adapter: tensor {key} has dtype {a.dtype}; the format holds {list(_JSON_DTYPES)}"
        )
    if not np.isfinite(a).all():
        raise ValueError(f"JSON adapter: tensor {key} holds NaN or infinity, which JSON cannot represent")
    # float(x) of a float32/float16 value is exact, and repr gives the shortest string reading back to it
    return {"dtype": a.dtype.name, "shape": list(a.shape), "data": [float(v) for v in a.reshape(-1)]}


# ----------------------------------------------------------------------------------- reading
def read_adapter(directory: str | os.PathLike[str]) -> tuple[LoraConfig, dict[str, np.ndarray]]:
    """(config, checkpoint tensors) of the adapter saved in `directory`, in either format (PEFT's first).

    Raises FileNotFoundError when the directory holds neither format, and FormatError (naming the
    file) for a truncated or malformed file.
    """
    d = Path(directory)
    peft = (d / CONFIG_NAME).is_file() and (d / WEIGHTS_NAME).is_file()
    js = (d / JSON_NAME).is_file()
    if peft:
        config = _config_from(d / CONFIG_NAME, _read_json(d / CONFIG_NAME))
        return config, load_safetensors(d / WEIGHTS_NAME)
    if js:
        return _read_json_adapter(d / JSON_NAME)
    raise FileNotFoundError(
        f"{d}: no adapter found: expected {CONFIG_NAME} and {WEIGHTS_NAME} (PEFT format) or {JSON_NAME} "
        f"(entrenar's JSON format); a non-default adapter lives in a subfolder named after it"
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(path, f"not valid UTF-8 JSON: {e}") from None
    except RecursionError:
        raise FormatError(path, "JSON nested too deeply to read") from None


def _config_from(path: Path, d: Any) -> LoraConfig:
    if not isinstance(d, dict):
        raise FormatError(path, f"the adapter config must be a JSON object, got {type(d).__name__}")
    try:
        return LoraConfig.from_dict(d)
    except (ValueError, TypeError) as e:
        raise FormatError(path, f"invalid adapter config: {e}") from None


def _read_json_adapter(path: Path) -> tuple[LoraConfig, dict[str, np.ndarray]]:
    doc = _read_json(path)
    if not isinstance(doc, dict) or doc.get("format") != JSON_FORMAT:
        raise FormatError(path, f'expected a JSON object with "format": "{JSON_FORMAT}"')
    if doc.get("version") != JSON_VERSION:
        raise FormatError(
            path, f"unsupported version {doc.get('version')!r} (this reader knows {JSON_VERSION})"
        )
    tensors = doc.get("tensors")
    if not isinstance(tensors, dict):
        raise FormatError(path, '"tensors" must be an object mapping key -> {dtype, shape, data}')
    config = _config_from(path, doc.get("config"))
    return config, {k: _tensor_from_json(path, k, v) for k, v in tensors.items()}


def _tensor_from_json(path: Path, key: str, t: Any) -> np.ndarray:
    if not isinstance(t, dict) or set(t) != {"dtype", "shape", "data"}:
        raise FormatError(path, f"tensor {key}: expected an object with exactly dtype, shape and data")
    dtype, shape, data = t["dtype"], t["shape"], t["data"]
    if dtype not in _JSON_DTYPES:
        raise FormatError(path, f"tensor {key}: dtype {dtype!r} is not one of {list(_JSON_DTYPES)}")
    if not isinstance(shape, list) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
    ):
        raise FormatError(path, f"tensor {key}: shape must be a list of non-negative ints, got {shape!r}")
    if not isinstance(data, list) or len(data) != math.prod(shape):
        got = len(data) if isinstance(data, list) else type(data).__name__
        raise FormatError(
            path, f"tensor {key}: data must be a flat list of {math.prod(shape)} numbers, got {got}"
        )
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in data):
        raise FormatError(path, f"tensor {key}: data must hold finite numbers only")
    with np.errstate(over="ignore"):
        out = np.asarray(data, dtype=np.float64).astype(dtype).reshape(shape)
    if not np.isfinite(out).all():
        raise FormatError(path, f"tensor {key}: a value is too large for {dtype}")
    return out


def load_tensors(
    model: Module, adapter_name: str, config: LoraConfig, tensors: Mapping[str, np.ndarray], source: str
) -> None:
    """Copy checkpoint `tensors` into adapter `adapter_name` of PeftModel `model`, checking keys and shapes.

    Raises KeyError naming missing and unexpected keys, ValueError naming a key and both shapes (or
    dtypes); nothing is written when it raises.
    """
    key_map = adapter_key_map(model, adapter_name, config)
    inverse = {ck: k for k, ck in key_map.items()}
    ignorable = _peft_duplicates(model, adapter_name, config)
    missing = [ck for ck in inverse if ck not in tensors]
    unexpected = [ck for ck in tensors if ck not in inverse and ck not in ignorable]
    if missing or unexpected:
        parts = [f"missing keys: {', '.join(missing)}"] if missing else []
        parts += [f"unexpected keys: {', '.join(unexpected)}"] if unexpected else []
        raise KeyError(f"{source}: the adapter does not fit the model: " + "; ".join(parts))
    state = model.state_dict()
    problems = []
    for ck, k in inverse.items():
        arr, own = tensors[ck], state[k]
        if arr.shape != own.shape:
            problems.append(f"{ck}: the file has shape {arr.shape}, the model expects {own.shape}")
        elif arr.dtype.kind != "f" and arr.dtype.name != "bfloat16":  # bf16 arrives as an ml_dtypes type
            problems.append(f"{ck}: the file has dtype {arr.dtype}, the model expects {own.dtype}")
    if problems:
        raise ValueError(f"{source}: the adapter does not fit the model: " + "; ".join(problems))
    for ck, k in inverse.items():
        np.copyto(state[k], tensors[ck], casting="unsafe")
