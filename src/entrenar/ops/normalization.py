"""Normalizing ops: softmax and log_softmax along a dim, layer_norm and rms_norm over trailing dims.

Each is one fused primitive with a hand-written backward (torch.nn.functional semantics). Forwards
are numerically stable (max-subtracted exponentials) and keep the input's dtype. The input checks
every neural-network op shares (`_data`, `_float_data`) live here; nn.py (embedding, dropout,
attention) imports them and re-exports these ops.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from entrenar.autograd.registry import Arg, case, defop, public
from entrenar.kernels import nn_fused
from entrenar.tensor import Tensor, TensorLike

__all__ = [
    "layer_norm",
    "log_softmax",
    "rms_norm",
    "softmax",
]

A = Arg


def _data(x: TensorLike) -> np.ndarray:
    return x.data if isinstance(x, Tensor) else np.asarray(x)


def _float_data(op: str, x: TensorLike, what: str = "input") -> np.ndarray:
    d = _data(x)
    if d.dtype.kind != "f":
        raise TypeError(f"{op}: {what} must be a floating point tensor, got dtype {d.dtype}")
    return d


def _axis(op: str, dim: int, ndim: int) -> int | None:
    """A dim as a NumPy axis (None for a 0-d input, where PyTorch accepts dim 0 or -1)."""
    n = max(ndim, 1)
    if not -n <= dim < n:
        raise IndexError(f"{op}: dim {dim} is out of range for a tensor with {ndim} dimensions")
    return None if ndim == 0 else dim % ndim


# ----------------------------------------------------------------------------------- softmax
@defop("softmax")
def _Softmax(x: np.ndarray, *, axis: int | None) -> Any:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e, (e, axis)


@_Softmax.defbackward
def _softmax_backward(g: np.ndarray, saved: Any) -> Any:
    s, axis = saved
    gs = g * s
    # ds_i = s_i (g_i - sum_j g_j s_j)
    return (gs - s * gs.sum(axis=axis, keepdims=True),)


@defop("log_softmax")
def _LogSoftmax(x: np.ndarray, *, axis: int | None) -> Any:
    z = x - x.max(axis=axis, keepdims=True)
    z -= np.log(np.exp(z).sum(axis=axis, keepdims=True))
    return z, (z, axis)


@_LogSoftmax.defbackward
def _log_softmax_backward(g: np.ndarray, saved: Any) -> Any:
    out, axis = saved
    return (g - np.exp(out) * g.sum(axis=axis, keepdims=True),)


_SOFTMAX_CASES = [
    case(A((3, 4)), 1),
    case(A((2, 3, 4), low=-30, high=30), -1),
    case(A((2, 3, 4)), 0),
    case(A(()), 0),
]


@public("torch.nn.functional.softmax", _SOFTMAX_CASES, methods=("softmax",))
def softmax(input: TensorLike, dim: int) -> Tensor:
    """exp(x) / sum(exp(x)) along dim, computed with the maximum subtracted."""
    return _Softmax(input, axis=_axis("softmax", dim, _float_data("softmax", input).ndim))


@public("torch.nn.functional.log_softmax", _SOFTMAX_CASES, methods=("log_softmax",))
def log_softmax(input: TensorLike, dim: int) -> Tensor:
    """x - log(sum(exp(x))) along dim, computed with the maximum subtracted."""
    return _LogSoftmax(input, axis=_axis("log_softmax", dim, _float_data("log_softmax", input).ndim))


# ----------------------------------------------------------------------------------- norms
def _normalized_axes(
    op: str, x: np.ndarray, normalized_shape: int | tuple[int, ...] | list[int]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(normalized_shape as a tuple, the trailing axes it covers); checks it against x's shape."""
    shape = (
        (int(normalized_shape),)
        if isinstance(normalized_shape, (int, np.integer))
        else tuple(int(n) for n in normalized_shape)
    )
    k = len(shape)
    if k == 0 or k > x.ndim or x.shape[x.ndim - k :] != shape:
        raise ValueError(
            f"{op}: normalized_shape {shape} must equal the trailing dimensions of the input, whose "
            f"shape is {x.shape}"
        )
    return shape, tuple(range(x.ndim - k, x.ndim))


def _check_affine(op: str, name: str, p: TensorLike | None, shape: tuple[int, ...]) -> None:
    if p is not None and _data(p).shape != shape:
        raise ValueError(f"{op}: {name} has shape {_data(p).shape}, expected normalized_shape {shape}")


def _leading_sum(a: np.ndarray, k: int) -> np.ndarray:
    """Sum over every axis but the trailing k (an affine parameter's gradient)."""
    return a.sum(axis=tuple(range(a.ndim - k))) if a.ndim > k else a.copy()


