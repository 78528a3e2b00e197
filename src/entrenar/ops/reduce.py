"""Reductions: sum mean amax amin max min var std logsumexp, each with dim / keepdim as PyTorch.

`dim` may be None (all dims), an int, or a tuple of ints (negative counts from the end). The
backward of every reduction broadcasts the upstream gradient back over the reduced dims.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from entrenar.autograd.registry import Arg, case, defop, public
from entrenar.ops.dims import normalize_dim, reduction_axes
from entrenar.ops.elementwise import sqrt
from entrenar.tensor import Tensor, TensorLike

__all__ = ["amax", "amin", "logsumexp", "max", "mean", "min", "std", "sum", "var"]

A = Arg
Dim = int | tuple[int, ...] | list[int] | None


def _expand(g: np.ndarray, shape: tuple[int, ...], axes: tuple[int, ...], keepdim: bool) -> np.ndarray:
    """Upstream gradient of a reduction, broadcast back to the input's shape (a fresh array)."""
    if not keepdim and axes:
        g = g.reshape(tuple(1 if i in axes else n for i, n in enumerate(shape)))
    out = np.empty(shape, dtype=g.dtype)
    np.copyto(out, g)
    return out


def _count(shape: tuple[int, ...], axes: tuple[int, ...]) -> int:
    n = 1
    for a in axes:
        n *= shape[a]
    return n


# --------------------------------------------------------------------------------------- sum, mean
@defop("sum")
def _Sum(x: np.ndarray, *, axes: tuple[int, ...], keepdim: Any) -> Any:
    return np.add.reduce(x, axis=axes, keepdims=keepdim), (x.shape, axes, keepdim)


@_Sum.defbackward
def _sum_backward(g: np.ndarray, saved: Any) -> Any:
    shape, axes, keepdim = saved
    return (_expand(g, shape, axes, keepdim),)


@defop("mean")
def _Mean(x: np.ndarray, *, axes: tuple[int, ...], keepdim: Any) -> Any:
    n = _count(x.shape, axes)
    out = np.add.reduce(x, axis=axes, keepdims=keepdim) / x.dtype.type(n)
    return out, (x.shape, axes, keepdim, n)


@_Mean.defbackward
def _mean_backward(g: np.ndarray, saved: Any) -> Any:
    shape, axes, keepdim, n = saved
    return (_expand(g / g.dtype.type(n), shape, axes, keepdim),)


@public(
    "torch.sum",
    [
        case(A((3, 4))),
        case(A((2, 3, 4)), 1),
        case(A((2, 3, 4)), (0, 2), True),
        case(A((2, 3, 4)), dim=-1, keepdim=True),
        case(A(())),
    ],
    methods=("sum",),
)
def sum(input: TensorLike, dim: Dim = None, keepdim: bool = False) -> Tensor:
    """Sum over `dim` (all dims when None)."""
    x = input if isinstance(input, Tensor) else Tensor(np.asarray(input))
    axes = reduction_axes("sum", dim, x.data.shape)
    return _Sum(x, axes=axes, keepdim=bool(keepdim))


@public(
    "torch.mean",
    [case(A((3, 4))), case(A((2, 3, 4)), 1), case(A((2, 3, 4)), (0, 2), True), case(A((5,)), -1)],
    methods=("mean",),
)
def mean(input: TensorLike, dim: Dim = None, keepdim: bool = False) -> Tensor:
    """Arithmetic mean over `dim` (all dims when None)."""
    x = input if isinstance(input, Tensor) else Tensor(np.asarray(input))
    if x.data.dtype.kind != "f":
        raise TypeError(f"mean: input dtype should be floating point, got {x.data.dtype}")
    axes = reduction_axes("mean", dim, x.data.shape)
    return _Mean(x, axes=axes, keepdim=bool(keepdim))


# --------------------------------------------------------------------------------------- max, min
@defop("amax")
def _Amax(x: np.ndarray, *, axes: tuple[int, ...], keepdim: Any, lowest: bool, nan_wins: bool) -> Any:
    reduce = np.minimum.reduce if lowest else np.maximum.reduce
    out = reduce(x, axis=axes, keepdims=keepdim) if x.size else np.asarray(reduce(x, axis=axes))
    return out, (x, out, axes, keepdim, nan_wins)


