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


@pytest.mark.parametrize("amsgrad", [False, True])
def test_group_update_splits_fused_and_reference(monkeypatch: pytest.MonkeyPatch, amsgrad: bool) -> None:
    """adam_steps / sgd_steps: the arrays the kernel takes go to it in one call, the others to the
    reference one by one; every result equals the reference's."""
    calls: list[Any] = []
    fused_steps, ref_step = optim_fused.adam_steps, optim_reference.adam_step

    def fused(updates: Any, **k: Any) -> None:
        calls.append(("fused", len(updates)))
        fused_steps(updates, **k)

    def reference(*a: Any, **k: Any) -> None:
        calls.append("reference")
        ref_step(*a, **k)

    monkeypatch.setattr(optim_fused, "adam_steps", fused)
    monkeypatch.setattr(optim_reference, "adam_step", reference)
    hyper = {k: v for k, v in ADAM.items() if k != "step"} | {"amsgrad": amsgrad}
    groups = [_arrays(True), _arrays(False), _arrays(True)]
    want = []
    for p, g, m, v in groups:
        w = [a.copy() for a in (p, m, v, v)]
        ref_step(w[0], g, w[1], w[2], w[3] if amsgrad else None, step=3, **hyper)
        want.append(w)
    K.adam_steps([(p, g, m, v, v.copy() if amsgrad else None, 3) for p, g, m, v in groups], **hyper)
    assert calls == [("fused", 2), "reference"]
    for (p, _, m, v), w in zip(groups, want, strict=True):
        for got, exp in zip((p, m, v), w[:3], strict=True):
            np.testing.assert_array_equal(got, exp)


def test_sgd_group_update_equals_reference() -> None:
    hyper = {"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "nesterov": True, "weight_decay": 0.01,
             "maximize": False}  # fmt: skip
    groups = [_arrays(True)[:3], _arrays(False)[:3]]
    want = []
    for p, g, b in groups:
        w = [p.copy(), b.copy()]
        optim_reference.sgd_step(w[0], g, w[1], first_step=False, **hyper)
        want.append(w)
    K.sgd_steps([(p, g, b, False) for p, g, b in groups], **hyper)
    for (p, _, b), (wp, wb) in zip(groups, want, strict=True):
        np.testing.assert_array_equal(p, wp)
        np.testing.assert_array_equal(b, wb)
