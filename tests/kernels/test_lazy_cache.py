"""entrenar.kernels._lazy.jit: the serial and the parallel compilation of a loop never share numba's cache."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from entrenar.kernels._lazy import import_numba, jit

MODULE = textwrap.dedent(
    """
    import sys
    import numpy as np
    import numba
    from entrenar.kernels._lazy import jit

    def loop(out):
        for i in numba.prange(out.size):
            out[i] = numba.get_thread_id()

    serial, parallel = jit(numba, loop), jit(numba, loop, parallel=True)
    a, b = np.zeros(4096, np.int64), np.zeros(4096, np.int64)
    parallel(b)  # first: a serial loop loaded from the cache needs the threading layer for get_thread_id
    serial(a)
    print(int(a.max()), int(b.max()), parallel.py_func.__qualname__)
    """
)


@pytest.mark.skipif(import_numba()[0] is None, reason="numba unavailable")
def test_serial_and_parallel_compilations_are_cached_apart(tmp_path: Path) -> None:
    (tmp_path / "loops.py").write_text(MODULE)
    env = {**os.environ, "NUMBA_NUM_THREADS": "2", "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    runs = [
        subprocess.run(
            [sys.executable, "-c", "import loops"], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=300, check=True,
        ).stdout.split()
        for _ in range(2)  # the first compiles and caches both, the second loads both from the cache
    ]  # fmt: skip
    assert any(tmp_path.glob("cache/**/*.nbi"))
    for serial_max, parallel_max, name in runs:
        assert serial_max == "0", "the serial loop ran on several threads"
        assert parallel_max == "1", "the parallel loop ran on one thread"
        assert name == "loop.parallel"


def test_jit_keeps_the_function_when_serial() -> None:
    numba, _ = import_numba()
    if numba is None:
        pytest.skip("numba unavailable")

    def f(x: int) -> int:
        return x + 1

    assert jit(numba, f).py_func is f
    assert jit(numba, f, parallel=True).py_func.__qualname__.endswith("f.parallel")
