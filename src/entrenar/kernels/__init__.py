"""Fast paths, each held equal to a plain-NumPy reference by a test.

The optimizers call `entrenar.kernels.sgd_steps` and `entrenar.kernels.adam_steps` (one parameter
group at a time) by attribute lookup at every step. These take the fused numba kernel (`optim_fused.py`,
one pass over memory, split over threads for large groups, bit-for-bit equal to the reference) for
every array it accepts, and the plain-NumPy reference (`optim_reference.py`, the spec) for the others:
numba missing or disabled (`NUMBA_DISABLE_JIT=1`), non-contiguous or read-only arrays, other dtypes.
`sgd_step` / `adam_step` do the same for one array.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from entrenar.kernels import optim_fused, optim_reference

__all__ = ["adam_step", "adam_steps", "sgd_step", "sgd_steps"]


def sgd_step(param: np.ndarray, grad: np.ndarray, momentum_buffer: np.ndarray | None, **hyper: Any) -> None:
    """One SGD update of one parameter array, in place (see optim_reference.sgd_step)."""
    if optim_fused.supports(param, grad, momentum_buffer):
        optim_fused.sgd_step(param, grad, momentum_buffer, **hyper)
    else:
        optim_reference.sgd_step(param, grad, momentum_buffer, **hyper)


def adam_step(
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    max_exp_avg_sq: np.ndarray | None,
    **hyper: Any,
) -> None:
    """One Adam/AdamW update of one parameter array, in place (see optim_reference.adam_step)."""
    if optim_fused.supports(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq):
        optim_fused.adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, **hyper)
    else:
        optim_reference.adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, **hyper)


def sgd_steps(
    updates: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray | None, bool]], **hyper: Any
) -> None:
    """`sgd_step` on each (param, grad, momentum_buffer, first_step) of one parameter group: the arrays
    the fused kernel takes in one `optim_fused.sgd_steps` call, the others by the reference."""
    fused = [u for u in updates if optim_fused.supports(u[0], u[1], u[2])]
    if fused:
        optim_fused.sgd_steps(fused, **hyper, checked=True)  # supports() made the checks
    if len(fused) < len(updates):
        for p, g, b, first in updates:
            if not optim_fused.supports(p, g, b):
                optim_reference.sgd_step(p, g, b, first_step=first, **hyper)


def adam_steps(
    updates: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None, int]],
    **hyper: Any,
) -> None:
    """`adam_step` on each (param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step) of one parameter
    group: the arrays the fused kernel takes in one `optim_fused.adam_steps` call, the others by the
    reference."""
    fused = [u for u in updates if optim_fused.supports(*u[:5])]
    if fused:
        optim_fused.adam_steps(fused, **hyper, checked=True)  # supports() made the checks
    if len(fused) < len(updates):
        for p, g, m, v, vmax, step in updates:
            if not optim_fused.supports(p, g, m, v, vmax):
                optim_reference.adam_step(p, g, m, v, vmax, step=step, **hyper)
