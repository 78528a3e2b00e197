"""entrenar.runtime.keep_freed_memory: freed memory stays with the process, so a training step's
activations do not come back as fresh (page-faulting) pages every step. Each case runs in its own
interpreter: the setting is process-wide and would outlive the test."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from entrenar.runtime import keep_freed_memory

STEPS = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    from entrenar.runtime import keep_freed_memory
    applied = keep_freed_memory() if sys.argv[1] == "keep" else None
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    def step():  # a forward pass's worth of 4 MB activations, all written, then all freed
        acts = [np.ones(1 << 20, dtype=np.float32) for _ in range(12)]
        del acts
    step()
    step()
    before = faults()
    for _ in range(5):
        step()
    print(applied, (faults() - before) / 5)
    """
)


def _faults_per_step(mode: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True, check=True)
    applied, per_step = out.stdout.split()
    return applied, float(per_step)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_activations_are_reused_without_page_faults() -> None:
    # 12 arrays of 4 MB are 12,288 pages a step: by default glibc returns most of them to the kernel
    # when they are freed (the free top of its heap passes the trim threshold), and the next step
    # faults them in again (about half of them, measured: 6,124 a step)
    applied, kept = _faults_per_step("keep")
    _, default = _faults_per_step("default")
    assert applied == "True"
    assert default > 12_288 / 4, default
    assert kept < 100, kept


@pytest.mark.parametrize("bad", [0, -1, 1 << 31, 2.5, True, "1GB"])
def test_bad_sizes_are_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="keep_bytes must be a positive int below 2"):
        keep_freed_memory(bad)  # type: ignore[arg-type]


def test_the_entrenar_script_keeps_freed_memory_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """`entrenar` (and `python -m entrenar`) owns its process: it applies the setting before running
    the command; `cli.main`, which programs and tests call, does not."""
    import entrenar.cli as cli

    calls: list[str] = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append("keep") or True)
    monkeypatch.setattr(cli, "main", lambda: calls.append("main") or 2)
    with pytest.raises(SystemExit) as exit_info:
        cli.entry()
    assert exit_info.value.code == 2
    assert calls == ["keep", "main"]
