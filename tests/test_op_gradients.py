"""Every registered op, every spec case: analytic gradients equal finite differences (float64)."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import pytest
from cases import all_cases, case_ids, entrenar_inputs, materialize, outputs

import entrenar.functional as F
from entrenar import Tensor, gradcheck
from entrenar.autograd.registry import OPS, PUBLIC, SPECS


def _check(name: str, index: int, dtype: Any, mode: str) -> None:
    m = materialize(name, index, dtype)
    args, kwargs, leaves = entrenar_inputs(m)
    if not leaves:
        pytest.fail(f"{name} case {index} has no differentiable input to check")
    flat: list[Any] = []
    slots: list[tuple[int, int | None]] = []  # where each leaf sits: (arg index, list index)
    for i, a in enumerate(args):
        if isinstance(a, Tensor) and a.requires_grad:
            slots.append((i, None))
            flat.append(a)
        elif isinstance(a, (list, tuple)):
            for j, e in enumerate(a):
                if isinstance(e, Tensor) and e.requires_grad:
                    slots.append((i, j))
                    flat.append(e)

    def fn(*xs: Tensor) -> Any:
        call = list(args)
        for (i, j), x in zip(slots, xs, strict=True):
            if j is None:
                call[i] = x
            else:  # a leaf inside a list or tuple argument (cat's tensors): keep the container type
                items = list(call[i])
                items[j] = x
                call[i] = type(call[i])(items)
        kw = dict(kwargs)
        for k, v in kw.items():  # fresh generators so every evaluation draws the same numbers
            if isinstance(v, np.random.Generator):
                kw[k] = np.random.default_rng(0)
        return PUBLIC[name](*call, **kw)

    spec = SPECS[name]
    if mode == "float64":
        assert gradcheck(fn, flat, eps=spec.eps, atol=spec.atol, rtol=spec.rtol)
    else:
        assert gradcheck(fn, flat, mode="float32")


@pytest.mark.parametrize(("name", "index"), list(all_cases()), ids=case_ids())
def test_gradcheck_float64(name: str, index: int) -> None:
    _check(name, index, np.float64, "float64")


@pytest.mark.parametrize(("name", "index"), list(all_cases()), ids=case_ids())
def test_gradcheck_float32_original_scheme(name: str, index: int) -> None:
    """The original entrenar check: float32 inputs, eps 1e-3, relative error below 0.2."""
    _check(name, index, np.float32, "float32")


def test_every_public_function_has_a_spec() -> None:
    missing = [n for n in F.__all__ if n not in SPECS]
    assert not missing, f"public ops without a test spec: {missing}"
    unexported = [n for n, s in SPECS.items() if n not in importlib.import_module(s.module).__all__]
    assert not unexported, f"specs for functions that their module does not export: {unexported}"


def test_every_primitive_is_exercised_by_a_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every spec case forward and backward once and record which primitives' backward ran."""
    ran: set[str] = set()
    for op in OPS.values():
        original = op.backward

        def spy(*a: Any, _op: Any = op, _orig: Any = original) -> Any:
            ran.add(_op.name)
            return _orig(*a)

        monkeypatch.setattr(op, "backward", spy)
    for name, index in all_cases():
        m = materialize(name, index)
        result, _ = _call(m)
        for o in outputs(result):
            if isinstance(o, Tensor) and o.requires_grad:
                o.backward(np.ones(o.shape), retain_graph=True)
    missing = sorted(set(OPS) - ran)
    assert not missing, f"primitives whose backward no spec case reaches: {missing}"


def _call(m: Any) -> Any:
    args, kwargs, leaves = entrenar_inputs(m)
    return PUBLIC[m.spec.name](*args, **kwargs), leaves