@_Amax.defbackward
def _amax_backward(g: np.ndarray, saved: Any) -> Any:
    x, out, axes, keepdim, nan_wins = saved
    # ties share the gradient evenly, as PyTorch's amax/amin and full max/min do
    full = _expand(out, x.shape, axes, keepdim)
    hit = x == full
    if nan_wins:  # PyTorch's full max()/min() give a NaN result's gradient to the NaN; amax gives NaN
        hit |= np.isnan(x) & np.isnan(full)
    count = np.add.reduce(hit, axis=axes, keepdims=True).astype(g.dtype)
    return (_expand(g, x.shape, axes, keepdim) * hit / count,)


@defop("max_along")
def _MaxAlong(x: np.ndarray, *, index: np.ndarray, dim: int, keepdim: Any) -> Any:
    """Select `index` (the arg-max or arg-min) along one dim; the gradient goes to that element."""
    out = np.take_along_axis(x, index, axis=dim)
    if not keepdim:
        out = np.squeeze(out, axis=dim)
    return out, (x.shape, index, dim, keepdim)


@_MaxAlong.defbackward
def _maxalong_backward(g: np.ndarray, saved: Any) -> Any:
    shape, index, dim, keepdim = saved
    grad = np.zeros(shape, dtype=g.dtype)
    np.put_along_axis(grad, index, g if keepdim else np.expand_dims(g, dim), axis=dim)
    return (grad,)


class ValuesIndices(NamedTuple):
    """What max/min along a dim return, as torch.return_types.max: values and their indices."""

    values: Tensor
    indices: Tensor


def _extreme(input: TensorLike, dim: Any, keepdim: bool, lowest: bool, op: str) -> Any:
    x = input if isinstance(input, Tensor) else Tensor(np.asarray(input))
    if dim is None:
        if x.data.size == 0:
            raise RuntimeError(f"{op}: cannot reduce an empty tensor without a dim")
        return _Amax(x, axes=tuple(range(x.data.ndim)), keepdim=False, lowest=lowest, nan_wins=True)
    if isinstance(dim, Tensor):  # torch.max(input, other) is the elementwise maximum
        from entrenar.ops.elementwise import maximum, minimum

        return minimum(x, dim) if lowest else maximum(x, dim)
    d = normalize_dim(op, dim, x.data.shape)
    data = x.data if x.data.ndim else x.data.reshape(1)
    arg = np.argmin(data, axis=d, keepdims=True) if lowest else np.argmax(data, axis=d, keepdims=True)
    if x.data.ndim == 0:
        return ValuesIndices(x, Tensor(np.zeros((), dtype=np.int64)))
    values = _MaxAlong(x, index=arg, dim=d, keepdim=bool(keepdim))
    indices = arg if keepdim else np.squeeze(arg, axis=d)
    return ValuesIndices(values, Tensor(indices.astype(np.int64)))


_MAX_CASES = [
    case(A((3, 4))),
    case(A((3, 4)), 1),
    case(A((2, 3, 4)), 0, True),
    case(A((2, 3, 4)), dim=-1),
]


@public("torch.max", _MAX_CASES, methods=("max",))
def max(input: TensorLike, dim: Any = None, keepdim: bool = False) -> Any:
    """The largest element; with `dim`, (values, indices) along it; with a tensor, the maximum."""
    return _extreme(input, dim, keepdim, lowest=False, op="max")


@public("torch.min", _MAX_CASES, methods=("min",))
def min(input: TensorLike, dim: Any = None, keepdim: bool = False) -> Any:
    """The smallest element; with `dim`, (values, indices) along it; with a tensor, the minimum."""
    return _extreme(input, dim, keepdim, lowest=True, op="min")


_AMAX_CASES = [
    case(A((3, 4))),
    case(A((2, 3, 4)), (0, 2)),
    case(A((2, 3, 4)), -1, True),
]


@public("torch.amax", _AMAX_CASES, methods=("amax",))
def amax(input: TensorLike, dim: Dim = (), keepdim: bool = False) -> Tensor:
    """Largest values over `dim` (all dims when empty); ties share the gradient evenly."""
    x = input if isinstance(input, Tensor) else Tensor(np.asarray(input))
    axes = reduction_axes("amax", dim, x.data.shape)
    return _Amax(x, axes=axes, keepdim=bool(keepdim), lowest=False, nan_wins=False)


@public("torch.amin", _AMAX_CASES, methods=("amin",))
def amin(input: TensorLike, dim: Dim = (), keepdim: bool = False) -> Tensor:
    """Smallest values over `dim` (all dims when empty); ties share the gradient evenly."""
    x = input if isinstance(input, Tensor) else Tensor(np.asarray(input))
    axes = reduction_axes("amin", dim, x.data.shape)
    return _Amax(x, axes=axes, keepdim=bool(keepdim), lowest=True, nan_wins=False)


