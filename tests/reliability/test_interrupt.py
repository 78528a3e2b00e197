"""Ctrl-C, sent as a real SIGINT to a real process: the first one finishes the step, writes a checkpoint
and exits with status 130 saying how to resume (and the resumed run ends as a straight one); a second
one exits at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cli.tiny_run import TinySetup
from fault_run import build

from entrenar.train import read_checkpoint, read_events

SCRIPT = Path(__file__).with_name("fault_run.py")
STEPS = 12
TIMING = ("elapsed", "samples_per_s")


def start(*args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return proc


def wait_started(proc: subprocess.Popen[str]) -> None:
    assert proc.stdout is not None and proc.stdout.readline().strip() == "started"


def events(out: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in e.items() if k not in TIMING} for e in read_events(out / "metrics.jsonl")]


def test_ctrl_c_checkpoints_the_step_and_the_resumed_run_matches(tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    build(straight, STEPS, save_every=100).train()
    out = tmp_path / "run"
    proc = start(str(SCRIPT), str(out), str(STEPS), "--sleep", "0.05", "--save-every", "100")
    wait_started(proc)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "resume=True" in err and "Traceback" not in err
    ck = read_checkpoint(out)
    assert 0 < ck.step < STEPS  # a checkpoint of the step it stopped at, though save_every is 100
    assert max(e["step"] for e in read_events(out / "metrics.jsonl")) <= ck.step
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(out), str(STEPS), "--save-every", "100"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert events(out) == events(straight)
    final, reference = read_checkpoint(out), read_checkpoint(straight)
    assert final.step == reference.step == STEPS
    assert {k: v.tobytes() for k, v in final.model.items()} == {
        k: v.tobytes() for k, v in reference.model.items()
    }


def test_a_second_ctrl_c_exits_at_once(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = start(str(SCRIPT), str(out), str(STEPS), "--sleep", "30")  # one micro-batch: 30 s
    wait_started(proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    assert time.perf_counter() - t0 < 10  # not waiting for the step to end
    assert proc.returncode == 130, err
    assert "interrupted twice" in err
    assert not (out / "checkpoints" / "latest").exists()  # nothing half-written was made current


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_ctrl_c_of_entrenar_train_says_how_to_resume(tmp_path: Path) -> None:
    tiny = TinySetup(tmp_path)
    config = tiny.config(training={"max_steps": 100000, "save_every": 100000, "eval_every": 100000})
    proc = start("-m", "entrenar", "train", str(config))
    metrics = tiny.run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while not metrics.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metrics.is_file(), proc.communicate()[1]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    ck = read_checkpoint(tiny.run_dir)
    assert 0 < ck.step < 100000
