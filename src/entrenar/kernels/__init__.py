"""Fast paths, each held equal to a plain-NumPy reference by a test.

The optimizers call `entrenar.kernels.sgd_step` and `entrenar.kernels.adam_step` by attribute lookup
at every step. These take the fused numba kernel (`optim_fused.py`, one multi-threaded pass over
memory, bit-for-bit equal to the reference) whenever it accepts the arrays, and the plain-NumPy
reference (`optim_reference.py`, the spec) otherwise: numba missing or disabled
(`NUMBA_DISABLE_JIT=1`), non-contiguous or read-only arrays, other dtypes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from entrenar.kernels import optim_fused, optim_reference

__all__ = ["adam_step", "sgd_step"]


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
