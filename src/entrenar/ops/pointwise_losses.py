"""Pointwise losses (torch.nn.functional semantics): mse_loss, binary_cross_entropy_with_logits, kl_div.

Each compares the input with a float target element by element (kl_div broadcasting the two), is one
fused primitive whose backward is written out by hand, and lets the target require grad too;
binary_cross_entropy_with_logits uses the stable softplus form. weight and pos_weight are constants
(PyTorch does not differentiate them). The reduction helpers every loss shares (`_reduce`,
`_upstream`, `_check_reduction`, `_float_input`) live here; losses.py (the class-index losses
cross_entropy and nll_loss) imports them and re-exports these losses.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import special

from entrenar.autograd.registry import Arg, case, defop, public
from entrenar.tensor import Tensor, TensorLike

__all__ = [
    "binary_cross_entropy_with_logits",
    "kl_div",
    "mse_loss",
]

A = Arg
_REDUCTIONS = ("none", "mean", "sum")


def _data(x: TensorLike) -> np.ndarray:
    return x.data if isinstance(x, Tensor) else np.asarray(x)


def _float_input(op: str, x: TensorLike) -> np.ndarray:
    d = _data(x)
    if d.dtype.kind != "f":
        raise TypeError(f"{op}: input must be a floating point tensor, got dtype {d.dtype}")
    return d


def _check_reduction(op: str, reduction: str, allowed: tuple[str, ...] = _REDUCTIONS) -> None:
    if reduction not in allowed:
        raise ValueError(f"{op}: reduction must be one of {', '.join(map(repr, allowed))}, got {reduction!r}")


def _reduce(loss: np.ndarray, reduction: str, denom: Any = None) -> np.ndarray:
    """The per-element loss reduced: as is, summed, or summed and divided by denom (the count)."""
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return np.asarray(total, dtype=loss.dtype)
    d = loss.size if denom is None else denom
    with np.errstate(divide="ignore", invalid="ignore"):  # nothing counted: nan, as PyTorch
        return np.asarray(total / d, dtype=loss.dtype)


def _upstream(g: np.ndarray, reduction: str, denom: Any) -> np.ndarray:
    """d(reduced loss)/d(per-element loss) times g: g itself, or the 0-d g (over denom for mean)."""
    if reduction == "mean":
        if denom == 0:  # nothing counted (every target ignored): no gradient, as PyTorch
            return np.zeros_like(g)
        return g / denom
    return g


def _float_target(op: str, x: np.ndarray, target: TensorLike) -> TensorLike:
    """A float target of x's dtype: arrays and lists are converted, a Tensor must already match."""
    if isinstance(target, Tensor):
        if target.dtype != x.dtype:
            raise TypeError(f"{op}: target has dtype {target.dtype} but input has dtype {x.dtype}")
        return target
    return Tensor(np.asarray(target, dtype=x.dtype))


# ----------------------------------------------------------------------------------- regression
@defop("mse_loss", needs_mask=True)
def _MseLoss(x: np.ndarray, t: np.ndarray, *, reduction: str) -> Any:
    d = x - t
    return _reduce(d * d, reduction), (d, reduction)


@_MseLoss.defbackward
def _mse_loss_backward(g: np.ndarray, saved: Any, needs: tuple[bool, ...]) -> Any:
    d, reduction = saved
    gx = d * (2 * _upstream(g, reduction, d.size))
    return (gx if needs[0] else None), (-gx if needs[1] else None)


@public(
    "torch.nn.functional.mse_loss",
    [
        case(A((3, 4)), A((3, 4))),
        case(A((3, 4)), A((3, 4)), reduction="sum"),
        case(A((2, 3)), A((2, 3), kind="const"), reduction="none"),
        case(A(()), A(())),
    ],
)
def mse_loss(input: TensorLike, target: TensorLike, reduction: str = "mean") -> Tensor:
    """(input - target) ** 2, reduced; target may require grad too.

    Unlike PyTorch (which warns and broadcasts), shapes must be equal.
    """
    x = _float_input("mse_loss", input)
    _check_reduction("mse_loss", reduction)
    t = _float_target("mse_loss", x, target)
    if t.shape != x.shape:
        raise ValueError(f"mse_loss: target shape {t.shape} must equal input shape {x.shape}")
    return _MseLoss(input, t, reduction=reduction)


@defop("binary_cross_entropy_with_logits", needs_mask=True)
def _BceWithLogits(
    x: np.ndarray, y: np.ndarray, *, weight: np.ndarray | None, pos_weight: np.ndarray | None, reduction: str
) -> Any:
    sp = np.logaddexp(0, -x)  # softplus(-x) = -log sigmoid(x), without overflow
    lw = None if pos_weight is None else 1 + (pos_weight - 1) * y
    loss = (1 - y) * x + (sp if lw is None else lw * sp)
    if weight is not None:
        loss = loss * weight
    # softplus(-x) is needed again only for the target's gradient with pos_weight
    saved_sp = None if pos_weight is None else sp
    return _reduce(loss, reduction), (x, y, saved_sp, weight, pos_weight, reduction)


@_BceWithLogits.defbackward
def _bce_with_logits_backward(g: np.ndarray, saved: Any, needs: tuple[bool, ...]) -> Any:
    x, y, sp, weight, pos_weight, reduction = saved
    a = _upstream(g, reduction, x.size)
    if weight is not None:
        a = a * weight
    gx = gy = None
    if needs[0]:
        # d/dx = (1 - y) - lw sigmoid(-x): sigmoid(x) - y without pos_weight, else written as
        # (1 - y) sigmoid(x) - pos_weight y sigmoid(-x), which cancels nothing at extreme logits
        if pos_weight is None:
            gx = a * (special.expit(x) - y)
        else:
            gx = a * ((1 - y) * special.expit(x) - pos_weight * y * special.expit(-x))
    if needs[1]:
        gy = a * (-x if pos_weight is None else (pos_weight - 1) * sp - x)
    return gx, gy


