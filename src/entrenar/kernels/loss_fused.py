"""Fused softmax cross-entropy over class logits: per-row losses in one pass, the gradient in another.

A fast path for `entrenar.ops.losses.cross_entropy` (no class weights, no label smoothing, logits
(M, C) float32/float64 C-contiguous, at least `MIN_SIZE` elements; `supports` says which). The op's
NumPy code stays the reference; it makes a temporary per step (x - max, exp, the sum, the log, the
gather of the target column, e / sum, the scaling, the scatter), eight passes over an (M, C) array.
Here, per row i with target t_i (any valid index; the op zeroes ignored rows itself)::

    m_i = max_c x_ic,   se_i = sum_c exp(x_ic - m_i),   loss_i = log(se_i) - (x_it - m_i)
    dx_ic = a_i exp(x_ic - m_i) / se_i  -  a_i [c == t_i]

for the per-row upstream factor a_i (the op's `at`). The forward saves (m_i, se_i) per row, and the
backward recomputes the exponentials instead of reading a saved (M, C) array.

Arithmetic: the differences x - m and the divisions are the reference's dtype operations; exp is
vmath's float32 one for float32 (within 1.2e-7 relative; libm's for float64), and se is summed in
float64 and rounded to the dtype (the reference sums pairwise in the dtype): results agree with the
reference to a few roundings (tests/kernels/test_loss_fused.py states the bounds).

One thread, as nn_fused's kernels: with numba's threads (prange over rows) the loss was slower, not
faster, in a training step on two cores shared with BLAS and other processes (numba's OpenMP threads
and OpenBLAS's then wait on each other); on one thread it took about a third of the reference's
time (fwd + bwd of (1024, 1000) float32 logits, measured under load: 50 ms against 140 ms).
Compilation is lazy, per dtype, cached on disk, as in `nn_fused`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from entrenar.kernels import vmath
from entrenar.kernels._lazy import compile_on_first_use, jit_group, probes

__all__ = [
    "MIN_SIZE",
    "available",
    "cross_entropy_backward",
    "cross_entropy_forward",
    "supports",
    "unavailable_reason",
]

# Below this many logits the op keeps its NumPy path (the op tests' small shapes exercise the reference);
# tests/kernels lower it to run the kernels on small arrays.
MIN_SIZE = 1 << 15

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _exp32(a: Any) -> Any:  # pragma: no cover - replaced by vmath's compiled version
    return np.float32(math.exp(a))


_load = compile_on_first_use(
    globals(),
    jit_group("_exp_minus", "_row_max", inline="always"),
    jit_group("_sum64", fastmath={"reassoc"}),
    jit_group("_ce_fwd_loop", "_ce_bwd_loop"),
    needs=(vmath.load,),  # vmath's float32 exp, which the loops inline
    bind={"_exp32": lambda: vmath.exp32},
)

available, unavailable_reason = probes(_load)


def supports(x: Any, weight: Any, label_smoothing: float) -> bool:
    """Whether the kernels take logits x: a C-contiguous float32/float64 (M, C) ndarray of at least
    `MIN_SIZE` elements, no class weights, no label smoothing, numba available (checked last)."""
    if weight is not None or label_smoothing != 0.0 or not isinstance(x, np.ndarray) or x.ndim != 2:
        return False
    ok = x.dtype in _DTYPES and x.flags.c_contiguous and x.size >= MIN_SIZE and x.shape[1] > 0
    return ok and _load() is None


# ---- loops ---------------------------------------------------------------------------------------------


def _exp_minus(x: Any, m: Any, single: bool) -> Any:
    """exp(x - m), the difference in the dtype (as the reference's x - max), the result in the dtype."""
    if single:
        return _exp32(x - m)
    return math.exp(x - m)


def _row_max(x: Any, i: int) -> Any:
    """max_c x[i, c], in four independent chains (a NaN gives NaN or a number, as the reference's
    max does not matter then: exp(NaN - m) makes the loss NaN either way)."""
    c = x.shape[1]
    m0 = m1 = m2 = m3 = x[i, 0]
    c4 = c - c % 4
    for j in range(0, c4, 4):
        m0 = max(m0, x[i, j])
        m1 = max(m1, x[i, j + 1])
        m2 = max(m2, x[i, j + 2])
        m3 = max(m3, x[i, j + 3])
    for j in range(c4, c):
        m0 = max(m0, x[i, j])
    return max(max(m0, m1), max(m2, m3))


def _sum64(e: Any) -> float:
    """sum of e in float64 (compiled with reassoc: summed in vector lanes)."""
    total = 0.0
    for j in range(e.shape[0]):
        total += np.float64(e[j])
    return total


def _ce_fwd_loop(x: Any, t: Any, single: bool, loss: Any, stats: Any) -> None:
    n, c = x.shape
    for i in range(n):
        e = np.empty(c, dtype=x.dtype)
        m = _row_max(x, i)
        for j in range(c):
            e[j] = _exp_minus(x[i, j], m, single)
        stats[i, 0] = m
        stats[i, 1] = _sum64(e)  # rounds to the dtype
        loss[i] = math.log(stats[i, 1]) - (x[i, t[i]] - m)


def _ce_bwd_loop(x: Any, t: Any, stats: Any, at: Any, single: bool, dx: Any) -> None:
    n, c = x.shape
    for i in range(n):
        m, se, a = stats[i, 0], stats[i, 1], at[i]
        for j in range(c):
            dx[i, j] = _exp_minus(x[i, j], m, single) / se * a
        dx[i, t[i]] -= a


# ---- entry points --------------------------------------------------------------------------------------


def _require(x: np.ndarray, t: np.ndarray) -> None:
    reason = _load()
    if reason is not None:
        raise RuntimeError(f"the fused cross-entropy kernels are unavailable: {reason}")
    if x.dtype not in _DTYPES or x.ndim != 2 or not x.flags.c_contiguous:
        raise ValueError(
            f"the fused cross-entropy kernels take C-contiguous (M, C) float32/float64 logits, got {x.dtype} "
            f"{x.shape}{'' if x.flags.c_contiguous else ', not C-contiguous'}"
        )
    if t.shape != (x.shape[0],) or t.dtype.kind not in "iu":
        raise ValueError(f"cross-entropy targets must be ({x.shape[0]},) integers, got {t.dtype} {t.shape}")
    if t.size and (t.min() < 0 or t.max() >= x.shape[1]):
        bad = t.min() if t.min() < 0 else t.max()
        raise IndexError(f"cross-entropy target {bad} is out of bounds for {x.shape[1]} classes")


def cross_entropy_forward(x: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(loss (M,), stats (M, 2)): each row's -log softmax(x)[t] and its (max, sum of exp(x - max)) in x's
    dtype, what `cross_entropy_backward` takes. t (M,) holds class indices in [0, C)."""
    _require(x, t)
    loss = np.empty(x.shape[0], dtype=x.dtype)
    stats = np.empty((x.shape[0], 2), dtype=x.dtype)
    _ce_fwd_loop(x, t, x.dtype == np.float32, loss, stats)
    return loss, stats


def cross_entropy_backward(x: np.ndarray, t: np.ndarray, stats: np.ndarray, at: np.ndarray) -> np.ndarray:
    """dx (M, C) = at_i (softmax(x_i) - onehot(t_i)) for per-row factors at (M,)."""
    _require(x, t)
    a = np.broadcast_to(np.asarray(at, dtype=x.dtype), (x.shape[0],))
    dx = np.empty_like(x)
    _ce_bwd_loop(x, t, stats, np.ascontiguousarray(a), x.dtype == np.float32, dx)
    return dx
