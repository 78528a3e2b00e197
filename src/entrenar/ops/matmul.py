"""Matrix products: matmul (every torch.matmul case) and linear (x @ W.T + b as one fused op).

Both skip the gradients no input needs (a frozen weight, an input batch), so fine-tuning with
frozen layers pays for no weight gradient it throws away.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from entrenar.autograd.registry import Arg, as_tensor, case, defop, public
from entrenar.tensor import Tensor, TensorLike

__all__ = ["linear", "matmul"]

A = Arg


def _operands(op: str, a: TensorLike, b: TensorLike) -> tuple[Tensor, Tensor]:
    """Both operands as Tensors (a non-Tensor takes the other's dtype); mixed dtypes are an error."""
    ta = a if isinstance(a, Tensor) else as_tensor(a, b if isinstance(b, Tensor) else None)
    tb = b if isinstance(b, Tensor) else as_tensor(b, ta)
    if ta.data.dtype != tb.data.dtype:
        # as PyTorch: a silent float64 promotion would double the cost of every later op
        raise TypeError(
            f"{op}: expected both operands to have the same dtype, got {ta.data.dtype} and {tb.data.dtype}"
        )
    return ta, tb


# ----------------------------------------------------------------------------------- matmul
@defop("matmul", broadcasts=True, needs_mask=True)
def _Matmul(a: np.ndarray, b: np.ndarray) -> Any:
    if b.ndim == 2 and a.ndim > 2:
        # (..., n, k) @ (k, m) as one (N, k) @ (k, m) product rather than a loop over the batch
        out = (a.reshape(-1, a.shape[-1]) @ b).reshape(*a.shape[:-1], b.shape[1])
    else:
        out = np.matmul(a, b)
    return out, (a, b)


@_Matmul.defbackward
def _matmul_backward(g: np.ndarray, saved: Any, needs: tuple[bool, ...]) -> Any:
    a, b = saved
    a_vec, b_vec = a.ndim == 1, b.ndim == 1
    # 1-d operands are promoted as in the forward: a (k,) -> (1, k), b (k,) -> (k, 1)
    if b_vec:
        b = b[:, None]
        g = g[..., None]
    if a_vec:
        a = a[None, :]
        g = g[..., None, :]
    ga = gb = None
    if needs[0]:
        ga = np.matmul(g, np.swapaxes(b, -1, -2))  # (..., n, m) @ (..., m, k) -> (..., n, k)
        if a_vec:
            ga = ga[..., 0, :]
    if needs[1]:
        if b.ndim == 2 and g.ndim > 2:
            # b was shared by the whole batch: one (k, N) @ (N, m) product sums over it
            gb = a.reshape(-1, a.shape[-1]).T @ g.reshape(-1, g.shape[-1])
        else:
            gb = np.matmul(np.swapaxes(a, -1, -2), g)  # (..., k, n) @ (..., n, m) -> (..., k, m)
        if b_vec:
            gb = gb[..., 0]
    # broadcast batch dims are summed back by the tape (broadcasts=True)
    return ga, gb


@public(
    "torch.matmul",
    [
        case(A((3, 4)), A((4, 5))),
        case(A((4,)), A((4,))),
        case(A((3, 4)), A((4,))),
        case(A((4,)), A((4, 5))),
        case(A((2, 3, 4)), A((4, 5))),
        case(A((2, 1, 3, 4)), A((5, 4, 2))),
        case(A((4,)), A((2, 4, 3))),
        case(A((2, 3, 4)), A((4,))),
        case(A((3, 4)), A((2, 4, 5))),
        case(A((2, 3, 4)), A((4, 5), kind="const")),
        case(A((3, 4), kind="const"), A((2, 4, 5))),
    ],
    methods=("matmul", "__matmul__"),
)
def matmul(input: TensorLike, other: TensorLike) -> Tensor:
    """Matrix product as torch.matmul: 1-d operands are vectors, leading dims batch and broadcast."""
    a, b = _operands("matmul", input, other)
    sa, sb = a.data.shape, b.data.shape
    if not sa or not sb:
        raise ValueError(f"matmul: both operands need at least 1 dim, got shapes {sa} and {sb}")
    ka, kb = sa[-1], sb[-2] if len(sb) > 1 else sb[0]
    if ka != kb:
        raise ValueError(f"matmul: shapes {sa} and {sb} cannot be multiplied ({ka} != {kb})")
    try:
        np.broadcast_shapes(sa[:-2], sb[:-2])
    except ValueError:
        raise ValueError(
            f"matmul: batch dims {sa[:-2]} and {sb[:-2]} of shapes {sa} and {sb} do not broadcast"
        ) from None
    return _Matmul(a, b)


Tensor.__rmatmul__ = lambda self, other: matmul(other, self)  # type: ignore[method-assign]


# ----------------------------------------------------------------------------------- linear
@defop("linear", needs_mask=True)
def _Linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> Any:
    x2 = x if x.ndim == 2 else x.reshape(-1, x.shape[-1])  # (*, in) -> (N, in)
    out = x2 @ w.T  # (N, in) @ (in, out); BLAS reads the transposed view in place
    if b is not None:
        out += b
    if x.ndim != 2:
        out = out.reshape(*x.shape[:-1], w.shape[0])  # (N, out) -> (*, out)
    return out, (x2, w, x.shape)


@_Linear.defbackward
def _linear_backward(g: np.ndarray, saved: Any, needs: tuple[bool, ...]) -> Any:
    x2, w, x_shape = saved
    g2 = g if g.ndim == 2 else g.reshape(-1, g.shape[-1])  # (*, out) -> (N, out)
    gx = gw = gb = None
    if needs[0]:
        gx = g2 @ w  # (N, out) @ (out, in)
        if len(x_shape) != 2:
            gx = gx.reshape(x_shape)
    if needs[1]:
        gw = g2.T @ x2  # (out, N) @ (N, in)
    if needs[2]:
        gb = g2.sum(axis=0)
    return gx, gw, gb


@public(
    "torch.nn.functional.linear",
    [
        case(A((5, 3)), A((4, 3)), A((4,))),
        case(A((2, 5, 3)), A((4, 3))),
        case(A((3,)), A((4, 3)), A((4,))),
        case(A((2, 2, 5, 3)), A((4, 3)), A((4,))),
        case(A((5, 3), kind="const"), A((4, 3)), A((4,))),
        case(A((5, 3)), A((4, 3), kind="const"), A((4,), kind="const")),
        case(A((5, 3)), A((4, 3), kind="const"), bias=A((4,))),
    ],
)
def linear(input: TensorLike, weight: TensorLike, bias: TensorLike | None = None) -> Tensor:
    """input @ weight.T + bias for input (*, in), weight (out, in), bias (out,)."""
    x, w = _operands("linear", input, weight)
    xs, ws = x.data.shape, w.data.shape
    if len(ws) != 2 or not xs or xs[-1] != ws[1]:
        raise ValueError(
            f"linear: input of shape {xs} and weight of shape {ws} do not match (weight must be (out, in) "
            "with in the input's last size)"
        )
    if bias is not None:
        w, b = _operands("linear", w, bias)
        if b.data.shape != (ws[0],):
            raise ValueError(f"linear: bias of shape {b.data.shape} does not match weight of shape {ws}")
        return _Linear(x, w, b)
    return _Linear(x, w, None)
