"""View ops: reshape (also view, flatten, squeeze, unsqueeze), permute (also transpose) and expand.

Their forwards return NumPy views of the input, so, as in PyTorch, the outputs share memory with it.
Three primitives carry the gradients: reshape, permute and expand. The helpers that read a tensor or
a size argument (`_tensor`, `_sizes`) live here; shape.py (indexing, cat/stack/split, gather) imports
them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from entrenar.autograd.registry import Arg, as_tensor, case, defop, public
from entrenar.ops.dims import is_int as _is_int
from entrenar.ops.dims import normalize_dim, normalize_dims
from entrenar.tensor import Tensor, TensorLike

__all__ = [
    "expand",
    "flatten",
    "permute",
    "reshape",
    "squeeze",
    "transpose",
    "unsqueeze",
]

A = Arg
Sizes = int | Sequence[int]


def _tensor(x: TensorLike) -> Tensor:
    return x if isinstance(x, Tensor) else as_tensor(x)


def _sizes(op: str, size: Sizes, more: tuple[int, ...]) -> tuple[int, ...]:
    """Sizes given as `f(t, 2, 3)` or `f(t, (2, 3))`."""
    if more:
        sizes: tuple[Any, ...] = (size, *more)
    elif _is_int(size):
        sizes = (size,)
    else:
        sizes = tuple(size)  # type: ignore[arg-type]
    if not all(_is_int(s) for s in sizes):
        raise TypeError(f"{op}: sizes must be ints, got {sizes}")
    return tuple(int(s) for s in sizes)


# ----------------------------------------------------------------------------------- reshape
@defop("reshape")
def _Reshape(x: np.ndarray, *, shape: tuple[int, ...]) -> Any:
    return x.reshape(shape), x.shape


@_Reshape.defbackward
def _reshape_backward(g: np.ndarray, shape: tuple[int, ...]) -> Any:
    return (g.reshape(shape),)


def _infer_shape(op: str, shape: tuple[int, ...], sizes: tuple[int, ...]) -> tuple[int, ...]:
    """Resolve one -1 in `sizes` so that it holds as many elements as `shape`."""
    n = math.prod(shape)
    free = [i for i, s in enumerate(sizes) if s == -1]
    if len(free) > 1 or any(s < -1 for s in sizes):
        raise ValueError(f"{op}: invalid shape {sizes} (at most one -1, no other negative size)")
    known = math.prod(s for s in sizes if s != -1)
    if free:
        if known == 0 or n % known:
            raise ValueError(f"{op}: shape {sizes} is invalid for input of shape {shape} ({n} elements)")
        return (*sizes[: free[0]], n // known, *sizes[free[0] + 1 :])
    if known != n:
        raise ValueError(f"{op}: shape {sizes} is invalid for input of shape {shape} ({n} elements)")
    return sizes


@public(
    "torch.reshape",
    [
        case(A((2, 3)), (3, 2)),
        case(A((2, 3, 4)), (-1, 4)),
        case(A((6,)), (2, -1, 3)),
        case(A(()), (1, 1)),
        case(A((1, 1)), ()),
        case(A((2, 3)), (-1,)),
    ],
    methods=("reshape",),
)
def reshape(input: TensorLike, shape: Sizes, *more: int) -> Tensor:
    """input with the same elements in a new shape (one size may be -1, inferred)."""
    x = _tensor(input)
    sizes = _infer_shape("reshape", x.data.shape, _sizes("reshape", shape, more))
    return _Reshape(x, shape=sizes)


def _view(self: Tensor, shape: Sizes, *more: int) -> Tensor:
    """`reshape` under PyTorch's other name (it never needs a copy check: NumPy copies if it must)."""
    x = _tensor(self)
    sizes = _infer_shape("view", x.data.shape, _sizes("view", shape, more))
    return _Reshape(x, shape=sizes)


Tensor.view = _view  # type: ignore[attr-defined]
Tensor.view_as = lambda self, other: _view(self, _tensor(other).data.shape)  # type: ignore[attr-defined]
Tensor.reshape_as = lambda self, other: reshape(self, _tensor(other).data.shape)  # type: ignore[attr-defined]


