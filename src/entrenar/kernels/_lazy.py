"""Import numba and compile a kernel module's loops on first use, once, from any thread.

numba costs about a second to import, so entrenar does not import it until a fused kernel is first
asked for; a module's `_load()` then says why its kernels are unavailable, or None when they run.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable
from typing import Any

__all__ = ["import_numba", "jit", "once", "probes"]


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


def probes(load: Callable[[], str | None]) -> tuple[Callable[[], bool], Callable[[], str | None]]:
    """A kernel module's `available()` and `unavailable_reason()`, both asking its `load` (an `once`)."""

    def available() -> bool:
        """True when the kernels can run: numba imports and JIT compilation is on (the first call
        imports numba and compiles the module's loops, or loads them from numba's cache)."""
        return load() is None

    def unavailable_reason() -> str | None:
        """Why `available()` is False, or None when it is True."""
        return load()

    return available, unavailable_reason


def jit(numba: Any, fn: Callable[..., Any], **opts: Any) -> Any:
    """`fn` compiled by numba.njit with NumPy's float error model, cached on disk where possible.

    error_model="numpy": a float division by zero gives inf/nan as in NumPy instead of raising, which
    also keeps that check's branch out of the loops. No fastmath unless a kernel asks for it: the
    kernels must round as their NumPy references do. Without a writable cache location (a read-only
    install, no home) each process compiles.

    numba's on-disk cache keys a compiled function by its qualified name, bytecode, closure values and
    argument types, not by the `parallel` option: the serial and the parallel compilation of one
    function would share a cache entry, and whichever was compiled first would serve both. A parallel
    compilation therefore gets its own qualified name (`fn.__qualname__` + ".parallel").
    """
    if opts.get("parallel"):
        fn = _renamed(fn, f"{fn.__qualname__}.parallel")
    try:
        return numba.njit(cache=True, error_model="numpy", **opts)(fn)
    except RuntimeError:
        return numba.njit(cache=False, error_model="numpy", **opts)(fn)


def _renamed(fn: Callable[..., Any], qualname: str) -> Callable[..., Any]:
    """A copy of the Python function fn (same code, globals, defaults and closure) under another qualname."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__qualname__ = qualname
    copy.__kwdefaults__ = fn.__kwdefaults__
    copy.__module__ = fn.__module__
    return copy
