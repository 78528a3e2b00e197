"""Read a Hugging Face checkpoint folder: config.json, and weights in one or several safetensors files.

    <dir>/config.json                        the model's hyper-parameters (a JSON object)
    <dir>/model.safetensors                  every tensor by name, or, when the model is sharded,
    <dir>/model.safetensors.index.json       {"metadata": {...}, "weight_map": {tensor name: shard file}}
    <dir>/model-00001-of-0000N.safetensors   ... the shards it names, in the same folder

Every file goes through `entrenar.io`; anything malformed is a FormatError naming the file and what is
wrong where. A folder with both forms is read from model.safetensors, as Hugging Face does. Pickle-based
`pytorch_model.bin` checkpoints are never read.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from entrenar.io import (
    FormatError,
    atomic_write_text,
    load_safetensors,
    read_safetensors_header,
    save_safetensors,
)

__all__ = [
    "CONFIG_NAME",
    "INDEX_NAME",
    "WEIGHTS_NAME",
    "CheckpointTensors",
    "checkpoint_dir",
    "read_json",
    "read_tensors",
    "write_tensors",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"


def checkpoint_dir(path: str | os.PathLike[str]) -> Path:
    """`path` as a Path, after checking that it is an existing folder (FileNotFoundError naming it)."""
    folder = Path(path)
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise FileNotFoundError(f"checkpoint folder {folder} {what}: expected a folder holding {CONFIG_NAME}")
    return folder


def _listing(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir())
    shown = ", ".join(names[:12]) + (f", ... ({len(names)} entries)" if len(names) > 12 else "")
    return shown or "nothing"


def read_json(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in the file at `path` (`what` names the expected file in errors).

    FileNotFoundError when it is absent (naming the folder's contents); FormatError when it is not a
    UTF-8 JSON object, naming the file and the line and column of a syntax error.
    """
    if not path.is_file():
        there = _listing(path.parent) if path.parent.is_dir() else "the folder does not exist"
        raise FileNotFoundError(f"{path}: no {what} there (the folder holds: {there})")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(path, f"{what} is not UTF-8 text (byte {exc.start})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormatError(
            path, f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise FormatError(path, f"{what} is JSON nested too deeply to read") from None
    if not isinstance(value, dict):
        raise FormatError(path, f"{what} must hold a JSON object, found {type(value).__name__}")
    return value


@dataclass(frozen=True)
class CheckpointTensors:
    """A checkpoint's tensors by their names in the file(s), and the file each one came from."""

    tensors: dict[str, np.ndarray]
    source: dict[str, Path]


def read_tensors(folder: Path) -> CheckpointTensors:
    """Every tensor of the checkpoint in `folder`: model.safetensors, or the shards its index names."""
    single, index = folder / WEIGHTS_NAME, folder / INDEX_NAME
    if single.exists():
        tensors = load_safetensors(single)
        return CheckpointTensors(tensors, dict.fromkeys(tensors, single))
    if index.exists():
        return _read_sharded(folder, index)
    hint = (
        " (pickle-based .bin checkpoints are not read: convert to safetensors)"
        if any(folder.glob("*.bin"))
        else ""
    )
    raise FileNotFoundError(
        f"{folder}: no weights: expected {WEIGHTS_NAME} or {INDEX_NAME} with its shards{hint}; "
        f"the folder holds: {_listing(folder)}"
    )


def _weight_map(index: Path) -> dict[str, str]:
    """The index's weight_map, checked: tensor name -> a plain file name in the same folder."""
    raw = read_json(index, "sharded-checkpoint index")
    if "weight_map" not in raw:
        raise FormatError(index, f"missing key 'weight_map'; found keys {sorted(raw)}")
    wmap = raw["weight_map"]
    if not isinstance(wmap, dict) or not wmap:
        raise FormatError(index, "'weight_map' must be a non-empty object of tensor name -> shard file")
    for key, shard in wmap.items():
        if not isinstance(shard, str) or not shard.endswith(".safetensors"):
            raise FormatError(index, f"weight_map[{key!r}] must name a .safetensors shard, got {shard!r}")
        p = PurePosixPath(shard)
        if len(p.parts) != 1 or shard in (".", "..") or "\\" in shard:
            raise FormatError(index, f"weight_map[{key!r}] = {shard!r}: shards must be plain file names")
    return wmap


def _read_sharded(folder: Path, index: Path) -> CheckpointTensors:
    wmap = _weight_map(index)
    shards = sorted(set(wmap.values()))
    missing = [s for s in shards if not (folder / s).is_file()]
    if missing:
        raise FormatError(
            index, f"shard file(s) {', '.join(missing)} named in weight_map do not exist in {folder}"
        )
    # headers first: every shard validated, and agreeing with the index, before any data is read
    for shard in shards:
        listed = {k for k, s in wmap.items() if s == shard}
        held = set(read_safetensors_header(folder / shard)[0])
        if listed - held:
            raise FormatError(
                folder / shard, f"lacks tensor(s) {sorted(listed - held)} that {INDEX_NAME} places there"
            )
        if held - listed:
            raise FormatError(
                folder / shard, f"holds tensor(s) {sorted(held - listed)} that {INDEX_NAME} does not list"
            )
    tensors: dict[str, np.ndarray] = {}
    source: dict[str, Path] = {}
    for shard in shards:
        for key, array in load_safetensors(folder / shard).items():
            tensors[key], source[key] = array, folder / shard
    return CheckpointTensors(tensors, source)


def write_tensors(
    folder: Path, tensors: dict[str, np.ndarray], *, max_shard_bytes: int | None = None
) -> list[Path]:
    """Write `tensors` as model.safetensors, or, given `max_shard_bytes`, as shards of at most that many
    data bytes (a tensor larger than that gets a shard of its own) plus model.safetensors.index.json.

    Each file is written atomically; a stale file of the other form is removed last, so the folder is
    read back as what was just written. Returns the paths written.
    """
    if max_shard_bytes is not None and (type(max_shard_bytes) is not int or max_shard_bytes < 1):
        raise ValueError(f"max_shard_bytes must be a positive int or None, got {max_shard_bytes!r}")
    single, index = folder / WEIGHTS_NAME, folder / INDEX_NAME
    if max_shard_bytes is None:
        save_safetensors(single, tensors, {"format": "pt"})
        index.unlink(missing_ok=True)
        return [single]
    groups: list[list[str]] = [[]]
    size = 0
    for key, array in tensors.items():  # greedy, in order: shards hold neighbouring tensors
        if groups[-1] and size + array.nbytes > max_shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append(key)
        size += array.nbytes
    n = len(groups)
    written: list[Path] = []
    wmap: dict[str, str] = {}
    for i, keys in enumerate(groups, start=1):
        shard = folder / f"model-{i:05d}-of-{n:05d}.safetensors"
        save_safetensors(shard, {k: tensors[k] for k in keys}, {"format": "pt"})
        wmap.update(dict.fromkeys(keys, shard.name))
        written.append(shard)
    total = sum(int(a.nbytes) for a in tensors.values())
    meta = {"metadata": {"total_size": total}, "weight_map": dict(sorted(wmap.items()))}
    atomic_write_text(index, json.dumps(meta, indent=2) + "\n")
    single.unlink(missing_ok=True)
    return [*written, index]
