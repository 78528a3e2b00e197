"""Fused scaled-dot-product attention, forward and backward, one (batch, head) pair at a time.

A fast path for `entrenar.ops.nn.scaled_dot_product_attention`, whose plain-NumPy code stays the
reference. It takes 4-D query, key and value of the same (B, H) batch, float32 or float64, with no
mask or the causal one, and no dropout (`supports` says which). Per pair, with q (L, E), k (S, E),
v (S, Ev), scale c and the causal limit n_i = min(i + 1, S) (n_i = S without the mask)::

    s_ij = c sum_e q_ie k_je                     j < n_i
    p_ij = exp(s_ij - max_j s_ij) / sum_j exp(s_ij - max_j s_ij),   0 for j >= n_i
    o_i  = sum_j p_ij v_j

and, for the upstream gradient g (L, Ev)::

    dv_j  = sum_i p_ij g_i
    dp_ij = g_i . v_j
    ds_ij = c p_ij (dp_ij - sum_j p_ij dp_ij)
    dq_i  = sum_j ds_ij k_j,      dk_j = sum_i ds_ij q_i

Why it is faster than the reference (two batched BLAS products, a mask add, four softmax passes
over (B, H, L, S) arrays, and four more products in the backward): the causal mask halves the work
(keys past the query are never touched), and the softmax is done on one row while it is in cache.
The products run four rows (or four keys) a pass, so each value loaded feeds four multiply-adds;
one row at a time they were load/store-bound. Measured on one layer of the GPT benchmark's attention
(B 8, H 4, T 128, D 64, causal, float32, one thread, best of 30): forward 4.9 -> 3.4 ms and backward
7.0 -> 4.8 ms from that change.

One thread, one (batch, head) pair after another. The loops were once compiled with prange (one
task per pair over numba's threads); in a training step they sit between GEMMs, and numba's threads
then wait on OpenBLAS's spinning ones (see optim_fused): bench_gpt.py's step took 196-235 ms with
them and 159-171 ms on one thread (4 interleaved rounds, same run), as with the reference (159-193).

Layout. The inputs may be any strided views (the heads split out of a (B, T, C) projection are
(B, H, T, D) views of a (B, T, H, D) buffer): each task copies its pair's rows into contiguous
scratch arrays first. The outputs (o, dq, dk, dv) are written into (B, T, H, D) buffers and returned
as (B, H, T, D) views of them, so that merging the heads back ((B, H, T, D) -> (B, T, H * D)) is
a reshape without a copy. The residual for the backward is p (B, H, L, S), zero above the mask.

Arithmetic. The products (scores, dp, o, dq, dk, dv) are loops in the dtype compiled with fastmath
"contract" and "reassoc" only: fused multiply-adds and dot products summed in vector lanes, as BLAS
computes the reference's products (in its own order); without them the dot products ran scalar,
several times slower. The softmax is compiled without fastmath, in the reference's order of
operations, its float32 exponentials from vmath's vectorizable float32 exp (within 1.2e-7 relative; the
reference uses NumPy's float32 exp). Results agree with the reference to a few roundings relative
to the size of the terms, not bit for bit (tests/kernels/test_attention_fused.py states the bounds).

Compilation is lazy, as in `nn_fused`: numba is imported on first use and the loops are compiled per
dtype and layout, cached on disk.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from entrenar.kernels import vmath
from entrenar.kernels._lazy import compile_on_first_use, jit_group, probes

__all__ = [
    "MIN_WORK",
    "attention_backward",
    "attention_forward",
    "available",
    "supports",
    "unavailable_reason",
]

# Below this many score elements (B * H * L * S) the op keeps its NumPy path: the op tests (small
# shapes) then exercise the reference itself. tests/kernels lower it to run the kernels on small arrays.
MIN_WORK = 1 << 15

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


_load = compile_on_first_use(
    globals(),
    # the products: fused multiply-adds and sums in vector lanes (see "Arithmetic" above)
    jit_group("_scores", "_axpy_rows", "_axpy_cols", fastmath={"contract", "reassoc"}),
    jit_group("_prefix_sum64", fastmath={"reassoc"}),
    jit_group("_prefix_max", "_softmax_row", "_copy_head", "_limits"),
    jit_group("_attn_fwd_loop", "_attn_bwd_loop"),  # one thread: see the module docstring
    needs=(vmath.load,),  # vmath's float32 exp, which the softmax inlines
    bind={"_exp32": lambda: vmath.exp32},
)

available, unavailable_reason = probes(_load)


def supports(q: Any, k: Any, v: Any, has_bias: bool, is_causal: bool, dropout_p: float) -> bool:
    """Whether the kernels take this call: q (B, H, L, E), k (B, H, S, E), v (B, H, S, Ev) ndarrays of
    one float dtype with the same (B, H), no mask other than the causal one (has_bias False unless
    is_causal), no dropout, at least `MIN_WORK` score elements, and numba available (checked last)."""
    if not (isinstance(q, np.ndarray) and isinstance(k, np.ndarray) and isinstance(v, np.ndarray)):
        return False
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4 or dropout_p != 0.0 or (has_bias and not is_causal):
        return False
    if q.dtype not in _DTYPES or not q.dtype == k.dtype == v.dtype:
        return False
    if q.shape[:2] != k.shape[:2] or k.shape[:2] != v.shape[:2] or k.shape[2] != v.shape[2]:
        return False
    if q.shape[3] != k.shape[3] or q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] < MIN_WORK:
        return False
    return _load() is None


# ---- loops -----------------------------------------------------------------------------------------------
# The products (`_scores`, `_dots`, `_axpy_rows`) are compiled with fastmath "contract" and "reassoc" only:
# fused multiply-adds and sums split over vector lanes, as BLAS does them (the reference is BLAS); no
# flags that assume finite values. The softmax (`_softmax_row`) and the loops around them are compiled
# without fastmath: the float32 exp's rounding trick must not be reassociated away.


def _exp32(a: Any) -> Any:  # pragma: no cover - replaced by vmath's compiled version
    return np.float32(math.exp(a))


def _scores(a: Any, b: Any, n_of: Any, out: Any) -> None:
    """out[i, j] = sum_e a[i, e] b[j, e] for j < n_of[i]: rows of a against rows of b (dot products),
    four j at a time (each a[i, e] loaded once for four products)."""
    zero = a[0, 0] - a[0, 0]
    for i in range(a.shape[0]):
        n = n_of[i]
        n4 = n - n % 4
        for j in range(0, n4, 4):
            s0 = s1 = s2 = s3 = zero
            for e in range(a.shape[1]):
                c = a[i, e]
                s0 += c * b[j, e]
                s1 += c * b[j + 1, e]
                s2 += c * b[j + 2, e]
                s3 += c * b[j + 3, e]
            out[i, j], out[i, j + 1], out[i, j + 2], out[i, j + 3] = s0, s1, s2, s3
        for j in range(n4, n):
            acc = zero
            for e in range(a.shape[1]):
                acc += a[i, e] * b[j, e]
            out[i, j] = acc


def _axpy_rows(w: Any, x: Any, n_of: Any, out: Any) -> None:
    """out[i] = sum_j w[i, j] x[j] for j < n_of[i]: each output row a sum of rows of x, four rows of x a
    pass (one load and store of out[i] for four multiply-adds)."""
    for i in range(w.shape[0]):
        n = n_of[i]
        n4 = n - n % 4
        for e in range(out.shape[1]):
            out[i, e] = 0.0
        for j in range(0, n4, 4):
            c0, c1, c2, c3 = w[i, j], w[i, j + 1], w[i, j + 2], w[i, j + 3]
            for e in range(out.shape[1]):
                out[i, e] += c0 * x[j, e] + c1 * x[j + 1, e] + c2 * x[j + 2, e] + c3 * x[j + 3, e]
        for j in range(n4, n):
            c = w[i, j]
            for e in range(out.shape[1]):
                out[i, e] += c * x[j, e]


def _axpy_cols(w: Any, x: Any, n_of: Any, out: Any) -> None:
    """out[j] = sum_i w[i, j] x[i] over the i with j < n_of[i]: w transposed, by rows of w, four rows a
    pass. n_of never decreases (the causal limits and the full one both grow with i), so the keys all
    four rows see are those of the first, and each of the other three adds its own few after."""
    for j in range(out.shape[0]):
        for e in range(out.shape[1]):
            out[j, e] = 0.0
    rows = w.shape[0]
    r4 = rows - rows % 4
    for i in range(0, r4, 4):
        n = n_of[i]
        for j in range(n):
            c0, c1, c2, c3 = w[i, j], w[i + 1, j], w[i + 2, j], w[i + 3, j]
            for e in range(out.shape[1]):
                out[j, e] += c0 * x[i, e] + c1 * x[i + 1, e] + c2 * x[i + 2, e] + c3 * x[i + 3, e]
        for r in range(1, 4):
            for j in range(n, n_of[i + r]):
                c = w[i + r, j]
                for e in range(out.shape[1]):
                    out[j, e] += c * x[i + r, e]
    for i in range(r4, rows):
        for j in range(n_of[i]):
            c = w[i, j]
            for e in range(out.shape[1]):
                out[j, e] += c * x[i, e]


def _prefix_max(s: Any, n: int) -> Any:
    """max(s[:n]), n >= 1, in four independent chains (a NaN gives NaN or a number: the row is NaN either
    way, through exp(NaN - m) and its sum)."""
    m0 = m1 = m2 = m3 = s[0]
    n4 = n - n % 4
    for j in range(0, n4, 4):
        m0 = max(m0, s[j])
        m1 = max(m1, s[j + 1])
        m2 = max(m2, s[j + 2])
        m3 = max(m3, s[j + 3])
    for j in range(n4, n):
        m0 = max(m0, s[j])
    return max(max(m0, m1), max(m2, m3))


def _prefix_sum64(s: Any, n: int) -> float:
    """sum(s[:n]) in float64 (compiled with reassoc: summed in vector lanes)."""
    total = 0.0
    for j in range(n):
        total += np.float64(s[j])
    return total


def _softmax_row(s: Any, n: int, scale: Any, single: bool) -> None:
    """s[:n] = softmax(s[:n] * scale), s[n:] = 0, in place: the reference's operations, with the sum of the
    exponentials taken in float64 (in vector lanes; the reference sums pairwise in the dtype) and
    rounded to the dtype. The maximum and the sum were chains of dependent operations, one element a
    step: 40% of the forward's time."""
    for j in range(n):
        s[j] *= scale
    m = _prefix_max(s, n)
    if single:
        for j in range(n):
            s[j] = _exp32(s[j] - m)
    else:
        for j in range(n):
            s[j] = math.exp(s[j] - m)
    total = s.dtype.type(_prefix_sum64(s, n))
    for j in range(n):
        s[j] /= total
    for j in range(n, s.shape[0]):
        s[j] = 0.0