@defop("layer_norm", needs_mask=True)
def _LayerNorm(x: np.ndarray, w: np.ndarray | None, b: np.ndarray | None, *, axes: Any, eps: float) -> Any:
    if nn_fused.supports_layer_norm(x, w, b):  # one kernel per direction (kernels/nn_fused.py)
        out, stats = nn_fused.layer_norm_forward(x, w, b, len(axes), eps)
        return out, ("fused", x, stats, w, axes)
    mu = x.mean(axis=axes, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(axis=axes, keepdims=True)  # biased, as PyTorch
    rstd = 1 / np.sqrt(var + eps)
    xhat = xc * rstd
    out = xhat if w is None else xhat * w
    if b is not None:
        out = out + b
    return out, ("numpy", xhat, rstd, w, axes)


@_LayerNorm.defbackward
def _layer_norm_backward(g: np.ndarray, saved: Any, needs: tuple[bool, ...]) -> Any:
    if saved[0] == "fused":
        _, x, stats, w, axes = saved
        return nn_fused.layer_norm_backward(g, x, stats, w, len(axes), needs)
    _, xhat, rstd, w, axes = saved
    gx = gw = gb = None
    if needs[0]:
        gh = g if w is None else g * w
        # dx = rstd (gh - mean(gh) - xhat mean(gh xhat)) over the normalized axes
        gx = rstd * (
            gh - gh.mean(axis=axes, keepdims=True) - xhat * (gh * xhat).mean(axis=axes, keepdims=True)
        )
    if needs[1]:
        gw = _leading_sum(g * xhat, len(axes))
    if needs[2]:
        gb = _leading_sum(g, len(axes))
    return gx, gw, gb


@defop("rms_norm", needs_mask=True)
def _RmsNorm(x: np.ndarray, w: np.ndarray | None, *, axes: Any, eps: float) -> Any:
    rrms = 1 / np.sqrt((x * x).mean(axis=axes, keepdims=True) + eps)
    y = x * rrms
    return (y if w is None else y * w), (y, rrms, w, axes)


@_RmsNorm.defbackward
def _rms_norm_backward(g: np.ndarray, saved: Any, needs: tuple[bool, ...]) -> Any:
    y, rrms, w, axes = saved
    gx = gw = None
    if needs[0]:
        gy = g if w is None else g * w
        # dx = rrms (gy - y mean(gy y)) over the normalized axes
        gx = rrms * (gy - y * (gy * y).mean(axis=axes, keepdims=True))
    if needs[1]:
        gw = _leading_sum(g * y, len(axes))
    return gx, gw


@public(
    "torch.nn.functional.layer_norm",
    [
        case(A((3, 4)), (4,)),
        case(A((2, 3, 4)), (3, 4), A((3, 4)), A((3, 4))),
        case(A((2, 5)), (5,), A((5,)), None, 1e-3),
        case(A((4,)), (4,), None, A((4,))),
    ],
)
def layer_norm(
    input: TensorLike,
    normalized_shape: int | tuple[int, ...] | list[int],
    weight: TensorLike | None = None,
    bias: TensorLike | None = None,
    eps: float = 1e-5,
) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the trailing normalized_shape dims.

    The variance is the biased one, as in PyTorch; normalized_shape may be an int.
    """
    x = _float_data("layer_norm", input)
    shape, axes = _normalized_axes("layer_norm", x, normalized_shape)
    _check_affine("layer_norm", "weight", weight, shape)
    _check_affine("layer_norm", "bias", bias, shape)
    return _LayerNorm(input, weight, bias, axes=axes, eps=float(eps))


@public(
    "torch.nn.functional.rms_norm",
    [
        case(A((3, 4)), (4,)),
        case(A((2, 3, 4)), (3, 4), A((3, 4))),
        case(A((2, 5)), [5], A((5,)), 1e-3),
    ],
)
def rms_norm(
    input: TensorLike,
    normalized_shape: int | tuple[int, ...] | list[int],
    weight: TensorLike | None = None,
    eps: float | None = None,
) -> Tensor:
    """x / sqrt(mean(x**2) + eps) * weight over the trailing normalized_shape dims.

    eps None means the machine epsilon of the input's dtype, as in PyTorch.
    """
    x = _float_data("rms_norm", input)
    shape, axes = _normalized_axes("rms_norm", x, normalized_shape)
    _check_affine("rms_norm", "weight", weight, shape)
    e = float(np.finfo(x.dtype).eps) if eps is None else float(eps)
    return _RmsNorm(input, weight, axes=axes, eps=e)
