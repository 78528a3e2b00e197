"""Import numba and compile a kernel module's loops on first use, once, from any thread.

numba costs about a second to import, so entrenar does not import it until a fused kernel is first
asked for; a module's `_load()` then says why its kernels are unavailable, or None when they run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["import_numba", "once"]


def import_numba() -> tuple[Any, str | None]:
    """(numba, None), or (None, the reason the kernels cannot run)."""
    try:
        import numba
    except (ImportError, OSError) as exc:  # OSError: llvmlite's shared library failed to load
        return None, f"numba cannot be imported ({type(exc).__name__}: {exc})"
    if vars(numba.config).get("DISABLE_JIT"):  # set from NUMBA_DISABLE_JIT when numba is imported
        return None, "NUMBA_DISABLE_JIT is set: the kernels would run as (very slow) Python"
    return numba, None


def once(compile_all: Callable[[], str | None]) -> Callable[[], str | None]:
    """`compile_all` run on the first call only; every call returns its result (a reason, or None)."""
    state: dict[str, str | None] = {}
    lock = threading.Lock()

    def load() -> str | None:
        if "reason" not in state:
            with lock:
                if "reason" not in state:
                    state["reason"] = compile_all()
        return state["reason"]

    return load
