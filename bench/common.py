"""Shared benchmark helpers: timing (warm-up, repeats, median), the BLAS in use, JSON results.

Benchmarks print ratios against PyTorch measured in the same process, never absolute goals that a
machine could pass or fail by luck; the JSON written under bench/results/ is for tables and diffs.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


@dataclass(frozen=True)
class Timing:
    """Seconds per call: median and spread over `repeats` samples of `inner` calls each."""

    median_s: float
    p10_s: float
    p90_s: float
    repeats: int
    inner: int

    @property
    def median_us(self) -> float:
        return self.median_s * 1e6

    @property
    def median_ms(self) -> float:
        return self.median_s * 1e3


def measure(fn: Callable[[], Any], *, repeats: int = 50, inner: int = 1, warmup: int = 5) -> Timing:
    """Time `fn()`: `warmup` untimed calls, then `repeats` samples of `inner` back-to-back calls.

    Each sample is divided by `inner`, so tiny workloads can be timed in groups that dwarf the timer's
    own cost; the median of the samples resists the odd slow one (a page fault, another process).
    """
    for _ in range(warmup):
        fn()
    samples = []
    clock = time.perf_counter
    for _ in range(repeats):
        t0 = clock()
        for _ in range(inner):
            fn()
        samples.append((clock() - t0) / inner)
    samples.sort()
    q = statistics.quantiles(samples, n=10) if len(samples) >= 2 else [samples[0]] * 9
    return Timing(statistics.median(samples), q[0], q[-1], repeats, inner)


def blas_info() -> dict[str, Any]:
    """The BLAS kernels NumPy (and anything else loaded) uses, and the OpenBLAS tuning variables."""
    from threadpoolctl import threadpool_info

    pools = [
        {
            "internal_api": p.get("internal_api"),
            "architecture": p.get("architecture"),
            "num_threads": p.get("num_threads"),
            "version": p.get("version"),
            "filepath": Path(p.get("filepath", "")).name,
        }
        for p in threadpool_info()
    ]
    env = {k: os.environ.get(k) for k in BLAS_ENV}
    return {"threadpools": pools, "env": env}


def numpy_blas_threads() -> int:
    """Threads of the BLAS NumPy is linked to (what torch.set_num_threads should match)."""
    import numpy  # noqa: F401 - loads the BLAS so that threadpoolctl sees it
    from threadpoolctl import threadpool_info

    for p in threadpool_info():
        if p.get("user_api") == "blas" and "numpy" in p.get("filepath", ""):
            return int(p["num_threads"])
    return os.cpu_count() or 1


def print_header(title: str) -> dict[str, Any]:
    """Print what the numbers depend on: Python, NumPy, torch, BLAS kernels and threads, env."""
    import numpy as np

    info = blas_info()
    print(f"== {title}")
    print(f"   python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs")
    for p in info["threadpools"]:
        print(f"   {p['internal_api']:<9} {p['architecture'] or '-':<12} threads {p['num_threads']}  "
              f"({p['filepath']}, {p['version']})")
    env = ", ".join(f"{k}={v if v is not None else '(unset)'}" for k, v in info["env"].items())
    print(f"   {env}")
    return info


def label() -> str:
    """'asis' when the OpenBLAS tuning variables are set as the environment has them, else 'unset'."""
    return "unset" if all(os.environ.get(k) is None for k in BLAS_ENV) else "asis"


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """Write payload as bench/results/<name>.json atomically (temp file in the same folder, replace)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=RESULTS_DIR)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True, default=_jsonable)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Timing):
        return asdict(obj)
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def require_torch() -> Any:
    """Import torch (the oracle) or exit with a message saying how to install it."""
    try:
        import torch
    except ImportError:
        sys.exit("this benchmark compares against PyTorch: pip install 'entrenar[bench]'")
    return torch
