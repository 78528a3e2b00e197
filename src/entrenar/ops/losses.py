"""Loss functions (torch.nn.functional semantics): input first, then target.

Each loss is one fused primitive whose backward is written out by hand: cross_entropy fuses
log_softmax with the negative log-likelihood, binary_cross_entropy_with_logits uses the stable
softplus form. Class weights and pos_weight are constants (PyTorch does not differentiate them).

This file holds the losses against class-index targets, cross_entropy and nll_loss; the pointwise
losses (mse_loss, binary_cross_entropy_with_logits, kl_div) are in pointwise_losses.py and
re-exported here, so this module still names every loss.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from entrenar.autograd.registry import Arg, case, defop, public
from entrenar.kernels import loss_fused
from entrenar.ops.pointwise_losses import (
    _check_reduction,
    _data,
    _float_input,
    _reduce,
    _upstream,
    binary_cross_entropy_with_logits,
    kl_div,
    mse_loss,
)
from entrenar.tensor import Tensor, TensorLike

__all__ = [
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "kl_div",
    "mse_loss",
    "nll_loss",
]

A = Arg


# ----------------------------------------------------------------------------------- class targets
def _to_rows(x: np.ndarray) -> np.ndarray:
    """(C,) -> (1, C); (N, C) as is; (N, C, d1, ...) -> (N * d1 * ..., C)."""
    if x.ndim == 2:
        return x
    if x.ndim == 1:
        return x[None]
    return np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])


def _from_rows(d: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Inverse of `_to_rows` for a gradient: (M, C) back to the input's shape."""
    if len(shape) == 2:
        return d
    if len(shape) == 1:
        return d[0]
    n, c, *rest = shape
    return np.moveaxis(d.reshape(n, *rest, c), -1, 1)


