"""Dimension arguments as PyTorch reads them: negative dims count from the end, 0-d accepts 0 and -1."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["is_int", "normalize_dim", "normalize_dims", "reduction_axes"]


def is_int(v: Any) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def normalize_dim(op: str, dim: Any, shape: tuple[int, ...], ndim: int | None = None) -> int:
    """`dim` as a non-negative axis of a tensor of `shape`, or IndexError naming the op and shape.

    `ndim` overrides the number of dims (stack and unsqueeze accept one more than the input has).
    """
    n = len(shape) if ndim is None else ndim
    n = n if n else 1  # a 0-d tensor accepts dims -1 and 0, as in PyTorch
    if not is_int(dim):
        raise TypeError(f"{op}: dim must be an int, got {type(dim).__name__}")
    if not -n <= dim < n:
        raise IndexError(
            f"{op}: dim {dim} is out of range for a tensor of shape {shape} (expected in [{-n}, {n - 1}])"
        )
    return int(dim) % n


def normalize_dims(op: str, dims: Sequence[Any], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Several dims, each normalized; a dim named twice is an error."""
    out = tuple(normalize_dim(op, d, shape) for d in dims)
    if len(set(out)) != len(out):
        raise ValueError(f"{op}: dims {tuple(dims)} name a dimension twice (tensor shape {shape})")
    return out


def reduction_axes(op: str, dim: Any, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The sorted axes a reduction runs over: all of them for None or (), else the named dims."""
    if dim is None:
        return tuple(range(len(shape)))
    dims = (dim,) if is_int(dim) else tuple(dim)
    if not dims:
        return tuple(range(len(shape)))
    axes = normalize_dims(op, dims, shape)
    return tuple(sorted(axes)) if shape else ()
