"""entrenar.kernels picks the fused kernel when it accepts the arrays, the reference otherwise."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import entrenar.kernels as K
from entrenar.kernels import optim_fused, optim_reference

ADAM = {
    "step": 3,
    "lr": 1e-2,
    "beta1": 0.9,
    "beta2": 0.999,
    "eps": 1e-8,
    "weight_decay": 0.01,
    "decoupled": True,
    "amsgrad": False,
    "maximize": False,
}


def _spy(monkeypatch: pytest.MonkeyPatch, module: Any, calls: list[str], tag: str) -> None:
    original = module.adam_step

    def spy(*a: Any, **k: Any) -> None:
        calls.append(tag)
        original(*a, **k)

    monkeypatch.setattr(module, "adam_step", spy)


def _arrays(contiguous: bool) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    base = [rng.standard_normal((6, 8)).astype(np.float32) for _ in range(4)]
    base[3] = np.abs(base[3])  # exp_avg_sq is non-negative
    if contiguous:
        return base
    return [np.asfortranarray(a) for a in base]  # F-ordered 2-D arrays are not C-contiguous


@pytest.mark.skipif(
    not optim_fused.available(), reason="numba unavailable: " + str(optim_fused.unavailable_reason())
)
@pytest.mark.parametrize("contiguous", [True, False])
def test_dispatch_and_equal_results(monkeypatch: pytest.MonkeyPatch, contiguous: bool) -> None:
    assert optim_fused.available(), optim_fused.unavailable_reason()  # numba is a dependency
    calls: list[str] = []
    _spy(monkeypatch, optim_fused, calls, "fused")
    _spy(monkeypatch, optim_reference, calls, "reference")
    p, g, m, v = _arrays(contiguous)
    expected = [a.copy() for a in (p, m, v)]
    optim_reference.adam_step(expected[0], g, expected[1], expected[2], None, **ADAM)
    calls.clear()
    K.adam_step(p, g, m, v, None, **ADAM)
    assert calls == (["fused"] if contiguous else ["reference"])
    for got, want in zip((p, m, v), expected, strict=True):
        np.testing.assert_array_equal(got, want)
