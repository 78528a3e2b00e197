"""A Trainer's checkpoints: what it writes at a step, and the exact resume from one.

The loop (entrenar.train.trainer) calls these through `Trainer.save_checkpoint` and `Trainer.resume`;
the checkpoint format itself (files, atomic writes, `latest`, validation) is entrenar.train.checkpoint.
A checkpoint holds everything the next step depends on: the trainable weights, optimizer and scheduler
state, the train loader's position, the trainer's and the model's generators, the counters and the
open log window (see the trainer's module docstring).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from entrenar.train.checkpoint import (
    CHECKPOINTS_DIR,
    Checkpoint,
    check_names,
    prune_checkpoints,
    read_checkpoint,
    restoring,
    write_checkpoint,
)
from entrenar.train.guards import checkpoint_write_error
from entrenar.train.state import LogWindow, set_generator_states, trainer_state

__all__ = ["resume_trainer", "save_trainer_checkpoint"]


def _trainable(t: Any) -> dict[str, np.ndarray]:
    """The trainer's model's trainable weights by name: what a checkpoint holds of the model."""
    return {n: p.data for n, p in t.model.named_parameters() if p.requires_grad}


def save_trainer_checkpoint(t: Any) -> Path:
    """Write output_dir/checkpoints/step-<step>/ atomically, point `latest` at it, keep the newest
    `keep_last`. Returns the folder."""
    ck = Checkpoint(
        step=t.step,
        model=_trainable(t),
        optimizer=t.optimizer.state_dict(),
        param_names=t._param_names,
        scheduler=None if t.scheduler is None else t.scheduler.state_dict(),
        trainer_state=trainer_state(t, dataclasses.asdict(t._window)),
        config=t.config.to_dict(),
    )
    root = t.config.path / CHECKPOINTS_DIR
    if not t.dp.is_writer:  # rank 0 writes; all built ck (a ZeroOptimizer gathers its state)
        t.last_save_step, t.last_checkpoint = t.step, root / f"step-{t.step}"
        return root / f"step-{t.step}"
    try:
        path = write_checkpoint(root, ck)
    except OSError as exc:
        raise checkpoint_write_error(exc, t.step, root, t.last_checkpoint) from exc
    prune_checkpoints(root, t.config.keep_last, t.step)
    t.last_save_step, t.last_checkpoint = t.step, path
    return path


def resume_trainer(t: Any, path: str | os.PathLike[str]) -> Path:
    """Restore the run from a checkpoint: a step-N folder, or an output or checkpoints folder (its
    `latest`). ValueError naming what does not match this trainer's model, optimizer, scheduler or
    loader. Returns the checkpoint folder."""
    ck = read_checkpoint(path)
    where = f"resume from {ck.path}"
    if ck.param_names != t._param_names:
        raise ValueError(
            f"{where}: the optimizer's parameters differ: saved {ck.param_names}, now {t._param_names}"
        )
    check_names("weights", ck.model, list(_trainable(t)))
    if (ck.scheduler is None) != (t.scheduler is None):
        saved, now = ("no", "a") if ck.scheduler is None else ("a", "no")
        raise ValueError(
            f"{where}: the checkpoint has {saved} scheduler state, this trainer has {now} scheduler"
        )
    st = ck.trainer_state
    load_loader = getattr(t.train_loader, "load_state_dict", None)
    if st.get("loader") is None or not callable(load_loader):
        raise ValueError(
            f"{where}: an exact resume needs the train loader's position; the loader must have "
            "state_dict() and load_state_dict() (as ClassificationLoader and LMLoader) in both runs"
        )
    assert ck.path is not None  # read_checkpoint names the folder it read
    with restoring(ck.path / "trainer_state.json", "loader"):
        load_loader(st["loader"])
    with restoring(ck.path / "optimizer.json", "state_dict"):
        t.optimizer.load_state_dict(ck.optimizer)
    if t.scheduler is not None and ck.scheduler is not None:
        with restoring(ck.path / "scheduler.json", "<root>"):
            t.scheduler.load_state_dict(ck.scheduler)
    with restoring(ck.path / "trainer_state.json", "module_rngs"):
        set_generator_states(t._generators, st["module_rngs"])
    t.rng.bit_generator.state = st["rng"]
    t.model.load_state_dict(ck.model, strict=False)
    t.step, t.batches_seen = ck.step, int(st["batches_seen"])
    t._elapsed_before = float(st["elapsed"])
    t.best_value, t.best_step = st["best"]["value"], st["best"]["step"]
    t.bad_evals, t.stopped_early = int(st["bad_evals"]), bool(st["stopped_early"])
    t.skipped_steps = int(st.get("skipped_steps", 0))
    t.last_eval_step, t.last_metrics = st["last_eval_step"], st["last_metrics"] or {}
    t._window = LogWindow(**st["window"])
    t.last_save_step, t.last_checkpoint, t.resumed_from = ck.step, ck.path, ck.path
    return ck.path
