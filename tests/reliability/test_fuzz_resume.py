"""Fuzzing Trainer.resume with corrupted and hostile checkpoints whose checksums are correct (resealed),
so that every check behind the checksums is reached: the resume state (trainer_state.json: step
counters, loader position, generator states, log window), the optimizer state (optimizer.json and the
arrays of optimizer.safetensors) and the scheduler state.

A resume either succeeds or fails with a FormatError naming a file of the checkpoint, a ValueError
naming the checkpoint's folder, or FileNotFoundError naming the missing file; the hand-made cases
below also check that the message names the file and the field.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fault_run import build
from fuzzing import CASES, EXAMPLES, SWEEP, fuzz, hostile_docs, mutations, sweep
from hypothesis import given
from hypothesis import strategies as st

from entrenar.io import FormatError, load_safetensors, save_safetensors
from entrenar.train import Trainer

JSON_FILES = ["trainer_state.json", "optimizer.json", "scheduler.json"]
SWEPT = [*JSON_FILES, "optimizer.safetensors"]


@pytest.fixture(scope="module")
def checkpoint(folder: Path) -> Path:
    build(folder / "run", 2).train()
    return folder / "run" / "checkpoints" / "step-2"


@pytest.fixture(scope="module")
def trainer(folder: Path, checkpoint: Path) -> Trainer:
    """A trainer of the same run, for resuming (each case restores all of it again)."""
    t = build(folder / "other", 2)
    t.resume(checkpoint)  # the valid checkpoint resumes
    return t


class Scratch:
    """A copy of the checkpoint whose files can be replaced, resealed and put back cheaply: the
    digests of the files not touched are kept."""

    def __init__(self, source: Path, target: Path) -> None:
        shutil.copytree(source, target)
        self.path = target
        self.valid = {p.name: p.read_bytes() for p in target.iterdir()}
        self.digests = json.loads(self.valid["checksums.json"])["sha256"]

    def put(self, name: str, data: bytes) -> None:
        (self.path / name).write_bytes(data)
        digests = {**self.digests, name: hashlib.sha256(data).hexdigest()}
        (self.path / "checksums.json").write_text(json.dumps({"sha256": digests}))

    def restore(self, name: str) -> None:
        (self.path / name).write_bytes(self.valid[name])
        (self.path / "checksums.json").write_bytes(self.valid["checksums.json"])


@pytest.fixture(scope="module")
def scratch(folder: Path, checkpoint: Path) -> Iterator[Scratch]:
    yield Scratch(checkpoint, folder / "scratch" / "step-2")


def check_resume(trainer: Trainer, ck: Path) -> bool:
    """One case: True when the resume succeeded; a refusal must be one of the allowed kinds, naming
    the checkpoint (a FormatError: one of its files)."""
    CASES["resume-state"] += 1
    try:
        with np.errstate(all="ignore"):  # hostile hyper-parameters may overflow; that is no error
            trainer.resume(ck)
    except FormatError as exc:
        assert Path(exc.path).parent == ck, f"the error names {exc.path}, not a file of {ck}: {exc}"
        return False
    except (ValueError, FileNotFoundError) as exc:
        assert str(ck) in str(exc), f"the error does not name {ck}: {exc}"
        return False
    return True


@fuzz(EXAMPLES)
@given(data=st.data())
def test_fuzz_resume_state_json(trainer: Trainer, scratch: Scratch, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(JSON_FILES))
    valid = scratch.valid[name]
    doc = json.loads(valid)
    blob = data.draw(
        st.one_of(hostile_docs(doc).map(lambda d: json.dumps(d).encode()), mutations(valid))
        if isinstance(doc, (dict, list)) and doc
        else mutations(valid)
    )
    scratch.put(name, blob)
    try:
        check_resume(trainer, scratch.path)
    finally:
        scratch.restore(name)


def test_resume_state_byte_sweep(trainer: Trainer, scratch: Scratch) -> None:
    """Seeded mutations of each state file in turn, resealed: accepted, or refused as above."""
    per_file = SWEEP // len(SWEPT)
    ran = 0
    for name in SWEPT:
        for blob in sweep(scratch.valid[name], per_file, seed=len(name)):
            scratch.put(name, blob)
            check_resume(trainer, scratch.path)
            ran += 1
        scratch.restore(name)
    assert ran == SWEEP


# ------------------------------------------------------------------------------ hand-made cases
def edit_json(scratch: Scratch, name: str, change: Any) -> None:
    doc = json.loads(scratch.valid[name])
    change(doc)
    scratch.put(name, json.dumps(doc).encode())


def _set(path: str, value: Any) -> Any:
    def change(doc: Any) -> None:
        *parents, last = path.split(".")
        for p in parents:
            doc = doc[p]
        doc[last] = value

    return change


def _drop(key: str) -> Any:
    return lambda doc: doc.pop(key)


STATE_CASES = [
    ("step", -1, r"field 'step' is -1, but the checkpoint folder is step-2"),
    ("step", 10**30, r"field 'step' is 1000000000000000000000000000000"),
    ("batches_seen", -5, r"field 'batches_seen' must be an int in \[0, 9223372036854775807\], got -5"),
    ("batches_seen", 2**64, r"field 'batches_seen' must be an int in \[0, 9223372036854775807\]"),
    ("batches_seen", 4.5, r"field 'batches_seen' must be an int"),
    ("skipped_steps", 3, r"field 'skipped_steps' must be an int in \[0, 2\], got 3"),
    ("elapsed", -1.0, r"field 'elapsed' must be a finite number >= 0.0, got -1.0"),
    ("elapsed", {"__float__": "nan"}, r"field 'elapsed' must be a finite number >= 0.0, got nan"),
    ("loader.position", 10**6, r"field 'loader.position' is 1000000, beyond the 12 batches of an epoch"),
    ("loader.position", -1, r"field 'loader.position' must be an int"),
    ("loader.batch_size", 0, r"fields 'loader.batch_size' and 'loader.drop_last' must be a positive int"),
    ("rng", "PCG64", r"field 'rng' must be a random generator state"),
    ("rng.bit_generator", "Evil", r"field 'rng' must be a random generator state .* got 'Evil'"),
    ("rng.state", [1, 2], r"field 'rng': not a valid PCG64 state"),
    ("rng.state.state", "zero", r"field 'rng': not a valid PCG64 state"),
    (
        "module_rngs",
        {"dropout.generator": {"bit_generator": "MT19937"}},
        r"field 'module_rngs.dropout.generator'",
    ),
    ("best.step", 7, r"field 'best.step' must be an int in \[0, 2\], got 7"),
    ("best", None, r"field 'best' must be an object with the keys metric, value, step"),
    ("stopped_early", "no", r"field 'stopped_early' must be a bool"),
    ("last_eval_step", 3, r"field 'last_eval_step' must be an int in \[0, 2\], got 3"),
    ("window.steps", -2, r"field 'window.steps' must be an int"),
    ("window", {"loss_sum": 0.0}, r"field 'window' must have exactly the keys"),
]


@pytest.mark.parametrize(("field", "value", "message"), STATE_CASES, ids=[c[0] for c in STATE_CASES])
def test_a_hostile_resume_state_names_the_file_and_field(
    trainer: Trainer, scratch: Scratch, field: str, value: Any, message: str
) -> None:
    edit_json(scratch, "trainer_state.json", _set(field, value))
    try:
        with pytest.raises(FormatError, match=rf"{scratch.path / 'trainer_state.json'}: {message}"):
            trainer.resume(scratch.path)
    finally:
        scratch.restore("trainer_state.json")


def test_a_resume_state_without_a_field_names_it(trainer: Trainer, scratch: Scratch) -> None:
    for key in ("batches_seen", "rng", "module_rngs", "best", "stopped_early", "window", "last_eval_step"):
        edit_json(scratch, "trainer_state.json", _drop(key))
        with pytest.raises(FormatError, match=rf"trainer_state\.json: field(s)? .*'{key}'"):
            trainer.resume(scratch.path)
    scratch.restore("trainer_state.json")


def test_a_loader_state_for_other_data_names_the_file_and_field(trainer: Trainer, scratch: Scratch) -> None:
    """Consistent in itself (position 4 of the 5 batches of 40 items), but not this run's data: the
    loader refuses it, and the error says where it came from."""
    edit_json(scratch, "trainer_state.json", _set("loader.num_items", 40))
    try:
        with pytest.raises(
            ValueError,
            match=r"trainer_state\.json: field 'loader' does not fit this run: .*num_items: saved 40",
        ):
            trainer.resume(scratch.path)
    finally:
        scratch.restore("trainer_state.json")


def _optimizer_arrays(scratch: Scratch, change: Any) -> None:
    arrays = load_safetensors(scratch.path / "optimizer.safetensors")
    change(arrays)
    save_safetensors(scratch.path / "optimizer.safetensors", arrays)
    scratch.put("optimizer.safetensors", (scratch.path / "optimizer.safetensors").read_bytes())


def _replace(key: str, value: Any) -> Any:
    """Replace the array `key` by `value`, or by value(old array) when value is callable."""
    return lambda a: a.update({key: value(a[key]) if callable(value) else value})


SHAPES = r"float32 of shape \(23, 16\); parameter 0 is floating point of shape \(24, 16\)"
WHOLE = r"must be a whole number in \[0, 9223372036854775807\]"
OPTIMIZER_CASES: list[tuple[str, Any, str]] = [
    ("shape", _replace("state.0.exp_avg", lambda x: x[:-1]), rf"state\.0\.exp_avg' is {SHAPES}"),
    (
        "dtype",
        _replace("state.1.exp_avg_sq", lambda x: x.astype(np.int32)),
        r"state\.1\.exp_avg_sq' is int32",
    ),
    ("negative step", _replace("state.2.step", np.array(-3, np.int64)), rf"state\.2\.step' {WHOLE}, got -3"),
    ("fractional step", _replace("state.2.step", np.array(2.5)), rf"state\.2\.step' {WHOLE}, got 2\.5"),
    ("huge step", _replace("state.0.step", np.array(1e30)), rf"state\.0\.step' {WHOLE}, got 1e\+30"),
]


@pytest.mark.parametrize(
    ("change", "message"), [c[1:] for c in OPTIMIZER_CASES], ids=[c[0] for c in OPTIMIZER_CASES]
)
def test_hostile_optimizer_arrays_name_the_file_and_field(
    trainer: Trainer, scratch: Scratch, change: Any, message: str
) -> None:
    _optimizer_arrays(scratch, change)
    try:
        with pytest.raises(FormatError, match=rf"{scratch.path / 'optimizer.safetensors'}: field '{message}"):
            trainer.resume(scratch.path)
    finally:
        scratch.restore("optimizer.safetensors")


@pytest.mark.parametrize(
    ("name", "change", "message"),
    [
        (
            "optimizer.json",
            _set("param_names", ["head.bias"] * 5),
            r"field 'param_names' must name each tensor of model\.safetensors once: missing \[.*'embed",
        ),
        ("optimizer.json", _set("state_dict.param_groups", [{"params": [0]}]), r"field 'param_groups' must"),
        ("optimizer.json", _set("state_dict.state", {"__items__": [[9, {}]]}), r"field 'state\.9': not a"),
        ("scheduler.json", _set("last_epoch", -4), r"field '<root>' does not fit this run: .*last_epoch"),
    ],
)
def test_semantically_wrong_optimizer_and_scheduler_state_names_the_file(
    trainer: Trainer, scratch: Scratch, name: str, change: Any, message: str
) -> None:
    edit_json(scratch, name, change)
    try:
        with pytest.raises(ValueError, match=rf"{scratch.path / name}: {message}"):
            trainer.resume(scratch.path)
    finally:
        scratch.restore(name)


@pytest.mark.parametrize("name", [*SWEPT, "model.safetensors", "config.json", "checksums.json"])
def test_a_missing_checkpoint_file_is_named(trainer: Trainer, scratch: Scratch, name: str) -> None:
    (scratch.path / name).unlink()
    message = rf"{scratch.path / name}: missing from the checkpoint"
    if name == "trainer_state.json":  # the file that makes a folder a checkpoint
        message = rf"no checkpoint at {scratch.path}: expected a step-N folder \(with trainer_state\.json\)"
    try:
        with pytest.raises(FileNotFoundError, match=message):
            trainer.resume(scratch.path)
    finally:
        scratch.restore(name)
