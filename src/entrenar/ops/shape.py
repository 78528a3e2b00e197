"""Shape ops: reshape/flatten/squeeze, permute/transpose, expand, indexing, cat/stack/split, gather.

Forwards return NumPy views where NumPy can (reshape, permute, basic indexing, expand), so, as in
PyTorch, these outputs share memory with their input. Seven primitives carry the gradients:
reshape (also squeeze, unsqueeze, flatten, view), permute (also transpose), expand, getitem (also
narrow, split, chunk), cat, stack and gather.

This file holds indexing (getitem, narrow), cat/stack, split/chunk and gather; the view ops (reshape,
flatten, squeeze, unsqueeze, permute, transpose, expand) are in views.py and re-exported here, so
this module still names the whole family.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from entrenar.autograd.registry import Arg, case, defop, public
from entrenar.ops.dims import is_int as _is_int
from entrenar.ops.dims import normalize_dim
from entrenar.ops.views import _tensor, expand, flatten, permute, reshape, squeeze, transpose, unsqueeze
from entrenar.tensor import Tensor, TensorLike

__all__ = [
    "cat",
    "chunk",
    "expand",
    "flatten",
    "gather",
    "getitem",
    "narrow",
    "permute",
    "reshape",
    "split",
    "squeeze",
    "stack",
    "transpose",
    "unsqueeze",
]

A = Arg


# ----------------------------------------------------------------------------------- indexing
@defop("getitem")
def _GetItem(x: np.ndarray, *, basic: tuple[Any, ...] | None, advanced: tuple[Any, ...] | None) -> Any:
    out = x if basic is None else x[basic]  # basic indexing: a view
    if advanced is not None:
        out = out[advanced]  # advanced indexing: a copy
    return out, (x.shape, basic, advanced)


@_GetItem.defbackward
def _getitem_backward(g: np.ndarray, saved: Any) -> Any:
    shape, basic, advanced = saved
    gx = np.zeros(shape, dtype=g.dtype)
    if advanced is None:
        gx[basic] = g
    else:
        np.add.at(gx if basic is None else gx[basic], advanced, g)  # a repeated index accumulates
    return (gx,)


def _list_as_tuple(index: Any) -> bool:
    """PyTorch (2.x) reads a list holding a slice, None, Ellipsis, a sequence or a Tensor as a tuple."""
    if not isinstance(index, list) or len(index) >= 32:
        return False
    tuple_like = (slice, Sequence, Tensor, np.ndarray)
    return any(it is None or it is Ellipsis or isinstance(it, tuple_like) for it in index)


def _index(index: Any) -> tuple[tuple[Any, ...] | None, tuple[Any, ...] | None]:
    """The index as NumPy's basic part and advanced part, applied in that order.

    PyTorch applies ints (and slices, None) before index arrays, so `x[1, ..., [0, 2]]` keeps the
    array's dim where it stands; NumPy would count the int as an index array and move the result's
    dims to the front. Splitting an index that mixes the two reproduces PyTorch's order.
    """
    items = index if isinstance(index, tuple) or _list_as_tuple(index) else (index,)
    conv: list[Any] = []
    for it in items:
        if it is None or it is Ellipsis or isinstance(it, slice) or _is_int(it):
            conv.append(it)
            continue
        arr = it.data if isinstance(it, Tensor) else np.asarray(it)
        if arr.dtype.kind not in "biu":
            raise IndexError(f"getitem: index tensors must be integer or bool, got dtype {arr.dtype}")
        conv.append(arr)
    arrays = [isinstance(it, np.ndarray) for it in conv]
    if not any(arrays):
        if not any(it is Ellipsis for it in conv):
            conv.append(Ellipsis)  # x[i, j] of a 2-d array then gives a 0-d view, not a NumPy scalar
        return tuple(conv), None
    if not any(_is_int(it) for it in conv):
        return None, tuple(conv)
    basic: list[Any] = []
    advanced: list[Any] = []
    for it, is_array in zip(conv, arrays, strict=True):
        if is_array:
            # a bool mask spans as many dims as it has
            basic.extend([slice(None)] * (it.ndim if it.dtype == np.bool_ else 1))
            advanced.append(it)
        elif _is_int(it):
            basic.append(it)
        else:
            basic.append(it)
            advanced.append(it if it is Ellipsis else slice(None))
    return tuple(basic), tuple(advanced)


@public(
    "torch.Tensor.__getitem__",
    [
        case(A((4, 5)), (slice(1, 3), 2)),
        case(A((5, 3)), [0, 2, 2, 4]),
        case(A((4, 5)), 1),
        case(A((4, 5)), (-1, -2)),
        case(A((2, 3, 4)), (Ellipsis, slice(None, None, 2))),
        case(A((3, 4)), (None, slice(1, None), None)),
        case(A((3, 4)), (slice(None), [3, 0, 3])),
        case(A((3, 4, 5)), ([0, 2], slice(None), [1, 1])),
        case(A((3, 4)), A((3, 4), kind="bool")),
        case(A((3, 4)), [True, False, True]),
        case(A((4, 5)), A((2, 3), 0, 4, kind="int")),
        case(A((2, 3, 4)), (1, Ellipsis, [0, 0, 3])),
    ],
    name="getitem",
    methods=("__getitem__",),
)
def getitem(input: TensorLike, index: Any) -> Tensor:
    """input[index]: ints, slices, None, Ellipsis, integer arrays/Tensors and bool masks."""
    x = _tensor(input)
    basic, advanced = _index(index)
    try:
        return _GetItem(x, basic=basic, advanced=advanced)
    except IndexError as e:
        raise IndexError(f"getitem: {e} (tensor shape {x.data.shape})") from e


@public(
    "torch.narrow",
    [case(A((5, 4)), 0, 1, 3), case(A((5, 4)), -1, 2, 2), case(A((5, 4)), 0, -2, 2)],
    methods=("narrow",),
)
def narrow(input: TensorLike, dim: int, start: int, length: int) -> Tensor:
    """The slice start:start+length of input along dim (a view; a negative start counts from the end)."""
    x = _tensor(input)
    shape = x.data.shape
    d = normalize_dim("narrow", dim, shape)
    n = shape[d] if shape else 1
    s = start + n if start < 0 else start
    if not (0 <= s <= n and length >= 0 and s + length <= n):
        raise IndexError(f"narrow: start {start}, length {length} out of range for dim {d} of shape {shape}")
    return _GetItem(x, basic=(*(slice(None),) * d, slice(s, s + length), Ellipsis), advanced=None)


# ----------------------------------------------------------------------------------- join
@defop("cat")
def _Cat(*xs: np.ndarray, dim: int) -> Any:
    ends = np.cumsum([x.shape[dim] for x in xs])[:-1]
    return np.concatenate(xs, axis=dim), (dim, ends)


@_Cat.defbackward
def _cat_backward(g: np.ndarray, saved: Any) -> Any:
    dim, ends = saved
    return tuple(np.split(g, ends, axis=dim))


@defop("stack")
def _Stack(*xs: np.ndarray, dim: int) -> Any:
    return np.stack(xs, axis=dim), dim


@_Stack.defbackward
def _stack_backward(g: np.ndarray, dim: int) -> Any:
    lead: tuple[Any, ...] = (slice(None),) * dim
    return tuple(g[(*lead, i)] for i in range(g.shape[dim]))


def _tensors(op: str, tensors: Sequence[TensorLike]) -> list[Tensor]:
    if isinstance(tensors, Tensor) or not isinstance(tensors, Sequence) or not tensors:
        raise TypeError(f"{op}: expected a non-empty list or tuple of tensors")
    return [_tensor(t) for t in tensors]


@public(
    "torch.cat",
    [
        case([A((2, 3)), A((4, 3))]),
        case([A((2, 3)), A((2, 1)), A((2, 2))], 1),
        case([A((2, 3, 4)), A((2, 3, 4), kind="const")], -1),
        case([A((3,))], dim=0),
        case((A((2, 0)), A((2, 3))), dim=1),
    ],
)
def cat(tensors: Sequence[TensorLike], dim: int = 0) -> Tensor:
    """The tensors joined along an existing dim; all other sizes must agree."""
    ts = _tensors("cat", tensors)
    shapes = [t.data.shape for t in ts]
    ref = shapes[0]
    if not ref:
        raise ValueError(f"cat: zero-dimensional tensors cannot be concatenated (shapes {shapes})")
    d = normalize_dim("cat", dim, ref)
    for s in shapes:
        if len(s) != len(ref) or s[:d] != ref[:d] or s[d + 1 :] != ref[d + 1 :]:
            raise ValueError(f"cat: sizes must match except in dim {d}; got shapes {shapes}")
    return _Cat(*ts, dim=d)


@public(
    "torch.stack",
    [
        case([A((2, 3)), A((2, 3))]),
        case([A((2, 3)), A((2, 3), kind="const"), A((2, 3))], -1),
        case([A((3,)), A((3,))], dim=1),
        case([A(())]),
    ],
)
def stack(tensors: Sequence[TensorLike], dim: int = 0) -> Tensor:
    """The tensors (all of one shape) joined along a new dim."""
    ts = _tensors("stack", tensors)
    shapes = [t.data.shape for t in ts]
    if any(s != shapes[0] for s in shapes):
        raise ValueError(f"stack: expects tensors of equal shape, got shapes {shapes}")
    d = normalize_dim("stack", dim, shapes[0], ndim=len(shapes[0]) + 1)
    return _Stack(*ts, dim=d)


# ----------------------------------------------------------------------------------- split
def _pieces(x: Tensor, d: int, sizes: Sequence[int]) -> tuple[Tensor, ...]:
    starts = np.cumsum([0, *sizes])
    lead = (slice(None),) * d
    return tuple(
        _GetItem(x, basic=(*lead, slice(int(s), int(s) + n), Ellipsis), advanced=None)
        for s, n in zip(starts, sizes, strict=False)
    )


@public(
    "torch.split",
    [
        case(A((5, 4)), 2),
        case(A((5, 4)), [1, 3, 1]),
        case(A((4, 6)), 4, dim=1),
        case(A((5, 4)), (2, 3), -2),
        case(A((4, 3)), [4, 0]),
    ],
    methods=("split",),
)
def split(
    tensor: TensorLike, split_size_or_sections: int | Sequence[int], dim: int = 0
) -> tuple[Tensor, ...]:
    """Views of pieces along dim: of one size (the last may be smaller), or of the given sizes."""
    x = _tensor(tensor)
    shape = x.data.shape
    d = normalize_dim("split", dim, shape)
    n = shape[d]
    if _is_int(split_size_or_sections):
        size = int(split_size_or_sections)  # type: ignore[arg-type]
        if size < 0 or (size == 0 and n != 0):
            raise ValueError(f"split: split size {size} is invalid for dim {d} of shape {shape}")
        sizes = [size] * (n // size) + ([n % size] if n % size else []) if size else [0]
    else:
        sizes = [int(s) for s in split_size_or_sections]  # type: ignore[union-attr]
        if any(s < 0 for s in sizes) or sum(sizes) != n:
            raise ValueError(f"split: sizes {sizes} do not sum to the size {n} of dim {d} of shape {shape}")
    return _pieces(x, d, sizes)


@public(
    "torch.chunk",
    [
        case(A((5, 4)), 2),
        case(A((5, 4)), 3),
        case(A((6, 4)), 4),
        case(A((4, 7)), 3, 1),
        case(A((4, 5)), 3, -1),
    ],
    methods=("chunk",),
)
def chunk(input: TensorLike, chunks: int, dim: int = 0) -> tuple[Tensor, ...]:
    """Up to `chunks` views along dim, each ceil(n / chunks) long (the last may be shorter, or fewer)."""
    x = _tensor(input)
    shape = x.data.shape
    d = normalize_dim("chunk", dim, shape)
    if not _is_int(chunks) or chunks <= 0:
        raise ValueError(f"chunk: chunks must be a positive int, got {chunks!r}")
    n = shape[d]
    size = -(-n // chunks)
    if size == 0:
        return _pieces(x, d, [0] * chunks)
    return _pieces(x, d, [size] * (n // size) + ([n % size] if n % size else []))


# ----------------------------------------------------------------------------------- gather
@defop("gather")
def _Gather(x: np.ndarray, *, dim: int, index: np.ndarray) -> Any:
    # torch lets index be smaller than input along the other dims: look only at that corner
    corner = tuple(slice(None) if d == dim else slice(0, n) for d, n in enumerate(index.shape))
    out = np.take_along_axis(x[corner], index, axis=dim)
    return out, (x.shape, dim, index, corner)


@_Gather.defbackward
def _gather_backward(g: np.ndarray, saved: Any) -> Any:
    shape, dim, index, corner = saved
    gx = np.zeros(shape, dtype=g.dtype)
    # scatter-add: out[..., i, ...] came from input[..., index[..., i, ...], ...]; duplicates add up
    grid = list(np.ix_(*(range(n) for n in index.shape))) if index.ndim else []
    if index.ndim:
        grid[dim] = index
    np.add.at(gx[corner], tuple(grid), g)
    return (gx,)


@public(
    "torch.gather",
    [
        case(A((3, 4)), 1, A((3, 5), 0, 4, kind="int")),
        case(A((3, 4)), 0, A((2, 4), 0, 3, kind="int")),
        case(A((4, 5)), 1, A((2, 3), 0, 5, kind="int")),
        case(A((2, 3, 4)), -1, A((2, 3, 1), 0, 4, kind="int")),
        case(A((5,)), 0, A((7,), 0, 5, kind="int")),
        case(A(()), -1, A((), 0, 1, kind="int")),
    ],
    methods=("gather",),
)
def gather(input: TensorLike, dim: int, index: TensorLike) -> Tensor:
    """Values of input along dim at index (`out[i][j] = input[i][index[i][j]]` for dim=1)."""
    x = _tensor(input)
    idx = index.data if isinstance(index, Tensor) else np.asarray(index)
    shape = x.data.shape
    if idx.dtype.kind not in "iu":
        raise TypeError(f"gather: index must be an integer tensor, got dtype {idx.dtype}")
    if idx.ndim != x.data.ndim:
        raise ValueError(f"gather: index (shape {idx.shape}) must have as many dims as input (shape {shape})")
    d = normalize_dim("gather", dim, shape)
    if not shape:  # a 0-d input: gather from its one-element 1-d view
        return reshape(gather(reshape(x, (1,)), 0, idx.reshape(1)), ())
    for k, (ni, nx) in enumerate(zip(idx.shape, shape, strict=True)):
        if k != d and ni > nx:
            raise ValueError(
                f"gather: index shape {idx.shape} exceeds input shape {shape} at dim {k} (dim is {d})"
            )
    if idx.size and (idx.min() < 0 or (shape and idx.max() >= shape[d])):
        raise IndexError(
            f"gather: index out of range [0, {shape[d] if shape else 1}) for input of shape {shape} "
            f"along dim {d} (index min {idx.min()}, max {idx.max()})"
        )
    return _Gather(x, dim=d, index=idx)
