"""The public gradcheck: it passes right gradients and catches wrong ones, in both modes."""

from __future__ import annotations

import numpy as np
import pytest

import entrenar as E
import entrenar.functional as F
from entrenar import GradcheckError, Tensor, gradcheck


def _x(dtype: type = np.float64, seed: int = 0) -> Tensor:
    return E.tensor(np.random.default_rng(seed).uniform(0.5, 2.0, (3, 4)), dtype=dtype, requires_grad=True)


def _half_gradient(x: Tensor) -> Tensor:
    # d/dx (x * const(x)) is reported as x, the true derivative of x**2 is 2x
    return x * x.detach()


@pytest.mark.parametrize("mode", ["float64", "float32"])
def test_passes_a_correct_gradient(mode: str) -> None:
    dtype = np.float64 if mode == "float64" else np.float32
    assert gradcheck(lambda a: F.tanh(a) * F.exp(a), [_x(dtype)], mode=mode)


@pytest.mark.parametrize("mode", ["float64", "float32"])
def test_catches_a_wrong_gradient(mode: str) -> None:
    dtype = np.float64 if mode == "float64" else np.float32
    with pytest.raises(GradcheckError, match=r"gradient of input 0 .* analytic .* numeric"):
        gradcheck(_half_gradient, [_x(dtype)], mode=mode)
    assert gradcheck(_half_gradient, [_x(dtype)], mode=mode, raise_exception=False) is False


def test_catches_a_single_wrong_element() -> None:
    x = _x()

    def fn(a: Tensor) -> Tensor:
        mask = np.zeros(a.shape)
        mask[1, 2] = 1.0
        # the (1, 2) element is squared without its gradient being counted twice
        return a * F.where(Tensor(mask.astype(bool)), a.detach(), Tensor(np.ones(a.shape)))

    with pytest.raises(GradcheckError, match=r"at \(1, 2\).*\(1 of 12 elements off\)"):
        gradcheck(fn, [x])


def test_several_inputs_and_outputs() -> None:
    a, b = _x(seed=1), _x(seed=2)
    assert gradcheck(lambda p, q: (p * q, F.sum(p / q, 1)), [a, b])
    with pytest.raises(GradcheckError, match="input 1"):
        gradcheck(lambda p, q: (p * q.detach() * q, p), [a, b])


def test_float64_mode_does_not_touch_the_callers_tensors() -> None:
    x = _x(np.float32)
    before = x.data.copy()
    gradcheck(F.sigmoid, [x])
    assert x.dtype == np.float32 and x.grad is None
    np.testing.assert_array_equal(x.data, before)


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="no input requires grad"):
        gradcheck(F.exp, [E.tensor([1.0, 2.0])])
    with pytest.raises(ValueError, match="mode must be"):
        gradcheck(F.exp, [_x()], mode="float16")
    with pytest.raises(ValueError, match="no floating-point tensor"):
        gradcheck(lambda a: a > 0, [_x()])


def _scaled_half_gradient(a: Tensor) -> Tensor:
    # d/da (64 a * a) is 128 a; reported as 64 a: at a = 1 with eps = 1 every number here is exact
    return a * a.detach() * 64.0


def test_float32_mode_tolerance_is_relative_to_the_larger_gradient_inclusive() -> None:
    """analytic 64 w, numeric 128 w: |diff| = 64 |w| = 0.5 * max(|analytic|, |numeric|) exactly. With
    rtol 0.5 and atol 0 that is on the boundary, which passes (|diff| > tol fails, not >=)."""
    x = E.tensor(np.array([1.0]), dtype=np.float32, requires_grad=True)
    assert gradcheck(_scaled_half_gradient, [x], mode="float32", eps=1.0, rtol=0.5, atol=0.0)
    assert not gradcheck(
        _scaled_half_gradient, [x], mode="float32", eps=1.0, rtol=0.49, atol=0.0, raise_exception=False
    )


def test_float32_mode_absolute_tolerance_is_inclusive() -> None:
    """The same |diff| = 64 |w| (w: the weight gradcheck projects with, read back as the gradient of
    the identity) exactly at atol, with rtol 0: passes; just under it: fails."""
    seen: list[Tensor] = []

    def identity(a: Tensor) -> Tensor:
        seen.append(a)
        return a * 1.0

    x = E.tensor(np.array([1.0]), dtype=np.float32, requires_grad=True)
    gradcheck(identity, [x], mode="float32")
    assert seen[0].grad is not None
    w = float(np.abs(seen[0].grad[0]))  # the projection weight of the first (only) output element
    assert w > 1e-3
    assert gradcheck(_scaled_half_gradient, [x], mode="float32", eps=1.0, rtol=0.0, atol=64 * w)
    assert not gradcheck(
        _scaled_half_gradient, [x], mode="float32", eps=1.0, rtol=0.0, atol=63.9 * w, raise_exception=False
    )