def _copy_head(x: Any, b: int, h: int, out: Any) -> None:
    for t in range(out.shape[0]):
        for e in range(out.shape[1]):
            out[t, e] = x[b, h, t, e]


def _limits(L: int, S: int, causal: bool) -> Any:
    """n_of[i]: how many keys query i sees (i + 1 under the causal mask, at most S)."""
    n_of = np.empty(L, dtype=np.int64)
    for i in range(L):
        n_of[i] = min(i + 1, S) if causal else S
    return n_of


def _attn_fwd_loop(q: Any, k: Any, v: Any, scale: Any, causal: bool, single: bool, out: Any, p: Any) -> None:
    # out (B, L, H, Ev), p (B, H, L, S)
    nb, nh, L, E = q.shape
    S, Ev = k.shape[2], v.shape[3]
    n_of = _limits(L, S, causal)
    for task in range(nb * nh):
        b, h = task // nh, task % nh
        qh = np.empty((L, E), dtype=q.dtype)
        kh = np.empty((S, E), dtype=q.dtype)
        vh = np.empty((S, Ev), dtype=q.dtype)
        oh = np.empty((L, Ev), dtype=q.dtype)
        _copy_head(q, b, h, qh)
        _copy_head(k, b, h, kh)
        _copy_head(v, b, h, vh)
        ph = p[b, h]
        _scores(qh, kh, n_of, ph)
        for i in range(L):
            _softmax_row(ph[i], n_of[i], scale, single)
        _axpy_rows(ph, vh, n_of, oh)
        for i in range(L):
            for e in range(Ev):
                out[b, i, h, e] = oh[i, e]