# --------------------------------------------------------------------------------------- var, std
@defop("var")
def _Var(x: np.ndarray, *, axes: tuple[int, ...], keepdim: Any, correction: float) -> Any:
    n = _count(x.shape, axes)
    centred = x - np.add.reduce(x, axis=axes, keepdims=True) / x.dtype.type(n)
    denom = x.dtype.type(np.maximum(n - correction, 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.add.reduce(centred * centred, axis=axes, keepdims=keepdim) / denom
    return out, (centred, axes, keepdim, denom)


@_Var.defbackward
def _var_backward(g: np.ndarray, saved: Any) -> Any:
    centred, axes, keepdim, denom = saved
    with np.errstate(divide="ignore", invalid="ignore"):
        return (_expand(g, centred.shape, axes, keepdim) * (2 / denom) * centred,)


def _correction(correction: float | None, unbiased: bool | None) -> float:
    if correction is not None and unbiased is not None:
        raise ValueError("var/std: pass either correction or unbiased, not both")
    if unbiased is not None:
        return 1.0 if unbiased else 0.0
    return 1.0 if correction is None else float(correction)


_VAR_CASES = [
    case(A((3, 4))),
    case(A((2, 3, 4)), 1),
    case(A((2, 3, 4)), (0, 2), keepdim=True),
    case(A((5, 3)), 0, correction=0),
    case(A((5, 3)), -1, unbiased=False),
]


@public("torch.var", _VAR_CASES, methods=("var",))
def var(
    input: TensorLike,
    dim: Dim = None,
    unbiased: bool | None = None,
    keepdim: bool = False,
    *,
    correction: float | None = None,
) -> Tensor:
    """Variance over `dim`, dividing by N - correction (Bessel's correction, 1, by default)."""
    x = input if isinstance(input, Tensor) else Tensor(np.asarray(input))
    axes = reduction_axes("var", dim, x.data.shape)
    return _Var(x, axes=axes, keepdim=bool(keepdim), correction=_correction(correction, unbiased))


@public("torch.std", _VAR_CASES, methods=("std",))
def std(
    input: TensorLike,
    dim: Dim = None,
    unbiased: bool | None = None,
    keepdim: bool = False,
    *,
    correction: float | None = None,
) -> Tensor:
    """Standard deviation: the square root of `var` with the same arguments."""
    return sqrt(var(input, dim, unbiased, keepdim, correction=correction))


# --------------------------------------------------------------------------------------- logsumexp
@defop("logsumexp")
def _LogSumExp(x: np.ndarray, *, axes: tuple[int, ...], keepdim: Any) -> Any:
    m = np.maximum.reduce(x, axis=axes, keepdims=True)
    m = np.where(np.isfinite(m), m, 0).astype(x.dtype, copy=False)  # all -inf rows stay -inf
    out = np.log(np.add.reduce(np.exp(x - m), axis=axes, keepdims=True)) + m
    return (out if keepdim else np.squeeze(out, axis=axes)), (x, out, axes, keepdim)


@_LogSumExp.defbackward
def _logsumexp_backward(g: np.ndarray, saved: Any) -> Any:
    x, out, axes, keepdim = saved
    return (_expand(g, x.shape, axes, keepdim) * np.exp(x - out),)


@public(
    "torch.logsumexp",
    [
        case(A((3, 4)), 1),
        case(A((2, 3, 4)), (0, 2)),
        case(A((2, 3, 4)), -1, True),
        case(A((3, 4), low=-50, high=50), 0),
    ],
    methods=("logsumexp",),
)
def logsumexp(input: TensorLike, dim: Dim, keepdim: bool = False) -> Tensor:
    """log(sum(exp(input))) over `dim`, computed without overflow."""
    x = input if isinstance(input, Tensor) else Tensor(np.asarray(input))
    axes = reduction_axes("logsumexp", dim, x.data.shape)
    return _LogSumExp(x, axes=axes, keepdim=bool(keepdim))


def _argext(fn: Any) -> Any:
    def method(self: Tensor, dim: int | None = None, keepdim: bool = False) -> Tensor:
        if dim is None:
            return Tensor(np.asarray(fn(self.data), dtype=np.int64))
        d = normalize_dim(fn.__name__, dim, self.data.shape)
        return Tensor(fn(self.data, axis=d, keepdims=keepdim).astype(np.int64))

    return method


Tensor.argmax = _argext(np.argmax)  # type: ignore[attr-defined]
Tensor.argmin = _argext(np.argmin)  # type: ignore[attr-defined]
