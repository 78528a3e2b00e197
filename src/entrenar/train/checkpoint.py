"""Training checkpoints: one folder per step, written atomically, safetensors + JSON, never pickle.

    <output_dir>/checkpoints/
        step-200/
            model.safetensors       the trainable parameters, by the model's parameter names
            optimizer.safetensors   the optimizer's state arrays ("state.<index>.<name>")
            optimizer.json          {"param_names": [name of parameter <index>], "state_dict": ...}
            scheduler.json          the scheduler's state_dict (null without a scheduler)
            trainer_state.json      step, loader state, generator states, best metric, counters
            config.json             the TrainerConfig (to_dict)
            checksums.json          {"sha256": {file name: hex digest}} of every file above, written last
        step-300/ ...
        latest                      "step-300": the newest complete checkpoint

A checkpoint is written into a hidden temporary folder next to its final place and renamed into place
only when every file is written (and flushed); `latest` is rewritten atomically after that. So
whatever fails midway, `latest` names a complete checkpoint (a crash can leave a hidden
`.step-N.*.tmp` folder behind, never a partial `step-N`). The JSON files hold the structure of each
state dict with arrays named, the safetensors files the arrays (see `entrenar.train.state`).

Reading a checkpoint first checks every file against checksums.json (SHA-256), so a checkpoint
corrupted on disk is refused with a FormatError naming the file, and the message names the newest
older checkpoint in the same folder that is intact, if any (nothing falls back on its own). Behind
the checksums every file is checked for what a resume relies on (a file can be written by anyone,
checksums and all): the step matches the folder's name, the resume state has every field of its
type and range (`entrenar.train.state.check_trainer_state`), the optimizer state names each weight
once and holds counters and arrays of the weights' shapes (`check_optimizer_state`). Errors are
FormatErrors naming the file and the field; what only the live run can judge (the loader's data, the
optimizer's hyper-parameters) is refused by Trainer.resume, naming the file and field as well.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from entrenar.io import FormatError, atomic_write_text, load_safetensors, save_safetensors
from entrenar.train.state import MAX_COUNT, check_trainer_state, from_json_tree, to_json_tree

__all__ = [
    "CHECKPOINTS_DIR",
    "LATEST",
    "STATE_FORMAT",
    "Checkpoint",
    "check_optimizer_state",
    "list_checkpoints",
    "prune_checkpoints",
    "read_checkpoint",
    "resolve_checkpoint",
    "restoring",
    "verify_checkpoint",
    "write_checkpoint",
]

CHECKPOINTS_DIR = "checkpoints"
LATEST = "latest"
STATE_FORMAT = "entrenar.train/1"
MODEL_FILE = "model.safetensors"
OPTIMIZER_ARRAYS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"
SCHEDULER_JSON = "scheduler.json"
STATE_JSON = "trainer_state.json"
CONFIG_JSON = "config.json"
CHECKSUMS_JSON = "checksums.json"
_CHECKED_FILES = (MODEL_FILE, OPTIMIZER_ARRAYS, OPTIMIZER_JSON, SCHEDULER_JSON, STATE_JSON, CONFIG_JSON)
_STEP_DIR = re.compile(r"^step-([0-9]+)$")
_LEFTOVER = re.compile(r"^\.step-[0-9]+\.[0-9a-f]+\.(tmp|old)$")


@dataclass
class Checkpoint:
    """What one checkpoint holds, in memory (`path` is its folder when read from disk)."""

    step: int
    model: dict[str, np.ndarray]
    optimizer: dict[str, Any]
    param_names: list[str]
    scheduler: dict[str, Any] | None
    trainer_state: dict[str, Any]
    config: dict[str, Any]
    path: Path | None = None


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, allow_nan=False) + "\n"


def _fsync_dir(directory: Path) -> None:
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_files(folder: Path, ck: Checkpoint) -> None:
    save_safetensors(folder / MODEL_FILE, ck.model)
    arrays: dict[str, np.ndarray] = {}
    packed = to_json_tree(ck.optimizer, arrays)
    save_safetensors(folder / OPTIMIZER_ARRAYS, arrays)
    atomic_write_text(folder / OPTIMIZER_JSON, _dump({"param_names": ck.param_names, "state_dict": packed}))
    atomic_write_text(folder / SCHEDULER_JSON, _dump(to_json_tree(ck.scheduler)))
    state = {"format": STATE_FORMAT, "step": ck.step, **to_json_tree(ck.trainer_state)}
    atomic_write_text(folder / STATE_JSON, _dump(state))
    atomic_write_text(folder / CONFIG_JSON, _dump(ck.config))
    digests = {name: _sha256(folder / name) for name in _CHECKED_FILES}
    atomic_write_text(folder / CHECKSUMS_JSON, _dump({"sha256": digests}))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify_checkpoint(folder: str | os.PathLike[str]) -> None:
    """Check every file of the checkpoint folder against its checksums.json: FormatError naming the
    first file whose SHA-256 differs, FileNotFoundError naming a missing one."""
    root = Path(folder)
    manifest_path = root / CHECKSUMS_JSON
    manifest = _read_json(manifest_path)
    digests = _field(manifest_path, manifest, "sha256", dict)
    for name in _CHECKED_FILES:
        expected = digests.get(name)
        if not isinstance(expected, str):
            raise FormatError(manifest_path, f"expected a SHA-256 hex digest for {name!r}")
        path = root / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing from the checkpoint")
        actual = _sha256(path)
        if actual != expected:
            raise FormatError(
                path, f"corrupted: its SHA-256 is {actual}, {CHECKSUMS_JSON} recorded {expected}"
            )


def _cannot_resume(folder: Path) -> str:
    """The advice for a checkpoint that failed verification: which older one next to it is intact."""
    m = _STEP_DIR.match(folder.name)
    step = int(m.group(1)) if m else None
    for s, p in reversed(list_checkpoints(folder.parent)):
        if p == folder or (step is not None and s >= step):
            continue
        try:
            verify_checkpoint(p)
        except (FormatError, OSError):
            continue
        return (
            f"the checkpoint {folder} cannot be resumed; the older checkpoint {p} is intact: resume "
            f"from it explicitly (resume={os.fspath(p)!r})"
        )
    return f"the checkpoint {folder} cannot be resumed, and no other intact one is in {folder.parent}"


def write_checkpoint(checkpoints_dir: str | os.PathLike[str], ck: Checkpoint) -> Path:
    """Write `ck` as checkpoints_dir/step-<ck.step>/ (replacing one of that step), then point `latest`
    at it. On any error the temporary folder is removed and `latest` and older checkpoints are as
    they were. Returns the checkpoint folder."""
    root = Path(checkpoints_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{ck.step}"
    final = root / name
    tmp = root / f".{name}.{secrets.token_hex(6)}.tmp"
    tmp.mkdir()
    try:
        _write_files(tmp, ck)
        if final.exists():  # a checkpoint of this step from an abandoned continuation of the run
            old = root / f".{name}.{secrets.token_hex(6)}.old"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / LATEST, name + "\n")
    return final


def list_checkpoints(checkpoints_dir: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """(step, folder) of every step-N folder, by step."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def prune_checkpoints(
    checkpoints_dir: str | os.PathLike[str], keep_last: int | None, current_step: int
) -> None:
    """Remove the step folders after `current_step` (left by an abandoned continuation of the run), all
    but the newest `keep_last` of the others (None: keep them all), and the hidden folders of writes a
    killed process left half-done (`.step-N.<random>.tmp` / `.old`)."""
    found = list_checkpoints(checkpoints_dir)
    stale = [p for s, p in found if s > current_step]
    stale += [p for p in Path(checkpoints_dir).glob(".step-*") if _LEFTOVER.match(p.name) and p.is_dir()]
    kept = [p for s, p in found if s <= current_step]
    if keep_last is not None:
        stale += kept[:-keep_last] if len(kept) > keep_last else []
    for p in stale:
        shutil.rmtree(p)


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The checkpoint folder `path` names: a step-N folder itself, or a checkpoints folder or an output
    folder whose `latest` file names one. FileNotFoundError saying what was looked for otherwise."""
    p = Path(path)
    if (p / STATE_JSON).is_file():
        return p
    for root in (p / CHECKPOINTS_DIR, p):
        pointer = root / LATEST
        if pointer.is_file():
            name = pointer.read_text(encoding="utf-8").strip()
            if not _STEP_DIR.match(name):
                raise FormatError(pointer, f"expected a checkpoint name such as 'step-100', got {name!r}")
            if not (root / name / STATE_JSON).is_file():
                raise FileNotFoundError(
                    f"{pointer} names {name}, but {root / name} is not a complete checkpoint"
                )
            return root / name
    raise FileNotFoundError(
        f"no checkpoint at {p}: expected a step-N folder (with {STATE_JSON}), or a folder holding "
        f"{CHECKPOINTS_DIR}/{LATEST} or {LATEST}"
    )


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing from the checkpoint")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(path, f"not UTF-8 JSON ({exc})") from None
    except RecursionError:
        raise FormatError(path, "JSON nested too deeply to read") from None


def _field(path: Path, obj: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict) or key not in obj or not isinstance(obj[key], kind):
        what = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise FormatError(path, f"expected a key {key!r} holding a value of type {what}")
    return obj[key]


def _decode(path: Path, tree: Any, arrays: Mapping[str, np.ndarray] | None = None) -> Any:
    """from_json_tree, its errors as a FormatError naming the file."""
    try:
        return from_json_tree(tree, arrays)
    except (KeyError, ValueError) as exc:
        raise FormatError(path, str(exc).strip("'\"")) from None
    except RecursionError:
        raise FormatError(path, "nested too deeply to read") from None


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """The checkpoint at `path` (anything `resolve_checkpoint` accepts); FormatError naming the file and
    the key for anything malformed."""
    folder = resolve_checkpoint(path)
    try:
        verify_checkpoint(folder)
    except FormatError as exc:
        raise FormatError(exc.path, f"{exc.message}; {_cannot_resume(folder)}") from None
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc}; {_cannot_resume(folder)}") from None
    state_path = folder / STATE_JSON
    raw_state = _read_json(state_path)
    fmt = _field(state_path, raw_state, "format", str)
    if fmt != STATE_FORMAT:
        raise FormatError(state_path, f"format {fmt!r} is not {STATE_FORMAT!r}")
    step = _field(state_path, raw_state, "step", int)
    m = _STEP_DIR.match(folder.name)
    if m is not None and int(m.group(1)) != step:
        raise FormatError(state_path, f"field 'step' is {step!r}, but the checkpoint folder is {folder.name}")
    state = _decode(state_path, {k: v for k, v in raw_state.items() if k not in ("format", "step")})
    try:
        check_trainer_state(step, state)
    except ValueError as exc:
        raise FormatError(state_path, str(exc)) from None
    model = load_safetensors(folder / MODEL_FILE)
    opt_path = folder / OPTIMIZER_JSON
    raw_opt = _read_json(opt_path)
    names = _field(opt_path, raw_opt, "param_names", list)
    if not all(isinstance(n, str) for n in names) or sorted(names) != sorted(model):
        strs = [n for n in names if isinstance(n, str)]
        raise FormatError(
            opt_path,
            f"field 'param_names' must name each tensor of {MODEL_FILE} once: missing "
            f"{sorted(set(model) - set(strs))}, not in {MODEL_FILE} {sorted(set(strs) - set(model))}, "
            f"{len(names) - len(set(strs))} repeated or not a string",
        )
    packed = _field(opt_path, raw_opt, "state_dict", dict)
    arrays = load_safetensors(folder / OPTIMIZER_ARRAYS)
    optimizer = _decode(opt_path, packed, arrays)
    check_optimizer_state(folder, optimizer, [model[n].shape for n in names])
    scheduler = _decode(folder / SCHEDULER_JSON, _read_json(folder / SCHEDULER_JSON))
    if scheduler is not None and not isinstance(scheduler, dict):
        raise FormatError(folder / SCHEDULER_JSON, "expected a JSON object or null")
    config = _read_json(folder / CONFIG_JSON)
    if not isinstance(config, dict):
        raise FormatError(folder / CONFIG_JSON, "expected a JSON object")
    return Checkpoint(step, model, optimizer, names, scheduler, state, config, folder)


def check_optimizer_state(folder: Path, optimizer: Any, shapes: list[tuple[int, ...]]) -> None:
    """FormatError naming the file and the field unless the decoded optimizer state dict fits the
    parameters whose shapes are `shapes` (by index): {"state": {index: {name: array}}, "param_groups":
    [{..., "params": [index]}]} with every index once, counters (0-d) whole numbers in [0, 2**63 - 1],
    and every other array floating point of its parameter's shape."""
    opt_path, arrays_path = folder / OPTIMIZER_JSON, folder / OPTIMIZER_ARRAYS
    state = optimizer.get("state") if isinstance(optimizer, dict) else None
    groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
    if not isinstance(state, dict) or not isinstance(groups, list):
        raise FormatError(
            opt_path, "field 'state_dict' must hold 'state' (an object) and 'param_groups' (a list)"
        )
    listed = [g.get("params") if isinstance(g, dict) else None for g in groups]
    indices = [i for params in listed if isinstance(params, list) for i in params]
    ints = all(isinstance(params, list) for params in listed) and all(type(i) is int for i in indices)
    if not ints or sorted(indices) != list(range(len(shapes))):
        raise FormatError(
            opt_path,
            f"field 'param_groups' must list each parameter index 0..{len(shapes) - 1} once, got {listed!r}",
        )
    for index, entries in state.items():
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(shapes):
            raise FormatError(opt_path, f"field 'state.{index}': not a parameter index in [0, {len(shapes)})")
        if not isinstance(entries, dict):
            raise FormatError(opt_path, f"field 'state.{index}' must be an object of arrays")
        for name, value in entries.items():
            where = f"field 'state.{index}.{name}'"
            if value is None:
                continue
            if not isinstance(value, np.ndarray):
                raise FormatError(opt_path, f"{where} must be an array, got {value!r}")
            # a 0-d entry is a counter such as Adam's step, unless the parameter itself is 0-d
            if value.shape == () and (shapes[index] != () or value.dtype.kind != "f"):
                v = value.item()
                if value.dtype.kind not in "iuf" or not (0 <= v <= MAX_COUNT and float(v).is_integer()):
                    raise FormatError(
                        arrays_path, f"{where} must be a whole number in [0, {MAX_COUNT}], got {v!r}"
                    )
            elif value.dtype.kind != "f" or value.shape != shapes[index]:
                raise FormatError(
                    arrays_path,
                    f"{where} is {value.dtype} of shape {value.shape}; parameter {index} is floating point "
                    f"of shape {shapes[index]}",
                )


@contextmanager
def restoring(path: Path, field_name: str) -> Iterator[None]:
    """Restoring a checkpoint's `field_name` (of the file `path`) into a live object: its ValueError,
    TypeError or KeyError becomes a ValueError naming the file and the field."""
    try:
        yield
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{path}: field {field_name!r} does not fit this run: {exc}") from None


def check_names(what: str, saved: Mapping[str, Any] | list[str], current: list[str]) -> None:
    """ValueError listing the names only one side has (the checkpoint's `what` against the model's)."""
    missing = [n for n in current if n not in saved]
    unexpected = [n for n in saved if n not in set(current)]
    if missing or unexpected:
        raise ValueError(
            f"the checkpoint's {what} do not match this model's trainable parameters: "
            f"not in the checkpoint {missing}, in the checkpoint but not trainable here {unexpected}"
        )
