"""clip_grad_norm_ and clip_grad_value_ against torch.nn.utils."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from optim_helpers import SHAPES, make_params

from entrenar import Tensor
from entrenar.optim import clip_grad_norm_, clip_grad_value_


def _with_grads(scale: float, seed: int = 0, dtype: type = np.float64) -> tuple[list[Tensor], list[Any]]:
    ours, theirs = make_params(SHAPES, seed=seed, dtype=dtype)
    rng = np.random.default_rng(seed + 1)
    for p, q in zip(ours, theirs, strict=True):
        g = np.asarray(rng.standard_normal(p.shape) * scale, dtype=dtype)
        p.grad = g.copy()
        q.grad = torch.tensor(g.copy())
    return ours, theirs


def _grads_close(ours: list[Tensor], theirs: list[Any], rtol: float = 1e-12) -> None:
    for p, q in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(p.grad, q.grad.numpy(), rtol=rtol, atol=0)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.5, 0.5, math.inf, "inf"])
@pytest.mark.parametrize("max_norm", [0.3, 1e3])
def test_clip_grad_norm_matches_torch(norm_type: Any, max_norm: float) -> None:
    ours, theirs = _with_grads(2.0)
    total = clip_grad_norm_(ours, max_norm, norm_type=norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type=norm_type, foreach=False)
    assert isinstance(total, float)
    np.testing.assert_allclose(total, ttotal.item(), rtol=1e-12)
    _grads_close(ours, theirs)
    after = math.inf if norm_type == "inf" else float(norm_type)
    new_total = clip_grad_norm_(ours, 1e9, norm_type=after)
    assert new_total <= max_norm * (1 + 1e-12) or max_norm > total


def test_clip_is_global_over_all_parameters() -> None:
    """The norm is that of all gradients concatenated, and one common factor scales them all."""
    ours, _ = _with_grads(1.0)
    flat = np.concatenate([p.grad.ravel() for p in ours])  # type: ignore[union-attr]
    total = clip_grad_norm_(ours, 0.5)
    assert total == pytest.approx(np.linalg.norm(flat), rel=1e-13)
    np.testing.assert_allclose(
        np.concatenate([p.grad.ravel() for p in ours]),  # type: ignore[union-attr]
        flat * (0.5 / (total + 1e-6)),
        rtol=1e-14,
    )


def test_clip_grad_norm_float32_keeps_dtype_and_matches_torch() -> None:
    ours, theirs = _with_grads(3.0, dtype=np.float32)
    total = clip_grad_norm_(ours, 1.0)
    ttotal = torch.nn.utils.clip_grad_norm_(theirs, 1.0, foreach=False)
    assert total == pytest.approx(ttotal.item(), rel=1e-6)
    for p in ours:
        assert p.grad is not None and p.grad.dtype == np.float32
    _grads_close(ours, theirs, rtol=1e-6)


def test_params_without_grads_are_skipped_and_a_single_tensor_is_accepted() -> None:
    ours, theirs = _with_grads(1.0)
    ours[1].grad = None
    theirs[1].grad = None
    total = clip_grad_norm_(iter(ours), 0.1)  # a generator, as model.parameters() is
    ttotal = torch.nn.utils.clip_grad_norm_(theirs, 0.1, foreach=False)
    assert total == pytest.approx(ttotal.item(), rel=1e-12)
    _grads_close([p for i, p in enumerate(ours) if i != 1], [q for i, q in enumerate(theirs) if i != 1])
    assert clip_grad_norm_([Tensor(np.zeros(3))], 1.0) == 0.0
    one = Tensor(np.zeros(2), requires_grad=True)
    one.grad = np.array([3.0, 4.0])
    assert clip_grad_norm_(one, 1.0) == 5.0
    np.testing.assert_allclose(one.grad, [3.0 / (5 + 1e-6), 4.0 / (5 + 1e-6)])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_norm_as_torch_or_error(bad: float) -> None:
    ours, theirs = _with_grads(1.0)
    ours[2].grad[0, 0, 0] = bad  # type: ignore[index]
    theirs[2].grad[0, 0, 0] = bad
    total = clip_grad_norm_(ours, 1.0)
    ttotal = torch.nn.utils.clip_grad_norm_(theirs, 1.0, foreach=False)
    np.testing.assert_equal(total, ttotal.item())
    for p, q in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(p.grad, q.grad.numpy())  # NaN where torch has NaN, 0 where 0
    ours, _ = _with_grads(1.0)
    ours[0].grad[0] = bad  # type: ignore[index]
    kept = [p.grad.copy() for p in ours]  # type: ignore[union-attr]
    with pytest.raises(RuntimeError, match="is non-finite"):
        clip_grad_norm_(ours, 1.0, error_if_nonfinite=True)
    for p, g in zip(ours, kept, strict=True):
        np.testing.assert_array_equal(p.grad, g)  # nothing was scaled


def test_clip_grad_value_matches_torch() -> None:
    ours, theirs = _with_grads(2.0)
    ours[0].grad[1] = np.nan  # type: ignore[index]
    theirs[0].grad[1] = np.nan
    clip_grad_value_(ours, 0.7)
    torch.nn.utils.clip_grad_value_(theirs, 0.7, foreach=False)
    for p, q in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(p.grad, q.grad.numpy())
        assert np.nanmax(np.abs(p.grad)) <= 0.7  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda ps: clip_grad_norm_(ps, -1.0), ValueError, "max_norm must be >= 0"),
        (lambda ps: clip_grad_norm_(ps, float("nan")), ValueError, "max_norm must be finite"),
        (lambda ps: clip_grad_norm_(ps, 1.0, norm_type=0), ValueError, "norm_type must be positive or inf"),
        (lambda ps: clip_grad_norm_(ps, 1.0, norm_type=-math.inf), ValueError, "norm_type must be positive"),
        (lambda ps: clip_grad_norm_(ps, 1.0, norm_type="l2"), TypeError, "must be a number or 'inf'"),
        (lambda ps: clip_grad_norm_([ps[0], 3.0], 1.0), TypeError, r"parameters\[1\] must be a Tensor"),
        (lambda ps: clip_grad_norm_(5, 1.0), TypeError, "parameters must be a Tensor or an iterable"),
        (lambda ps: clip_grad_value_(ps, -0.5), ValueError, "clip_value must be >= 0"),
    ],
)
def test_clip_bad_arguments(call: Any, error: type, match: str) -> None:
    ours, _ = _with_grads(1.0)
    with pytest.raises(error, match=match):
        call(ours)
