"""Losses beyond the spec table: errors, edge cases (all ignored, extreme logits), laws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import given, settings
from hypothesis import strategies as st

import entrenar.functional as F
from entrenar import Tensor


def _t(a: np.ndarray, grad: bool = True) -> Tensor:
    return Tensor(a.copy(), requires_grad=grad)


# ----------------------------------------------------------------------------------- cross_entropy
def test_cross_entropy_mlp_batch_float32_matches_torch() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128, 10)).astype(np.float32) * 3
    y = rng.integers(0, 10, size=128)
    ours = _t(x)
    loss = F.cross_entropy(ours, Tensor(y))
    loss.backward()
    theirs = torch.from_numpy(x.copy()).requires_grad_(True)
    tloss = TF.cross_entropy(theirs, torch.from_numpy(y))
    tloss.backward()
    assert loss.dtype == np.float32 and loss.shape == ()
    assert ours.grad is not None and ours.grad.dtype == np.float32
    np.testing.assert_allclose(loss.data, tloss.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-5, atol=1e-8)  # type: ignore[union-attr]


def test_cross_entropy_extreme_logits_are_finite() -> None:
    x = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0]])
    y = np.array([1, 1])
    ours = _t(x)
    loss = F.cross_entropy(ours, y, label_smoothing=0.1)
    loss.backward()
    theirs = torch.from_numpy(x.copy()).requires_grad_(True)
    tloss = TF.cross_entropy(theirs, torch.from_numpy(y), label_smoothing=0.1)
    tloss.backward()
    np.testing.assert_allclose(loss.data, tloss.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours.grad, theirs.grad.numpy(), rtol=1e-12)  # type: ignore[arg-type,union-attr]


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_all_ignored(reduction: str) -> None:
    x = np.zeros((3, 4))
    y = np.full(3, -100)
    for ours_fn, theirs_fn in [(F.cross_entropy, TF.cross_entropy), (F.nll_loss, TF.nll_loss)]:
        a = _t(x)
        ours = ours_fn(a, y, reduction=reduction)
        b = torch.from_numpy(x.copy()).requires_grad_(True)
        theirs = theirs_fn(b, torch.from_numpy(y), reduction=reduction)
        np.testing.assert_array_equal(ours.data, theirs.detach().numpy())  # nan for mean, as PyTorch
        ours.backward(np.ones(ours.shape))
        theirs.backward(torch.ones(theirs.shape, dtype=torch.float64))
        np.testing.assert_array_equal(a.grad, b.grad.numpy())  # type: ignore[arg-type,union-attr]


def test_cross_entropy_errors() -> None:
    x = Tensor(np.zeros((3, 4)))
    with pytest.raises(TypeError, match="only class-index targets"):
        F.cross_entropy(x, Tensor(np.zeros((3, 4))))
    with pytest.raises(
        ValueError, match=r"cross_entropy: input of shape \(3, 4\) expects a target of shape \(3,\)"
    ):
        F.cross_entropy(x, np.zeros(4, dtype=np.int64))
    with pytest.raises(IndexError, match="cross_entropy: target 4 is out of bounds"):
        F.cross_entropy(x, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match=r"cross_entropy: reduction must be one of .* got 'avg'"):
        F.cross_entropy(x, np.array([0, 1, 1]), reduction="avg")
    with pytest.raises(ValueError, match=r"weight must have shape \(4,\)"):
        F.cross_entropy(x, np.array([0, 1, 1]), weight=np.ones(3))
    with pytest.raises(ValueError, match="label_smoothing"):
        F.cross_entropy(x, np.array([0, 1, 1]), label_smoothing=1.5)
    with pytest.raises(TypeError, match="nll_loss: target must hold class indices"):
        F.nll_loss(x, Tensor(np.zeros(3)))
    with pytest.raises(ValueError, match="nll_loss: reduction"):
        F.nll_loss(x, np.array([0, 1, 1]), reduction="batchmean")


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 5),
    c=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    weighted=st.booleans(),
)
def test_cross_entropy_is_nll_of_log_softmax(
    n: int, c: int, seed: int, reduction: str, weighted: bool
) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c))
    y = rng.integers(-1, c, size=n)
    w = rng.uniform(0.5, 2.0, size=c) if weighted else None
    a, b = _t(x), _t(x)
    fused = F.cross_entropy(a, y, weight=w, ignore_index=-1, reduction=reduction)
    split = F.nll_loss(F.log_softmax(b, 1), y, weight=w, ignore_index=-1, reduction=reduction)
    np.testing.assert_allclose(fused.data, split.data, rtol=1e-12, atol=1e-14)
    g = rng.standard_normal(fused.shape)
    fused.backward(g)
    split.backward(g)
    if np.all(np.isfinite(fused.data)):
        np.testing.assert_allclose(a.grad, b.grad, rtol=1e-10, atol=1e-14)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- regression
def test_mse_loss_target_gradient_and_shape_check() -> None:
    x, y = _t(np.array([1.0, 2.0, 3.0])), _t(np.array([0.0, 2.0, 5.0]))
    loss = F.mse_loss(x, y)
    np.testing.assert_allclose(loss.data, (1 + 0 + 4) / 3)
    loss.backward()
    assert x.grad is not None and y.grad is not None
    np.testing.assert_allclose(x.grad, [2 / 3, 0, -4 / 3])
    np.testing.assert_allclose(y.grad, -x.grad)
    with pytest.raises(ValueError, match=r"mse_loss: target shape \(1, 3\) must equal input shape \(3,\)"):
        F.mse_loss(x, Tensor(np.zeros((1, 3))))
    with pytest.raises(ValueError, match="mse_loss: reduction"):
        F.mse_loss(x, y, reduction="batchmean")
    with pytest.raises(TypeError, match="mse_loss: target has dtype float32"):
        F.mse_loss(x, Tensor(np.zeros(3, dtype=np.float32)))


def test_bce_with_logits_extreme_logits_match_torch() -> None:
    x = np.array([-200.0, -30.0, 0.0, 30.0, 200.0])
    y = np.array([0.0, 1.0, 0.5, 0.0, 1.0])
    pw = np.array(2.5)
    ours_x, ours_y = _t(x), _t(y)
    loss = F.binary_cross_entropy_with_logits(ours_x, ours_y, pos_weight=pw, reduction="sum")
    loss.backward()
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    ty = torch.from_numpy(y.copy()).requires_grad_(True)
    tl = TF.binary_cross_entropy_with_logits(tx, ty, pos_weight=torch.from_numpy(pw), reduction="sum")
    tl.backward()
    assert np.isfinite(loss.data)
    np.testing.assert_allclose(loss.data, tl.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(ours_x.grad, tx.grad.numpy(), rtol=1e-12, atol=1e-80)  # type: ignore[arg-type,union-attr]
    # and exact where PyTorch's form cancels: d/dx = (1 - y) sigmoid(x) - pos_weight y sigmoid(-x)
    assert ours_x.grad is not None
    np.testing.assert_allclose(ours_x.grad[[0, 4]], [np.exp(-200.0), -2.5 * np.exp(-200.0)], rtol=1e-12)
    np.testing.assert_allclose(ours_y.grad, ty.grad.numpy(), rtol=1e-12)  # type: ignore[arg-type,union-attr]


def test_bce_with_logits_errors() -> None:
    x = Tensor(np.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"target size \(4,\) must be the same as input size \(3, 4\)"):
        F.binary_cross_entropy_with_logits(x, np.zeros(4))
    with pytest.raises(ValueError, match=r"pos_weight of shape \(3,\) does not broadcast"):
        F.binary_cross_entropy_with_logits(x, np.zeros((3, 4)), pos_weight=np.ones(3))


# ----------------------------------------------------------------------------------- kl_div
def test_kl_div_zero_target_contributes_zero() -> None:
    x = np.log(np.array([[0.2, 0.3, 0.5]]))
    t = np.array([[0.0, 0.4, 0.6]])
    ours = F.kl_div(_t(x), t, reduction="sum")
    expected = 0.4 * np.log(0.4 / 0.3) + 0.6 * np.log(0.6 / 0.5)
    np.testing.assert_allclose(ours.data, expected, rtol=1e-12)


def test_kl_div_laws() -> None:
    rng = np.random.default_rng(1)
    x = np.log(rng.dirichlet(np.ones(5), size=4))
    t = rng.dirichlet(np.ones(5), size=4)
    total = F.kl_div(Tensor(x), t, reduction="sum").data
    np.testing.assert_allclose(F.kl_div(Tensor(x), t, reduction="batchmean").data, total / 4, rtol=1e-12)
    np.testing.assert_allclose(F.kl_div(Tensor(x), t, reduction="mean").data, total / 20, rtol=1e-12)
    np.testing.assert_allclose(
        F.kl_div(Tensor(x), np.log(t), reduction="sum", log_target=True).data, total, rtol=1e-12
    )
    assert F.kl_div(Tensor(x), np.exp(x), reduction="sum").data == pytest.approx(0.0, abs=1e-12)


def test_kl_div_errors() -> None:
    with pytest.raises(ValueError, match=r"kl_div: reduction must be one of .*'batchmean'.* got 'avg'"):
        F.kl_div(Tensor(np.zeros(3)), np.zeros(3), reduction="avg")
    with pytest.raises(ValueError, match=r"kl_div: input of shape \(3,\) and target of shape \(4,\)"):
        F.kl_div(Tensor(np.zeros(3)), np.zeros(4))


def test_ignored_rows_cannot_leak_non_finite_values_into_the_loss() -> None:
    """Padding rows may hold anything: NaN logits or a NaN weight of the ignored class stay out."""
    x = np.random.default_rng(2).standard_normal((4, 3))
    x[2] = np.nan
    y = np.array([0, 1, -100, 2])
    w = np.array([1.0, 2.0, 0.5])
    for fn in (F.cross_entropy, F.nll_loss):
        for reduction in ("mean", "sum"):
            with np.errstate(invalid="ignore"):
                assert np.isfinite(fn(Tensor(x), y, weight=w, reduction=reduction).item())
    xs = np.random.default_rng(3).standard_normal((4, 3))
    w_nan = np.array([1.0, np.nan, 0.5])
    ours = F.cross_entropy(Tensor(xs), np.array([0, 1, 1, 2]), weight=w_nan, ignore_index=1)
    theirs = TF.cross_entropy(
        torch.from_numpy(xs), torch.tensor([0, 1, 1, 2]), weight=torch.from_numpy(w_nan), ignore_index=1
    )
    np.testing.assert_allclose(ours.item(), theirs.item(), rtol=1e-12)
