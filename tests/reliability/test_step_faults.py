"""Faults inside one process: non-finite losses and gradients (stop or skip), a checkpoint that cannot be
written (disk full, read-only, no permission), and a checkpoint corrupted on disk."""

from __future__ import annotations

import errno
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fault_run import build
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import entrenar.train.checkpoint as ckpt
from entrenar import functional as F
from entrenar.io import FormatError
from entrenar.train import TrainerConfig, read_checkpoint, read_events


def last_step(out: Path) -> int:
    return read_checkpoint(out).step


# ------------------------------------------------------------------------------ non-finite steps
def test_a_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    t = build(tmp_path / "run", 10, nan_at=5)
    with pytest.raises(
        FloatingPointError, match=r"step 5: the loss is nan and the gradient of 'embed\.weight'"
    ):
        t.train()
    assert last_step(tmp_path / "run") == 4
    assert max(e["step"] for e in read_events(tmp_path / "run" / "metrics.jsonl")) == 4


def test_a_nonfinite_gradient_with_a_finite_loss_names_that_parameter(tmp_path: Path) -> None:
    t = build(tmp_path / "run", 10)
    loss_fn = t.loss_fn

    def kink(model: Any, batch: Any) -> Any:
        loss, sums = loss_fn(model, batch)
        if model.training and t.step + 1 == 3:  # d sqrt(x)/dx at 0 is inf; inf * 0 is NaN
            loss = loss + F.sqrt(model.hidden.bias * 0.0).sum()
        return loss, sums

    t.loss_fn = kink
    with pytest.raises(FloatingPointError) as info, np.errstate(divide="ignore", invalid="ignore"):
        t.train()
    message = str(info.value)
    assert "step 3: the loss is" in message and "the gradient of 'hidden.bias' is not finite" in message
    assert "step-2" in message and "nonfinite='skip'" in message
    assert last_step(tmp_path / "run") == 2


def test_skip_makes_no_update_and_counts_the_skipped_steps(tmp_path: Path) -> None:
    t = build(tmp_path / "run", 5, nan_at=5, nonfinite="skip")
    t.train()
    root = tmp_path / "run" / "checkpoints"
    before, after = read_checkpoint(root / "step-4"), read_checkpoint(root / "step-5")
    for name, value in before.model.items():
        np.testing.assert_array_equal(after.model[name], value, err_msg=name)
    assert after.scheduler != before.scheduler  # the schedule still advanced
    events = [e for e in read_events(tmp_path / "run" / "metrics.jsonl") if e["split"] == "train"]
    assert [e["skipped_steps"] for e in events] == [0, 0, 0, 0, 1]
    assert events[-1]["loss"] is None and t.skipped_steps == 1
    assert after.trainer_state["skipped_steps"] == 1


def test_nonfinite_must_be_stop_or_skip(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nonfinite must be 'stop' or 'skip', got 'ignore'"):
        TrainerConfig(output_dir=tmp_path, max_steps=1, nonfinite="ignore")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ checkpoint writes fail
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES])
@pytest.mark.parametrize("where", ["save_safetensors", "atomic_write_text"])
def test_a_failed_checkpoint_write_says_why_and_keeps_the_previous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, where: str
) -> None:
    out = tmp_path / "run"
    t = build(out, 4, save_every=2)
    real = getattr(ckpt, where)
    calls: list[int] = []

    def failing(path: Path, *args: Any) -> None:
        calls.append(t.step)
        if t.step == 4 and path.name != "model.safetensors":  # fail midway through the folder
            raise OSError(code, "simulated")
        real(path, *args)

    monkeypatch.setattr(ckpt, where, failing)
    with pytest.raises(OSError) as info:
        t.train()
    assert info.value.errno == code
    if code == errno.EACCES:
        assert isinstance(info.value, PermissionError)
    reason = {errno.ENOSPC: "disk is full", errno.EDQUOT: "quota", errno.EROFS: "read-only"}
    message = str(info.value)
    assert reason.get(code, "permission denied") in message
    assert "checkpoint of step 4" in message and f"{out / 'checkpoints' / 'step-2'} is intact" in message
    assert (out / "checkpoints" / "latest").read_text() == "step-2\n"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step-2"]
    assert last_step(out) == 2  # and it verifies
    monkeypatch.setattr(ckpt, where, real)
    resumed = build(out, 4, save_every=2)
    resumed.train()
    assert last_step(out) == 4


# ------------------------------------------------------------------------------ corrupted checkpoints
@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ck") / "run"
    build(out, 2).train()
    return out


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_a_corrupted_latest_is_refused_naming_the_file_and_the_intact_one(
    two_checkpoints: Path, tmp_path: Path
) -> None:
    out = copy_run(two_checkpoints, tmp_path / "run")
    target = out / "checkpoints" / "step-2" / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[-3] ^= 0x10  # one bit of one weight
    target.write_bytes(bytes(data))
    with pytest.raises(
        FormatError, match=r"model\.safetensors: corrupted: its SHA-256 is [0-9a-f]{64}"
    ) as info:
        read_checkpoint(out)
    assert f"the older checkpoint {out / 'checkpoints' / 'step-1'} is intact" in str(info.value)
    with pytest.raises(FormatError, match="corrupted"):
        build(out, 4).train()  # resume=True refuses, nothing falls back on its own
    older = build(out, 4)
    assert older.resume(out / "checkpoints" / "step-1").name == "step-1"


def test_without_an_intact_checkpoint_the_message_says_so(two_checkpoints: Path, tmp_path: Path) -> None:
    out = copy_run(two_checkpoints, tmp_path / "run")
    for step in (1, 2):
        manifest = out / "checkpoints" / f"step-{step}" / "checksums.json"
        digests = json.loads(manifest.read_text())
        digests["sha256"]["optimizer.json"] = "0" * 64
        manifest.write_text(json.dumps(digests))
    with pytest.raises(FormatError, match=r"optimizer\.json: corrupted.*no other intact one"):
        read_checkpoint(out)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_any_flipped_bit_in_a_checkpoint_is_detected(two_checkpoints: Path, data: st.DataObject) -> None:
    folder = two_checkpoints / "checkpoints" / "step-2"
    name = data.draw(st.sampled_from(sorted(p.name for p in folder.iterdir())))
    path = folder / name
    original = path.read_bytes()
    at = data.draw(st.integers(0, len(original) - 1))
    bit = data.draw(st.integers(0, 7))
    flipped = bytearray(original)
    flipped[at] ^= 1 << bit
    path.write_bytes(bytes(flipped))
    try:
        with pytest.raises(FormatError, match=re.escape(name)):  # the file, or the manifest its digest
            read_checkpoint(folder)
    finally:
        path.write_bytes(original)
