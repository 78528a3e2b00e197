"""SIGKILL at random moments (mid-step, mid-checkpoint), then resume: the run ends exactly as one that was
never interrupted — same metrics.jsonl losses, same final weights, bit for bit.

Most kill points use processes forked from this one (so each costs milliseconds, not an interpreter
start); a few use `python fault_run.py` as a fresh interpreter, the way a user's run is started.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fault_run import build

from entrenar.io import load_safetensors
from entrenar.train import read_checkpoint, read_events

STEPS = 24
FORK_KILLS = 30
SCRIPT_KILLS = 2
SCRIPT = Path(__file__).with_name("fault_run.py")
TIMING = ("elapsed", "samples_per_s")


def _child(out: str, steps: int, conn: Connection) -> None:
    trainer = build(Path(out), steps)
    conn.send("started")
    trainer.train()
    os._exit(0)  # skip the parent's (pytest's) exit handlers in the forked child


def run_forked(out: Path, kill_after: float | None) -> bool:
    """Run (or continue) the training in a forked process; SIGKILL it `kill_after` seconds after its
    loop starts. True when it was killed while still running."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(str(out), STEPS, child))
    proc.start()
    child.close()
    assert parent.poll(60), "the training process did not start"
    parent.recv()
    killed = False
    if kill_after is not None:
        proc.join(kill_after)
        if proc.is_alive():
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
    proc.join(60)
    if killed and proc.exitcode == 0:
        killed = False  # it finished between the liveness check and the signal: a finished run
    assert proc.exitcode == (-signal.SIGKILL if killed else 0), proc.exitcode
    return killed


def losses(out: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k not in TIMING} for e in read_events(out / "metrics.jsonl")]


def final_weights(out: Path) -> dict[str, bytes]:
    ck = read_checkpoint(out)
    assert ck.step == STEPS
    return {k: v.tobytes() for k, v in ck.model.items()}


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # one step here first, so the forked children inherit compiled (numba) kernels instead of each
    # spending its first second compiling them
    build(tmp_path_factory.mktemp("warm") / "run", 1).train()
    out = tmp_path_factory.mktemp("straight") / "run"
    assert not run_forked(out, None)
    return out


def check_intact(out: Path) -> None:
    """After a kill: `latest` (when written) names a checkpoint that verifies and reads."""
    if (out / "checkpoints" / "latest").is_file():
        ck = read_checkpoint(out)
        assert ck.step >= 1


def test_sigkill_at_random_points_then_resume_matches_a_straight_run(straight: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    out = tmp_path / "run"
    t0 = time.perf_counter()
    assert not run_forked(tmp_path / "timing", None)
    duration = time.perf_counter() - t0  # one whole run, to spread the kill points over it
    kills = torn = 0
    steps_done = []
    while kills < FORK_KILLS:
        if run_forked(out, float(rng.uniform(0.0, duration / 4))):
            kills += 1
            torn += any(p.name.endswith(".tmp") for p in (out / "checkpoints").glob(".step-*"))
            # (the next checkpoint written removes such leftovers, so this counts this kill's)
            check_intact(out)
            steps_done.append(read_checkpoint(out).step if (out / "checkpoints" / "latest").is_file() else 0)
        else:  # the run finished before the kill: compare it, and start the next one afresh
            assert losses(out) == losses(straight)
            assert final_weights(out) == final_weights(straight)
            (out / "checkpoints" / "latest").unlink()
    run_forked(out, None)
    assert losses(out) == losses(straight)
    assert final_weights(out) == final_weights(straight)
    assert not list((out / "checkpoints").glob(".step-*"))  # the leftovers of killed writes are gone
    print(f"{kills} SIGKILLs, {torn} left a half-written checkpoint folder behind; latest step {steps_done}")
    assert torn > 0  # some kills did land in the middle of a checkpoint write


def test_sigkill_of_a_fresh_interpreter_then_resume(straight: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    for _ in range(SCRIPT_KILLS):
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), str(out), str(STEPS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
        time.sleep(float(rng.uniform(0.05, 0.6)))
        proc.kill()
        proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        check_intact(out)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), str(STEPS)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert losses(out) == losses(straight)
    assert final_weights(out) == final_weights(straight)
    assert load_safetensors(out / "checkpoints" / f"step-{STEPS}" / "model.safetensors")
