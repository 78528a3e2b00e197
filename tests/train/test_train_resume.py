"""Determinism and exact resume: an interrupted, resumed run logs the same losses and ends with the same
weights, bit for bit, as one run straight through (grad accumulation, clipping, warmup, dropout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from train_helpers import make_trainer

from entrenar.train import Trainer, read_events

# 96 examples / batch 8 = 12 batches per epoch; 2 micro-batches per step: 6 steps per epoch, so step 8
# (the split point) is in the middle of the second epoch
N = 8
SETUP: dict[str, Any] = {
    "grad_accumulation_steps": 2,
    "max_grad_norm": 0.25,
    "eval_every": 4,
    "save_every": N,
    "schedule_steps": 2 * N,
    "warmup": 3,
}
TIMING = ("elapsed", "samples_per_s")


def events(trainer: Trainer) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in e.items() if k not in TIMING}
        for e in read_events(trainer.config.path / "metrics.jsonl")
    ]


def weights(trainer: Trainer) -> dict[str, bytes]:
    return {k: v.tobytes() for k, v in trainer.model.state_dict().items()}


def optimizer_state(trainer: Trainer) -> list[bytes]:
    state = trainer.optimizer.state_dict()["state"]
    return [v.tobytes() for s in state.values() for v in s.values()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Trainer:
    t = make_trainer(tmp_path_factory.mktemp("straight") / "run", max_steps=2 * N, **SETUP)
    t.train()
    return t


def test_two_runs_with_one_seed_are_identical(straight: Trainer, tmp_path: Path) -> None:
    again = make_trainer(tmp_path / "run", max_steps=2 * N, **SETUP)
    again.train()
    assert events(again) == events(straight)
    assert weights(again) == weights(straight)
    clipped = [e["grad_norm"] > 0.25 for e in events(straight) if e["split"] == "train"]
    assert any(clipped)  # clipping was active, and warmup: the first step's lr is 0
    assert events(straight)[0]["lr"] == 0.0 and events(straight)[1]["lr"] > 0.0


def test_stop_and_resume_in_a_new_trainer(straight: Trainer, tmp_path: Path) -> None:
    first = make_trainer(tmp_path / "run", max_steps=N, **SETUP)
    first.train()
    second = make_trainer(tmp_path / "run", max_steps=2 * N, resume=True, **SETUP)
    assert second.step == 0
    result = second.train()
    assert second.resumed_from == tmp_path / "run" / "checkpoints" / f"step-{N}"
    assert result.steps == 2 * N
    assert events(second) == events(straight)
    assert weights(second) == weights(straight)
    assert optimizer_state(second) == optimizer_state(straight)
    assert second.scheduler is not None and straight.scheduler is not None
    assert second.scheduler.get_last_lr() == straight.scheduler.get_last_lr()


class Crash(Exception):
    pass


def test_crash_then_resume_rewrites_the_log_exactly(straight: Trainer, tmp_path: Path) -> None:
    crashing = make_trainer(tmp_path / "run", max_steps=2 * N, **SETUP)
    loss_fn, calls = crashing.loss_fn, []

    def crash_in_step_12(model: Any, batch: Any) -> Any:  # 2 train calls per step: call 23 is in step 12
        calls.append(model.training)
        if sum(calls) == 23 and model.training:
            raise Crash
        return loss_fn(model, batch)

    crashing.loss_fn = crash_in_step_12
    with pytest.raises(Crash):
        crashing.train()
    assert max(e["step"] for e in events(crashing)) == 11  # logged past the checkpoint at step 8
    resumed = make_trainer(tmp_path / "run", max_steps=2 * N, resume=True, **SETUP)
    resumed.train()
    assert events(resumed) == events(straight)
    assert weights(resumed) == weights(straight)


def test_resume_from_an_explicit_older_checkpoint(straight: Trainer, tmp_path: Path) -> None:
    """resume="<step folder>" goes back to that step; later checkpoints of the abandoned continuation go."""
    t = make_trainer(tmp_path / "run", max_steps=2 * N, keep_last=None, **{**SETUP, "save_every": 4})
    t.train()
    old = tmp_path / "run" / "checkpoints" / "step-4"
    again = make_trainer(
        tmp_path / "run", max_steps=2 * N, keep_last=None, resume=old, **{**SETUP, "save_every": 4}
    )
    assert again.resume(old) == old and again.step == 4
    again.train()
    assert events(again) == events(straight) and weights(again) == weights(straight)


def test_without_the_dropout_generator_the_resumed_run_differs(straight: Trainer, tmp_path: Path) -> None:
    """The control that shows the comparison can fail: dropout masks from a fresh generator change the run."""
    first = make_trainer(tmp_path / "run", max_steps=N, **SETUP)
    first.train()
    second = make_trainer(tmp_path / "run", max_steps=2 * N, **SETUP)
    second.resume(tmp_path / "run")
    second.model.dropout.generator.bit_generator.state = np.random.default_rng(99).bit_generator.state
    second.train()
    assert [e["loss"] for e in events(second)] != [e["loss"] for e in events(straight)]
    assert weights(second) != weights(straight)