@public(
    "torch.flatten",
    [
        case(A((2, 3, 4))),
        case(A((2, 3, 4, 5)), 1, 2),
        case(A((2, 3, 4)), start_dim=1),
        case(A((2, 3, 4)), -2, -1),
        case(A(())),
    ],
    methods=("flatten",),
)
def flatten(input: TensorLike, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    """Merge dims start_dim..end_dim into one (a 0-d input becomes shape (1,))."""
    x = _tensor(input)
    shape = x.data.shape
    s = normalize_dim("flatten", start_dim, shape)
    e = normalize_dim("flatten", end_dim, shape)
    if s > e:
        raise ValueError(f"flatten: start_dim {start_dim} comes after end_dim {end_dim} (shape {shape})")
    new = (*shape[:s], math.prod(shape[s : e + 1]), *shape[e + 1 :])
    return _Reshape(x, shape=new)


@public(
    "torch.squeeze",
    [
        case(A((1, 3, 1, 2))),
        case(A((1, 3, 1)), 0),
        case(A((1, 3, 1)), -1),
        case(A((1, 3, 1)), 1),
        case(A((1, 3, 1)), (0, 2)),
        case(A((1,))),
    ],
    methods=("squeeze",),
)
def squeeze(input: TensorLike, dim: int | Sequence[int] | None = None) -> Tensor:
    """Remove size-1 dims: all of them, or those among dim (others are left alone, as in PyTorch)."""
    x = _tensor(input)
    shape = x.data.shape
    if dim is None:
        new = tuple(n for n in shape if n != 1)
    else:
        dims = normalize_dims("squeeze", (dim,) if _is_int(dim) else tuple(dim), shape)  # type: ignore[arg-type]
        new = tuple(n for i, n in enumerate(shape) if n != 1 or i not in dims)
    return _Reshape(x, shape=new)


@public(
    "torch.unsqueeze",
    [case(A((2, 3)), 0), case(A((2, 3)), -1), case(A((2, 3)), 1), case(A((2, 3)), -3), case(A(()), 0)],
    methods=("unsqueeze",),
)
def unsqueeze(input: TensorLike, dim: int) -> Tensor:
    """Insert a size-1 dim at dim (a negative dim counts from the end: dim + ndim + 1)."""
    x = _tensor(input)
    shape = x.data.shape
    d = normalize_dim("unsqueeze", dim, shape, ndim=x.data.ndim + 1)
    return _Reshape(x, shape=(*shape[:d], 1, *shape[d:]))


# ----------------------------------------------------------------------------------- permute
@defop("permute")
def _Permute(x: np.ndarray, *, dims: tuple[int, ...]) -> Any:
    return x.transpose(dims), dims


@_Permute.defbackward
def _permute_backward(g: np.ndarray, dims: tuple[int, ...]) -> Any:
    return (g.transpose(np.argsort(dims)),)


@public(
    "torch.permute",
    [case(A((2, 3, 4)), (2, 0, 1)), case(A((2, 3, 4)), (-1, 0, 1)), case(A((3,)), (0,))],
    methods=("permute",),
)
def permute(input: TensorLike, dims: Sizes, *more: int) -> Tensor:
    """input with its dims reordered: output dim i is input dim dims[i]."""
    x = _tensor(input)
    shape = x.data.shape
    order = normalize_dims("permute", _sizes("permute", dims, more), shape)
    if len(order) != x.data.ndim:
        raise ValueError(f"permute: dims {order} do not match the {x.data.ndim} dims of shape {shape}")
    return _Permute(x, dims=order)


@public(
    "torch.transpose",
    [case(A((2, 3)), 0, 1), case(A((2, 3, 4)), -1, 0), case(A((2, 3, 4)), 1, 1)],
    methods=("transpose",),
)
def transpose(input: TensorLike, dim0: int, dim1: int) -> Tensor:
    """input with dims dim0 and dim1 swapped."""
    x = _tensor(input)
    shape = x.data.shape
    order = list(range(x.data.ndim))
    a, b = normalize_dim("transpose", dim0, shape), normalize_dim("transpose", dim1, shape)
    if x.data.ndim:
        order[a], order[b] = order[b], order[a]
    return _Permute(x, dims=tuple(order))


# ----------------------------------------------------------------------------------- expand
@defop("expand", broadcasts=True)
def _Expand(x: np.ndarray, *, shape: tuple[int, ...]) -> Any:
    return np.broadcast_to(x, shape), None  # a read-only view, as PyTorch's expand


@_Expand.defbackward
def _expand_backward(g: np.ndarray, _: None) -> Any:
    return (g,)  # the tape sums the expanded dims back (unbroadcast)


@public(
    "torch.Tensor.expand",
    [
        case(A((3, 1)), (3, 4)),
        case(A((3, 1)), (2, -1, 4)),
        case(A((1,)), (2, 3)),
        case(A(()), (2,)),
        case(A((2, 3)), (2, 3)),
    ],
    methods=("expand",),
)
def expand(input: TensorLike, size: Sizes, *more: int) -> Tensor:
    """A view of input with size-1 dims repeated to `size` (-1 keeps a size; new dims go in front)."""
    x = _tensor(input)
    shape = x.data.shape
    sizes = _sizes("expand", size, more)
    lead = len(sizes) - len(shape)
    if lead < 0:
        raise ValueError(f"expand: sizes {sizes} have fewer dims than the tensor's shape {shape}")
    new: list[int] = []
    for i, s in enumerate(sizes):
        if i < lead:
            if s < 0:
                raise ValueError(f"expand: size {s} is invalid for the new leading dim {i} (sizes {sizes})")
            new.append(s)
            continue
        n = shape[i - lead]
        if s == -1 or s == n:
            new.append(n)
        elif n == 1 and s >= 0:
            new.append(s)
        else:
            raise ValueError(
                f"expand: the expanded size {s} must match the existing size {n} at non-singleton "
                f"dim {i} (sizes {sizes}, tensor shape {shape})"
            )
    return _Expand(x, shape=tuple(new))


Tensor.expand_as = lambda self, other: expand(self, _tensor(other).data.shape)  # type: ignore[attr-defined]
