"""Random train / validation / test splits by one seeded permutation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

__all__ = ["split_sizes", "train_val_test_split"]

T = TypeVar("T")


def split_sizes(n: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> tuple[int, int, int]:
    """(train, val, test) sizes: train = floor(f_train n), val = floor(f_val n), test the rest.

    Flooring is done with a 1e-9 tolerance so that 0.1 * 10 counts as 1. For the 10,605 movie-review
    sentences and (0.8, 0.1, 0.1): 8,484 / 1,060 / 1,061 (0.1 * 10,605 = 1,060.5; the half goes to test).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"split_sizes: n must be a non-negative int, got {n!r}")
    if isinstance(fractions, (str, bytes)) or len(fractions) != 3:
        raise ValueError(f"fractions must be three numbers (train, val, test), got {fractions!r}")
    fs = [float(f) for f in fractions]
    if not all(math.isfinite(f) and f >= 0 for f in fs) or fs[0] == 0 or abs(sum(fs) - 1.0) > 1e-6:
        raise ValueError(
            "fractions must be three non-negative numbers with train > 0 that sum to 1, "
            f"got {tuple(fractions)}"
        )
    n_train = math.floor(fs[0] * n + 1e-9)
    n_val = min(math.floor(fs[1] * n + 1e-9), n - n_train)
    return n_train, n_val, n - n_train - n_val


def train_val_test_split(
    examples: Sequence[T], fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> tuple[list[T], list[T], list[T]]:
    """(train, val, test) lists: `np.random.default_rng(seed).permutation(len(examples))` cut by
    `split_sizes` — the first n_train permuted indices are training, the next n_val validation."""
    n_train, n_val, _ = split_sizes(len(examples), fractions)
    order = np.random.default_rng(seed).permutation(len(examples))
    picked = [examples[int(i)] for i in order]
    return picked[:n_train], picked[n_train : n_train + n_val], picked[n_train + n_val :]
