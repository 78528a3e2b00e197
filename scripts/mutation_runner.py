"""The process side of scripts/mutate.py: a snapshot of the repository, one copy of it per worker, and
forked pytest runs against a mutated copy, under a CPU-time limit.

`snapshot` copies src/, tests/ and pyproject.toml once, so that edits made during a run do not mix into
it; `Runner` keeps up to one forked pytest child per worker copy, writes a `Job`'s mutant into that copy,
runs its stages in order (stopping at the first failure) and restores the file. A stage's timeout counts
CPU seconds (RLIMIT_CPU in the child); one still running after WALL_FACTOR times as many wall-clock
seconds is killed too. Which mutants and which tests is mutate.py's business; it imports these.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import resource
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mutants import Mutant, apply

ROOT = Path(__file__).resolve().parent.parent
WALL_FACTOR = 10  # a stage is killed after this many times its CPU timeout in wall-clock seconds
KILLER = "first-failure"  # in a worker's folder: the node id of the test that killed its mutant


PYTEST_ARGS = ["-x", "-q", "--no-header", "-p", "no:cacheprovider", "-o", "addopts=", "--hypothesis-seed=0"]


def preload() -> None:
    """Import the heavy third-party modules once, in this process, so that each forked test run starts
    warm. entrenar itself must not be imported here: every child imports its own (mutated) copy."""
    for name in ("numpy", "scipy", "torch", "pytest", "hypothesis", "threadpoolctl", "safetensors",
                 "transformers", "peft"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    assert "entrenar" not in sys.modules, "the mutation runner must not import entrenar itself"


class _FirstFailure:
    """pytest plugin (in the child): writes the node id of the first failing test or collection."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _note(self, report: Any) -> None:
        if report.failed and not self.path.exists():
            self.path.write_text(report.nodeid or "<collection>")

    def pytest_runtest_logreport(self, report: Any) -> None:
        self._note(report)

    def pytest_collectreport(self, report: Any) -> None:
        self._note(report)


def _child(src: Path, tests: list[str]) -> None:
    """In the forked child: run pytest on `tests` in the worker's tree (`src`'s parent, a snapshot of the
    repository), with `src` first on sys.path, then exit."""
    try:
        os.chdir(src.parent)
        sys.path.insert(0, str(src))
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        import pytest

        rc = int(pytest.main([*PYTEST_ARGS, *tests], plugins=[_FirstFailure(src.parent / KILLER)]))
    except BaseException:
        rc = 3
    os._exit(rc)


@dataclass
class Job:
    """One mutant (None: the unmutated code) and the pytest runs it still faces, in order; it survives only
    if it passes all of them. `fallback` replaces them when pytest finds none of the named tests (exit 4
    or 5: node ids from a map older than the tests)."""

    mutant: Mutant | None
    runs: list[list[str]]
    via: str = "stages"
    fallback: list[list[str]] = field(default_factory=list)
    tests: int = 0
    src: Path = ROOT  # the worker's copy of src/, set when the job starts
    original: str | None = None
    t0: float = 0.0
    stage_start: float = 0.0
    killed: bool = False
    cpu: float = 0.0  # CPU seconds of its test runs (user + system): comparable on a loaded machine


class Runner:
    """Up to `workers` forked pytest runs at once, each on its own copy of src/ with one mutant."""

    def __init__(self, workdirs: list[Path], timeout: float) -> None:
        """`timeout`: CPU seconds a test run (stage) may take; WALL_FACTOR times that in wall seconds."""
        self.free = list(workdirs)
        self.timeout = timeout
        self.running: dict[int, Job] = {}

    def start(self, job: Job) -> None:
        job.src = self.free.pop()
        m = job.mutant
        if m is not None:
            target = job.src.parent / m.file
            job.original = target.read_text()
            target.write_text(apply(job.original, m))
        (job.src.parent / KILLER).unlink(missing_ok=True)
        job.t0 = time.perf_counter()
        self._fork(job)

    def _fork(self, job: Job) -> None:
        job.tests = len(job.runs[0])
        pid = os.fork()
        if pid == 0:
            limit = max(1, math.ceil(self.timeout))
            resource.setrlimit(resource.RLIMIT_CPU, (limit, limit + 5))  # SIGXCPU, then SIGKILL
            _child(job.src, job.runs[0])
        job.runs = job.runs[1:]
        job.stage_start = time.perf_counter()  # the timeout is per stage
        self.running[pid] = job

    def wait_one(self) -> tuple[Job, str, float, str | None]:
        """Block until a job ends: (job, 'passed' | 'failed' | 'timeout', seconds, first failing test)."""
        while True:
            now = time.perf_counter()
            for pid, job in self.running.items():
                if not job.killed and now - job.stage_start > WALL_FACTOR * self.timeout:
                    os.kill(pid, signal.SIGKILL)
                    job.killed = True
            pid, status, usage = os.wait4(-1, os.WNOHANG)
            if pid == 0 or pid not in self.running:
                time.sleep(0.05)
                continue
            job = self.running.pop(pid)
            job.cpu += usage.ru_utime + usage.ru_stime
            rc = os.waitstatus_to_exitcode(status)
            if not job.killed and rc in (4, 5) and job.fallback:  # the named tests are gone: run the files
                job.runs, job.fallback, job.via = job.fallback, [], "stages"
                self._fork(job)
                continue
            if rc == 0 and job.runs:  # passed this stage: on to the next, same mutant, same workdir
                self._fork(job)
                continue
            if job.mutant is not None and job.original is not None:
                (job.src.parent / job.mutant.file).write_text(job.original)
            killer_path = job.src.parent / KILLER
            killer = killer_path.read_text() if killer_path.exists() else None
            self.free.append(job.src)
            over_cpu = rc in (-signal.SIGXCPU, -signal.SIGKILL)
            outcome = "timeout" if job.killed or over_cpu else "passed" if rc == 0 else "failed"
            return job, outcome, time.perf_counter() - job.t0, killer

    def stop(self) -> None:
        """Kill and reap the test runs still going (the run was interrupted)."""
        for pid in list(self.running):
            with contextlib.suppress(ProcessLookupError, ChildProcessError):
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            del self.running[pid]


SNAPSHOT = ("src", "tests", "pyproject.toml")  # what the tests need of the repository
_CACHES = shutil.ignore_patterns("*.egg-info", "__pycache__", ".hypothesis", ".pytest_cache")


def snapshot(dest: Path, root: Path = ROOT) -> Path:
    """Copy what the tests need of `root` to `dest`: the run sees one tree however the repository is
    edited meanwhile, and its coverage map, mutants and test ids all agree with that tree."""
    for name in SNAPSHOT:
        if (root / name).is_dir():
            shutil.copytree(root / name, dest / name, ignore=_CACHES)
        elif (root / name).exists():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, dest / name)
    return dest


def make_workdirs(n: int, base: Path, tree: Path) -> list[Path]:
    """`n` copies of the snapshot `tree`, one per worker; their src/ folders."""
    dirs = []
    for i in range(n):
        shutil.copytree(tree, base / f"w{i}")
        dirs.append(base / f"w{i}" / "src")
    return dirs
