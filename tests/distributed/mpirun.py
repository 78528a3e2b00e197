"""Run a program as N MPI ranks on this machine, over loopback only, with a timeout (for the tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from entrenar.distributed.launch import LOOPBACK_ENV, find_mpiexec, ranks_command

HERE = Path(__file__).resolve().parent
TIMEOUT_S = 240


def mpirun(
    nproc: int, program: Sequence[str], *, timeout: float = TIMEOUT_S, cwd: Path | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    """(the finished launcher, its wall seconds); `program` is an argv, e.g. [python, script, ...]."""
    command = ranks_command(nproc, list(program), mpiexec=find_mpiexec())
    env = {**os.environ, **LOOPBACK_ENV}
    t0 = time.perf_counter()
    done = subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    return done, time.perf_counter() - t0


def python_script(name: str, *args: str) -> list[str]:
    """argv running this folder's script `name` with the test interpreter."""
    return [sys.executable, str(HERE / name), *args]
