"""entrenar.kernels._lazy.compile_on_first_use: what a kernel module declares is compiled on the first
call only, after the modules it needs; a reason from one of them is passed on and nothing compiles."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from entrenar.kernels._lazy import compile_on_first_use, jit_group

SOURCE = """
def helper(x):
    return x * 2.0 + offset()

def loop(a, out):
    for i in range(a.size):
        out[i] = helper(a[i])

def offset():  # replaced through `bind`
    raise AssertionError("the bound function must replace this one")
"""


def _namespace() -> dict[str, Any]:
    """A stand-in kernel module's globals: its functions look each other up there, as a module's do."""
    ns: dict[str, Any] = {"__name__": "fake_kernels"}
    exec(compile(SOURCE, "fake_kernels.py", "exec"), ns)
    return ns


def test_compiles_groups_and_binds_on_first_call_only() -> None:
    ns = _namespace()
    needs_calls: list[int] = []

    def need() -> str | None:
        needs_calls.append(1)
        return None

    import numba

    one = numba.njit(lambda: 1.0)
    load = compile_on_first_use(
        ns,
        jit_group("helper", inline="always"),
        jit_group("loop"),
        needs=(need,),
        bind={"offset": lambda: one},
    )
    python_loop = ns["loop"]
    assert ns["loop"] is python_loop  # nothing happens before the first call
    assert load() is None and load() is None
    assert needs_calls == [1]
    assert ns["loop"] is not python_loop and ns["loop"].py_func is python_loop
    assert ns["offset"] is one
    out = np.empty(3)
    ns["loop"](np.arange(3.0), out)
    np.testing.assert_array_equal(out, [1.0, 3.0, 5.0])
    assert ns["helper"].py_func is not None and ns["helper"].targetoptions["inline"] == "always"


def test_a_needed_module_reason_is_returned_and_nothing_compiles() -> None:
    ns = _namespace()
    python_loop = ns["loop"]
    load = compile_on_first_use(ns, jit_group("loop"), needs=(lambda: "vmath is unavailable",))
    assert load() == "vmath is unavailable"
    assert ns["loop"] is python_loop


def test_a_misspelled_name_is_an_error_naming_it() -> None:
    load = compile_on_first_use(_namespace(), jit_group("lopo"))
    with pytest.raises(NameError, match=r"fake_kernels has no function 'lopo'"):
        load()
