"""The ops, one file per family (a family past ~500 lines is split in two, the second file named for
its part: arithmetic.py of elementwise, views.py of shape, normalization.py of nn, pointwise_losses.py of
losses; each family module re-exports its part). Importing this package registers every op and Tensor
method."""

from entrenar.ops import (
    arithmetic,
    elementwise,
    losses,
    matmul,
    nn,
    normalization,
    pointwise_losses,
    reduce,
    shape,
    views,
)

__all__ = [
    "arithmetic",
    "elementwise",
    "losses",
    "matmul",
    "nn",
    "normalization",
    "pointwise_losses",
    "reduce",
    "shape",
    "views",
]
