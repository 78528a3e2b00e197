"""Import numba and compile a kernel module's loops on first use, once, from any thread.

numba costs about a second to import, so entrenar does not import it until a fused kernel is first
asked for; a module's `_load()` then says why its kernels are unavailable, or None when they run.

A kernel module declares what to compile, and `compile_on_first_use` makes its `_load` from that:

    _load = compile_on_first_use(
        globals(),
        jit_group("_helper", inline="always"),    # names in this module, njit options
        jit_group("_fwd_loop", "_bwd_loop"),
        needs=(vmath.load,),                      # other modules compiled first
        bind={"_exp32": lambda: vmath.exp32},     # ... whose compiled functions the loops call
    )
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable
from typing import Any

__all__ = ["compile_on_first_use", "import_numba", "jit", "jit_group", "once", "probes"]


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


Group = tuple[tuple[str, ...], dict[str, Any]]


def jit_group(*names: str, **opts: Any) -> Group:
    """Functions of a kernel module to compile with the same numba options (see `jit`)."""
    return names, opts


def compile_on_first_use(
    namespace: dict[str, Any],
    *groups: Group,
    needs: tuple[Callable[[], str | None], ...] = (),
    bind: dict[str, Callable[[], Any]] | None = None,
) -> Callable[[], str | None]:
    """A kernel module's `_load` (an `once`). Its first call imports numba, runs each of `needs` (other
    modules' loads; the first reason one gives is returned), sets each name of `bind` in namespace to
    what its callable returns (a function those modules compiled), and replaces each function named
    in `groups` by its compilation, `jit(numba, fn, **opts)`. numba compiles a function on its first
    call, per argument types, and a loop then finds the compiled helpers it calls in namespace. The
    groups may name functions defined further down the module: nothing is looked up before that call."""

    def compile_all() -> str | None:
        numba, reason = import_numba()
        if reason is not None:
            return reason
        for load in needs:
            reason = load()
            if reason is not None:
                return reason
        for name, compiled in (bind or {}).items():
            namespace[name] = compiled()
        for names, opts in groups:
            for name in names:
                if not callable(namespace.get(name)):
                    raise NameError(f"{namespace.get('__name__')} has no function {name!r} to compile")
                namespace[name] = jit(numba, namespace[name], **opts)
        return None

    return once(compile_all)


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