def _attn_bwd_loop(
    g: Any, q: Any, k: Any, v: Any, p: Any, scale: Any, causal: bool, dq: Any, dk: Any, dv: Any
) -> None:
    # dq (B, L, H, E), dk (B, S, H, E), dv (B, S, H, Ev)
    nb, nh, L, E = q.shape
    S, Ev = k.shape[2], v.shape[3]
    n_of = _limits(L, S, causal)
    for task in range(nb * nh):
        b, h = task // nh, task % nh
        qh = np.empty((L, E), dtype=q.dtype)
        kh = np.empty((S, E), dtype=q.dtype)
        vh = np.empty((S, Ev), dtype=q.dtype)
        gh = np.empty((L, Ev), dtype=q.dtype)
        ds = np.empty((L, S), dtype=q.dtype)
        dqh = np.empty((L, E), dtype=q.dtype)
        dkh = np.empty((S, E), dtype=q.dtype)
        dvh = np.empty((S, Ev), dtype=q.dtype)
        _copy_head(q, b, h, qh)
        _copy_head(k, b, h, kh)
        _copy_head(v, b, h, vh)
        _copy_head(g, b, h, gh)
        ph = p[b, h]
        _scores(gh, vh, n_of, ds)  # dp_ij = g_i . v_j
        for i in range(L):
            n = n_of[i]
            dot = ph[i, 0] * ds[i, 0]
            for j in range(1, n):
                dot += ph[i, j] * ds[i, j]
            for j in range(n):
                ds[i, j] = ph[i, j] * (ds[i, j] - dot) * scale
        _axpy_rows(ds, kh, n_of, dqh)  # dq_i = sum_j ds_ij k_j
        _axpy_cols(ds, qh, n_of, dkh)  # dk_j = sum_i ds_ij q_i
        _axpy_cols(ph, gh, n_of, dvh)  # dv_j = sum_i p_ij g_i
        for i in range(L):
            for e in range(E):
                dq[b, i, h, e] = dqh[i, e]
        for j in range(S):
            for e in range(E):
                dk[b, j, h, e] = dkh[j, e]
            for e in range(Ev):
                dv[b, j, h, e] = dvh[j, e]