@public(
    "torch.nn.functional.binary_cross_entropy_with_logits",
    [
        case(A((3, 4), -5.0, 5.0), A((3, 4), 0.0, 1.0)),
        case(A((3, 4), -5.0, 5.0), A((3, 4), 0.0, 1.0, kind="const"), reduction="sum"),
        case(A((3, 4), -5.0, 5.0, kind="const"), A((3, 4), 0.0, 1.0)),  # the target's gradient alone
        case(
            A((3, 4), -5.0, 5.0),
            A((3, 4), 0.0, 1.0),
            weight=A((4,), 0.5, 2.0, kind="const"),
            pos_weight=A((4,), 0.5, 3.0, kind="const"),
        ),
        case(
            A((2, 3), -30.0, 30.0),
            A((2, 3), 0.0, 1.0),
            pos_weight=A((3,), 0.5, 3.0, kind="const"),
            reduction="none",
        ),
        case(A((5,), -5.0, 5.0), A((5,), 0.0, 1.0), weight=A((5,), 0.5, 2.0, kind="const"), reduction="none"),
    ],
)
def binary_cross_entropy_with_logits(
    input: TensorLike,
    target: TensorLike,
    weight: TensorLike | None = None,
    reduction: str = "mean",
    pos_weight: TensorLike | None = None,
) -> Tensor:
    """Sigmoid binary cross-entropy of logits, in the stable softplus form; target may require grad.

    Per element: weight * ((1 - y) x + (1 + (pos_weight - 1) y) softplus(-x)). weight and pos_weight
    are constants broadcasting to the input's shape (pos_weight usually one per class, the last dim).
    """
    op = "binary_cross_entropy_with_logits"
    x = _float_input(op, input)
    _check_reduction(op, reduction)
    t = _float_target(op, x, target)
    if t.shape != x.shape:
        raise ValueError(f"{op}: target size {t.shape} must be the same as input size {x.shape}")
    consts: list[np.ndarray | None] = []
    for name, c in (("weight", weight), ("pos_weight", pos_weight)):
        if c is None:
            consts.append(None)
            continue
        arr = _data(c)
        try:
            ok = np.broadcast_shapes(arr.shape, x.shape) == x.shape
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(
                f"{op}: {name} of shape {arr.shape} does not broadcast to the input shape {x.shape}"
            )
        consts.append(arr.astype(x.dtype, copy=False))
    return _BceWithLogits(input, t, weight=consts[0], pos_weight=consts[1], reduction=reduction)


@defop("kl_div", broadcasts=True, needs_mask=True)
def _KlDiv(x: np.ndarray, t: np.ndarray, *, reduction: str, log_target: bool) -> Any:
    if log_target:
        et = np.exp(t)
        loss = et * (t - x)
    else:
        et = None
        loss = special.xlogy(t, t) - t * x  # target 0 contributes 0
    if reduction == "batchmean":
        out = _reduce(loss, "mean", x.shape[0] if x.ndim else 1)
    else:
        out = _reduce(loss, reduction)
    return out, (x, t, et, loss.shape, reduction, log_target)


@_KlDiv.defbackward
def _kl_div_backward(g: np.ndarray, saved: Any, needs: tuple[bool, ...]) -> Any:
    x, t, et, shape, reduction, log_target = saved
    if reduction == "batchmean":
        a = _upstream(g, "mean", x.shape[0] if x.ndim else 1)
    else:
        a = _upstream(g, reduction, int(np.prod(shape)))
    gx = gt = None
    if needs[0]:
        gx = np.broadcast_to(-(a * (t if et is None else et)), shape)
    if needs[1]:
        if log_target:
            gt = a * (et * (t - x + 1))
        else:
            with np.errstate(divide="ignore"):
                gt = a * (np.log(t) + 1 - x)
        gt = np.broadcast_to(gt, shape)
    return gx, gt


@public(
    "torch.nn.functional.kl_div",
    [
        case(A((3, 4)), A((3, 4), 0.1, 1.0)),
        case(A((3, 4)), A((3, 4), 0.1, 1.0), reduction="batchmean"),
        case(A((3, 4)), A((3, 4), 0.1, 1.0), reduction="sum"),
        case(A((3, 4)), A((3, 4), 0.1, 1.0), reduction="none"),
        case(A((3, 4)), A((3, 4)), reduction="batchmean", log_target=True),
        case(A((2, 3)), A((3,), 0.1, 1.0), reduction="batchmean"),
        case(A((3,)), A((2, 3)), reduction="none", log_target=True),
        case(A(()), A((), 0.1, 1.0), reduction="batchmean"),
    ],
)
def kl_div(
    input: TensorLike, target: TensorLike, reduction: str = "mean", log_target: bool = False
) -> Tensor:
    """Pointwise KL divergence with log-probabilities input: target (log target - input), reduced.

    With log_target=False the term is xlogy(target, target) - target * input, so target 0
    contributes 0. "batchmean" divides the sum by input.shape[0] (the true KL per sample); "mean"
    divides by the element count. input and target broadcast, as in PyTorch; target may require grad.
    """
    op = "kl_div"
    x = _float_input(op, input)
    _check_reduction(op, reduction, ("none", "mean", "sum", "batchmean"))
    t = _float_target(op, x, target)
    try:
        np.broadcast_shapes(x.shape, t.shape)
    except ValueError:
        raise ValueError(
            f"kl_div: input of shape {x.shape} and target of shape {t.shape} do not broadcast"
        ) from None
    return _KlDiv(input, t, reduction=reduction, log_target=bool(log_target))