def _class_target(
    op: str, x: np.ndarray, target: TensorLike, weight: TensorLike | None, ignore_index: int, reduction: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate a class-index target (and class weights); return them as arrays."""
    _check_reduction(op, reduction)
    t = _data(target)
    if t.dtype.kind not in "iu":
        raise TypeError(
            f"{op}: target must hold class indices (an integer tensor), got dtype {t.dtype} with shape "
            f"{t.shape}; only class-index targets are supported, not class probabilities"
        )
    if x.ndim == 0:
        raise ValueError(f"{op}: input must have a class dimension, got a 0-d input")
    expected = () if x.ndim == 1 else (x.shape[0], *x.shape[2:])
    if t.shape != expected:
        raise ValueError(
            f"{op}: input of shape {x.shape} expects a target of shape {expected}, got {t.shape}"
        )
    c = x.shape[0] if x.ndim == 1 else x.shape[1]
    bad = (t != ignore_index) & ((t < 0) | (t >= c))
    if bad.any():
        raise IndexError(f"{op}: target {t[bad].flat[0]} is out of bounds for {c} classes")
    w = None
    if weight is not None:
        w = _data(weight)
        if w.shape != (c,):
            raise ValueError(f"{op}: weight must have shape ({c},), one per class, got {w.shape}")
        w = w.astype(x.dtype, copy=False)
    return t, w


def _target_weights(
    t: np.ndarray, ignore_index: int, weight: np.ndarray | None, dtype: Any
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(targets with ignored ones set to 0, the valid mask or None if none is ignored, row weights).

    A row's weight is w[t], and 0 where ignored: selected, never multiplied by 0, so that an
    ignored row's logits or class weight (padding may hold anything, NaN included) cannot leak.
    """
    t = t.reshape(-1)
    valid = t != ignore_index
    if valid.all():
        return t, None, (np.ones(t.shape, dtype=dtype) if weight is None else weight[t])
    ts = np.where(valid, t, 0)
    zero = np.zeros((), dtype=dtype)
    wt = valid.astype(dtype) if weight is None else np.where(valid, weight[ts], zero)
    return ts, valid, wt


def _drop(values: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """values with the ignored rows set to 0 (selected, so NaN in an ignored row does not survive)."""
    return values if valid is None else np.where(valid, values, np.zeros((), dtype=values.dtype))


@defop("cross_entropy")
def _CrossEntropy(
    x: np.ndarray,
    *,
    target: np.ndarray,
    weight: np.ndarray | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
) -> Any:
    if loss_fused.supports(x, weight, label_smoothing):
        # one pass per row for the losses, saving (max, sum exp) per row (kernels/loss_fused.py)
        ts, valid, wt = _target_weights(target, ignore_index, weight, x.dtype)
        rows_loss, stats = loss_fused.cross_entropy_forward(x, ts)
        denom = wt.sum()
        out = _reduce(_drop(rows_loss * wt, valid).reshape(target.shape), reduction, denom)
        return out, ("fused", x, stats, ts, wt, reduction, denom)
    z = _to_rows(x)  # (M, C)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    se = e.sum(axis=1)
    logse = np.log(se)
    ts, valid, wt = _target_weights(target, ignore_index, weight, x.dtype)
    rows = np.arange(z.shape[0])
    loss = _drop((logse - z[rows, ts]) * wt, valid)  # -w[t] log p[t]
    eps = label_smoothing
    if eps > 0.0:
        c = z.shape[1]
        # -sum_c w_c log p_c, zero for ignored rows
        smooth = c * logse - z.sum(axis=1) if weight is None else weight.sum() * logse - z @ weight
        loss = (1 - eps) * loss + (eps / c) * _drop(smooth, valid)
    denom = wt.sum()
    out = _reduce(loss.reshape(target.shape), reduction, denom)
    return out, ("reference", e, se, ts, valid, wt, weight, eps, reduction, denom, x.shape)


@_CrossEntropy.defbackward
def _cross_entropy_backward(g: np.ndarray, saved: Any) -> Any:
    if saved[0] == "fused":
        _, x, stats, ts, wt, reduction, denom = saved
        at = _upstream(g, reduction, denom).reshape(-1) * wt  # (M,)
        return (loss_fused.cross_entropy_backward(x, ts, stats, at),)
    _, e, se, ts, valid, wt, weight, eps, reduction, denom, shape = saved
    a = _upstream(g, reduction, denom).reshape(-1)  # (M,) or (1,)
    at = a * wt if eps == 0.0 else a * ((1 - eps) * wt)
    p = e / se[:, None]
    if eps == 0.0:
        p *= at[:, None]
    else:
        c = e.shape[1]
        total_w = c if weight is None else weight.sum()
        av = a * (eps / c) if valid is None else a * ((eps / c) * valid)
        p *= (at + av * total_w)[:, None]
        p -= av[:, None] if weight is None else av[:, None] * weight
    # dx = p * sum_c(-dlogp) + dlogp, with dlogp[t] holding the -a (1 - eps) w[t] term
    # an ignored row's dlogp is 0, so its gradient is 0 too (NaN where its logits or the smoothing
    # weights are not finite, exactly as PyTorch's log_softmax backward gives)
    p[np.arange(p.shape[0]), ts] -= at
    return (_from_rows(p, shape),)


@public(
    "torch.nn.functional.cross_entropy",
    [
        case(A((5, 4)), A((5,), 0, 4, kind="int")),
        case(A((8, 4)), A((8,), 0, 4, kind="int"), ignore_index=3),
        case(A((6, 4)), A((6,), 0, 4, kind="int"), A((4,), 0.5, 2.0, kind="const")),
        case(A((6, 3)), A((6,), 0, 3, kind="int"), reduction="sum"),
        case(A((6, 3)), A((6,), 0, 3, kind="int"), weight=A((3,), 0.5, 2.0, kind="const"), reduction="none"),
        case(
            A((8, 4)),
            A((8,), 0, 4, kind="int"),
            A((4,), 0.5, 2.0, kind="const"),
            ignore_index=2,
            label_smoothing=0.2,
        ),
        case(A((8, 4)), A((8,), -1, 4, kind="int"), ignore_index=-1, label_smoothing=0.1, reduction="sum"),
        case(
            A((6, 3)),
            A((6,), 0, 3, kind="int"),
            A((3,), 0.5, 2.0, kind="const"),
            ignore_index=1,
            label_smoothing=0.3,
            reduction="none",
        ),
        case(A((2, 3, 4, 2)), A((2, 4, 2), -1, 3, kind="int"), ignore_index=-1),
        case(A((2, 3, 4)), A((2, 4), 0, 3, kind="int"), A((3,), 0.5, 2.0, kind="const"), reduction="none"),
        case(A((5,)), A((), 0, 5, kind="int")),
        case(A((5, 4), low=-40, high=40), A((5,), 0, 4, kind="int"), label_smoothing=0.05),
    ],
)
def cross_entropy(
    input: TensorLike,
    target: TensorLike,
    weight: TensorLike | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Softmax cross-entropy of logits input against class indices, as one fused op.

    input (N, C), (C,) with a 0-d target, or (N, C, d1, ...) with target (N, d1, ...). Per element:
    (1 - eps) * -w[t] log p[t] + eps / C * -sum_c w_c log p_c (eps = label_smoothing), zero where
    target == ignore_index; "mean" divides the sum by the sum of w[t] over counted elements (as
    PyTorch). Only class-index targets are supported; weight is a constant.
    """
    op = "cross_entropy"
    x = _float_input(op, input)
    t, w = _class_target(op, x, target, weight, ignore_index, reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be in [0, 1], got {label_smoothing}")
    return _CrossEntropy(
        input,
        target=t,
        weight=w,
        ignore_index=int(ignore_index),
        reduction=reduction,
        label_smoothing=float(label_smoothing),
    )


@defop("nll_loss")
def _NllLoss(
    x: np.ndarray, *, target: np.ndarray, weight: np.ndarray | None, ignore_index: int, reduction: str
) -> Any:
    rows = _to_rows(x)  # (M, C)
    ts, valid, wt = _target_weights(target, ignore_index, weight, x.dtype)
    loss = _drop(-rows[np.arange(rows.shape[0]), ts] * wt, valid)
    denom = wt.sum()
    out = _reduce(loss.reshape(target.shape), reduction, denom)
    return out, (ts, valid, wt, reduction, denom, x.shape)


@_NllLoss.defbackward
def _nll_loss_backward(g: np.ndarray, saved: Any) -> Any:
    ts, valid, wt, reduction, denom, shape = saved
    a = _upstream(g, reduction, denom).reshape(-1)
    c = shape[0] if len(shape) == 1 else shape[1]
    d = np.zeros((ts.shape[0], c), dtype=g.dtype)
    d[np.arange(ts.shape[0]), ts] = _drop(-(a * wt), valid)
    return (_from_rows(d, shape),)


@public(
    "torch.nn.functional.nll_loss",
    [
        case(A((5, 4), -3.0, 0.0), A((5,), 0, 4, kind="int")),
        case(
            A((8, 4), -3.0, 0.0), A((8,), -1, 4, kind="int"), A((4,), 0.5, 2.0, kind="const"), ignore_index=-1
        ),
        case(A((6, 3), -3.0, 0.0), A((6,), 0, 3, kind="int"), reduction="sum"),
        case(A((2, 3, 4), -3.0, 0.0), A((2, 4), -1, 3, kind="int"), ignore_index=-1, reduction="none"),
        case(A((5,), -3.0, 0.0), A((), 0, 5, kind="int"), weight=A((5,), 0.5, 2.0, kind="const")),
    ],
)
def nll_loss(
    input: TensorLike,
    target: TensorLike,
    weight: TensorLike | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    """Negative log-likelihood: -w[t] * input[t] for log-probabilities input and class indices target.

    Shapes and the weighted "mean" as `cross_entropy`; weight is a constant.
    """
    x = _float_input("nll_loss", input)
    t, w = _class_target("nll_loss", x, target, weight, ignore_index, reduction)
    return _NllLoss(input, target=t, weight=w, ignore_index=int(ignore_index), reduction=reduction)