# ---- entry points ------------------------------------------------------------------------------------------


def _require(q: np.ndarray) -> None:
    reason = _load()
    if reason is not None:
        raise RuntimeError(f"the fused attention kernels are unavailable: {reason}")
    if q.dtype not in _DTYPES or q.ndim != 4:
        raise ValueError(
            f"the fused attention kernels take 4-D float32/float64 arrays, got {q.dtype} {q.shape}"
        )


def _heads_view(buf: np.ndarray) -> np.ndarray:
    return buf.transpose(0, 2, 1, 3)  # (B, T, H, D) -> (B, H, T, D), a view


def attention_forward(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float, is_causal: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(out (B, H, L, Ev), p (B, H, L, S)): softmax(q k^T scale [causal]) v and the attention weights.

    out is a view of a C-contiguous (B, L, H, Ev) array. Inputs: see `supports`."""
    _require(q)
    B, H, L, _ = q.shape
    S, Ev = k.shape[2], v.shape[3]
    out = np.empty((B, L, H, Ev), dtype=q.dtype)
    p = np.empty((B, H, L, S), dtype=q.dtype)
    c = q.dtype.type(scale)
    _attn_fwd_loop(q, k, v, c, bool(is_causal), q.dtype == np.float32, out, p)
    return _heads_view(out), p


def attention_backward(
    g: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, p: np.ndarray, scale: float, is_causal: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dq, dk, dv) for upstream gradient g (B, H, L, Ev), each a (B, H, T, D) view of a (B, T, H, D)
    array; p is `attention_forward`'s second output."""
    _require(q)
    B, H, L, E = q.shape
    S, Ev = k.shape[2], v.shape[3]
    dq = np.empty((B, L, H, E), dtype=q.dtype)
    dk = np.empty((B, S, H, E), dtype=q.dtype)
    dv = np.empty((B, S, H, Ev), dtype=q.dtype)
    c = q.dtype.type(scale)
    _attn_bwd_loop(g.astype(q.dtype, copy=False), q, k, v, p, c, bool(is_causal), dq, dk, dv)
    return _heads_view(dq), _heads_view(dk), _heads_view(dv)
