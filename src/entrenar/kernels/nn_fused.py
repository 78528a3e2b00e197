"""Fused activation and normalization kernels: GELU and layer_norm, forward and backward.

Fast paths for `entrenar.ops` (`gelu` in elementwise.py, `layer_norm` in normalization.py), which keep
their plain-NumPy code as the reference and call these only for arrays that `supports` takes: float32 or
float64, C-contiguous, at least `MIN_SIZE` elements, numba working. Each kernel reads its inputs
once and writes its outputs once (the reference makes a NumPy temporary per term, and GELU's
reference spends most of its time in `scipy.special.erf`, a scalar loop).

One thread: the kernels are compiled without parallel=True. With prange they were about twice as
fast in isolation on two cores, but in a training step they sit between BLAS calls, and numba's
OpenMP threads (spinning after each parallel region) and OpenBLAS's threads then take the cores from
each other: bench/bench_gpt.py (two cores, medians of three runs each) took 340 ms/step with prange
kernels, 204 ms/step with these kernels on one thread, and 232 ms/step with the NumPy reference.

GELU saves only x: the backward recomputes erf (or tanh) and the Gaussian density in its one pass,
instead of reading a saved cdf array. layer_norm saves the per-row mean and 1/std and recomputes
x_hat = (x - mean) * rstd in the backward, instead of saving an x_hat array.

Arithmetic. Both follow the reference's expressions operation by operation, in the input's dtype
(no fastmath: LLVM neither reassociates nor fuses a multiply-add), except where noted:

* float64 GELU calls libm's erf, exp and tanh (as the reference calls SciPy's and NumPy's), so it
  agrees with the reference to an ulp or so per function value.
* float32 GELU evaluates erf, exp and tanh in float32 with vmath's vectorizable formulas (erf within
  4e-7, exp within 1.2e-7 relative; tanh(u) = 2 / (1 + exp(-2u)) - 1), since numba without Intel's
  SVML compiles `math.erf` and `math.exp` to scalar library calls that cost as much as SciPy's loop.
  They replaced float64 formulas (eight lanes a vector instead of four): GELU over 1M float32
  elements, forward 2.35 -> 0.98 ms, backward 4.97 -> 2.37 ms (one thread, best of 30). The values
  are used in the reference's float32 expression, so the result differs from the reference's by a
  few float32 roundings of erf (or exp, tanh), an absolute error of order |x| ulp(1):
  tests/kernels/test_nn_fused.py states the bounds.
* layer_norm sums each row's mean, variance and the backward's two row sums in float64 (the
  reference sums in the dtype, pairwise), and sums the weight and bias gradients over rows in
  float64 (the reference adds rows one by one in the dtype). The
  elementwise parts (x_hat, the output, dx) are the reference's dtype expressions.

NaN and inf give what the reference gives (a NaN input gives NaN, gelu(-inf) = NaN, as x * 0).

Compilation is lazy, as in `optim_fused`: numba is imported on the first call that needs it, each
kernel is compiled per dtype (float32, float64) on first use and cached on disk (numba's
`cache=True`). Without numba, or with `NUMBA_DISABLE_JIT` set, `available()` is False and
`supports()` says no, so the ops take their NumPy path.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from entrenar.kernels import vmath
from entrenar.kernels._lazy import import_numba, jit, once, probes

__all__ = [
    "MIN_SIZE",
    "available",
    "gelu_backward",
    "gelu_forward",
    "layer_norm_backward",
    "layer_norm_forward",
    "scatter_add_rows",
    "supports",
    "supports_layer_norm",
    "supports_scatter_rows",
    "unavailable_reason",
]

# Below this many elements the ops keep their NumPy path: there the gain is a few microseconds, and
# the op tests (small shapes) then exercise the reference itself. tests/kernels lower it to run the
# kernels on small arrays.
MIN_SIZE = 1 << 15

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))



def _compile_all() -> str | None:
    numba, reason = import_numba()
    if reason is not None:
        return reason
    reason = vmath.load()
    if reason is not None:
        return reason
    g = globals()
    g["_exp32"], g["_erf32"] = vmath.exp32, vmath.erf32
    helpers = (
        "_tanh32", "_gelu_erf32", "_gelu_tanh32", "_gelu_erf_grad32",
        "_gelu_tanh_grad32", "_gelu_erf64", "_gelu_tanh64", "_gelu_erf_grad64", "_gelu_tanh_grad64",
    )  # fmt: skip
    loops = ("_gelu_fwd_loop", "_gelu_bwd_loop", "_ln_fwd_loop", "_ln_bwd_loop", "_scatter_rows_loop")
    for name in helpers + loops:
        # One thread (no parallel=True), see the module docstring. The helpers are inlined in numba's
        # IR: left to LLVM's inliner, the float32 erf backward kept erf and exp as calls in the loop
        # and did not vectorize (5x slower, measured).
        g[name] = jit(numba, g[name], inline="always") if name in helpers else jit(numba, g[name])
    return None


_load = once(_compile_all)  # numba imported and the loops compiled on first use

available, unavailable_reason = probes(_load)


def _takes(a: Any) -> bool:
    return isinstance(a, np.ndarray) and a.dtype in _DTYPES and a.flags.c_contiguous and a.size >= MIN_SIZE


def supports(x: Any) -> bool:
    """Whether the GELU kernels take x: a C-contiguous float32/float64 ndarray of at least
    `MIN_SIZE` elements, with numba available (checked last: the first check imports numba)."""
    return _takes(x) and _load() is None


def supports_layer_norm(x: Any, w: Any, b: Any) -> bool:
    """Whether the layer_norm kernels take x with weight w and bias b (each an array or None):
    `supports(x)`, and w, b of x's dtype."""
    same = all(p is None or (isinstance(p, np.ndarray) and p.dtype == x.dtype) for p in (w, b))
    return same and supports(x)


# ---- vmath's functions (compiled versions bound by _compile_all) --------------------------------------
def _exp32(a: Any) -> Any:  # pragma: no cover - replaced by vmath's compiled version
    return np.float32(math.exp(a))


def _erf32(z: Any) -> Any:  # pragma: no cover - replaced by vmath's compiled version
    return np.float32(math.erf(z))


_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_TANH_C = 0.044715


# ---- per-element GELU, the reference's expressions (ops/elementwise.py `_Gelu`) ---------------------
# x (and g) are elements of float32 arrays (the *32 functions) or float64 ones; the float32 versions
# use float32 constants, so every operation outside erf/exp/tanh rounds as the reference's does.


def _gelu_erf32(x: Any) -> Any:
    erf = _erf32(x * np.float32(_INV_SQRT_2))
    return x * (np.float32(0.5) * (np.float32(1.0) + erf))


def _tanh32(x: Any) -> Any:
    """The reference's t = tanh(sqrt(2 / pi) (x + 0.044715 x^3)), its argument in float32; tanh(u) as
    2 / (1 + exp(-2u)) - 1 in float32 (absolute error a few ulp of 1)."""
    inner = np.float32(_SQRT_2_OVER_PI) * (x + np.float32(_TANH_C) * x * x * x)
    return np.float32(2.0) / (np.float32(1.0) + _exp32(np.float32(-2.0) * inner)) - np.float32(1.0)


def _gelu_tanh32(x: Any) -> Any:
    return np.float32(0.5) * x * (np.float32(1.0) + _tanh32(x))


def _gelu_erf_grad32(x: Any, g: Any) -> Any:
    cdf = np.float32(0.5) * (np.float32(1.0) + _erf32(x * np.float32(_INV_SQRT_2)))
    pdf = np.float32(_INV_SQRT_2PI) * _exp32(np.float32(-0.5) * x * x)
    return g * (cdf + x * pdf)


def _gelu_tanh_grad32(x: Any, g: Any) -> Any:
    half, one = np.float32(0.5), np.float32(1.0)
    t = _tanh32(x)
    dinner = np.float32(_SQRT_2_OVER_PI) * (one + np.float32(3 * _TANH_C) * x * x)
    return g * (half * (one + t) + half * x * (one - t * t) * dinner)


def _gelu_erf64(x: float) -> float:
    return x * (0.5 * (1.0 + math.erf(x * _INV_SQRT_2)))


def _gelu_tanh64(x: float) -> float:
    t = math.tanh(_SQRT_2_OVER_PI * (x + _TANH_C * x * x * x))
    return 0.5 * x * (1.0 + t)


def _gelu_erf_grad64(x: float, g: float) -> float:
    cdf = 0.5 * (1.0 + math.erf(x * _INV_SQRT_2))
    return g * (cdf + x * (_INV_SQRT_2PI * math.exp(-0.5 * x * x)))


def _gelu_tanh_grad64(x: float, g: float) -> float:
    t = math.tanh(_SQRT_2_OVER_PI * (x + _TANH_C * x * x * x))
    dinner = _SQRT_2_OVER_PI * (1.0 + (3 * _TANH_C) * x * x)
    return g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * dinner)


# One loop per variant: with the variant chosen inside the loop body LLVM kept the branch in
# the loop and did not vectorize the backward (10x slower, measured).
def _gelu_fwd_loop(x: Any, out: Any, tanh: bool, single: bool) -> None:
    if single and tanh:
        for i in range(x.size):
            out[i] = _gelu_tanh32(x[i])
    elif single:
        for i in range(x.size):
            out[i] = _gelu_erf32(x[i])
    elif tanh:
        for i in range(x.size):
            out[i] = _gelu_tanh64(x[i])
    else:
        for i in range(x.size):
            out[i] = _gelu_erf64(x[i])


def _gelu_bwd_loop(x: Any, g: Any, out: Any, tanh: bool, single: bool) -> None:
    if single and tanh:
        for i in range(x.size):
            out[i] = _gelu_tanh_grad32(x[i], g[i])
    elif single:
        for i in range(x.size):
            out[i] = _gelu_erf_grad32(x[i], g[i])
    elif tanh:
        for i in range(x.size):
            out[i] = _gelu_tanh_grad64(x[i], g[i])
    else:
        for i in range(x.size):
            out[i] = _gelu_erf_grad64(x[i], g[i])


# ---- layer_norm over the trailing D elements of each of N rows ----------------------------------------
# stats[i] = (mean, rstd) rounded to the dtype; w, b are stand-ins (x's first row) when absent.


def _ln_fwd_loop(x: Any, w: Any, b: Any, has_w: bool, has_b: bool, eps: float, out: Any, stats: Any) -> None:
    n, d = x.shape
    d4 = d - d % 4
    for i in range(n):
        # four float64 accumulators: independent additions instead of one chain of dependent ones
        s0 = s1 = s2 = s3 = 0.0
        for j in range(0, d4, 4):
            s0 += x[i, j]
            s1 += x[i, j + 1]
            s2 += x[i, j + 2]
            s3 += x[i, j + 3]
        for j in range(d4, d):
            s0 += x[i, j]
        stats[i, 0] = ((s0 + s1) + (s2 + s3)) / d  # rounds to the dtype
        mu = stats[i, 0]
        s0 = s1 = s2 = s3 = 0.0
        for j in range(0, d4, 4):
            c0, c1, c2, c3 = x[i, j] - mu, x[i, j + 1] - mu, x[i, j + 2] - mu, x[i, j + 3] - mu
            s0 += np.float64(c0) * c0  # c: in the dtype, as the reference's x - mean
            s1 += np.float64(c1) * c1
            s2 += np.float64(c2) * c2
            s3 += np.float64(c3) * c3
        for j in range(d4, d):
            c0 = x[i, j] - mu
            s0 += np.float64(c0) * c0
        stats[i, 1] = 1.0 / math.sqrt(((s0 + s1) + (s2 + s3)) / d + eps)
        r = stats[i, 1]
        for j in range(d):
            y = (x[i, j] - mu) * r
            if has_w:
                y = y * w[j]
            if has_b:
                y = y + b[j]
            out[i, j] = y


def _ln_bwd_loop(
    g: Any, x: Any, w: Any, has_w: bool, stats: Any, row_means: Any, need_x: bool, need_wb: bool,
    dx: Any, dw: Any, db: Any,
) -> None:  # fmt: skip
    # dx = rstd (gh - mean(gh) - x_hat mean(gh x_hat)), gh = g w; dw, db: row sums in float64
    n, d = x.shape
    for i in range(n):
        mu, r = stats[i, 0], stats[i, 1]
        if need_x:
            s0 = s1 = t0 = t1 = 0.0  # two accumulators per sum, as in the forward
            for j in range(0, d - d % 2, 2):
                xh0, xh1 = (x[i, j] - mu) * r, (x[i, j + 1] - mu) * r
                gh0 = g[i, j] * w[j] if has_w else g[i, j]
                gh1 = g[i, j + 1] * w[j + 1] if has_w else g[i, j + 1]
                s0 += gh0
                s1 += gh1
                t0 += np.float64(gh0) * xh0
                t1 += np.float64(gh1) * xh1
            if d % 2:
                xh0 = (x[i, d - 1] - mu) * r
                gh0 = g[i, d - 1] * w[d - 1] if has_w else g[i, d - 1]
                s0 += gh0
                t0 += np.float64(gh0) * xh0
            row_means[i, 0] = (s0 + s1) / d  # rounds to the dtype
            row_means[i, 1] = (t0 + t1) / d
            m1, m2 = row_means[i, 0], row_means[i, 1]
        for j in range(d):
            xh = (x[i, j] - mu) * r
            if need_x:
                gh = g[i, j] * w[j] if has_w else g[i, j]
                dx[i, j] = r * (gh - m1 - xh * m2)
            if need_wb:
                dw[j] += g[i, j] * xh
                db[j] += g[i, j]


# ---- embedding's backward: rows scatter-added into a table ----------------------------------------------


def _scatter_rows_loop(idx: Any, rows: Any, out: Any) -> None:
    # out[idx[n]] += rows[n], n in order: the additions np.add.at makes, in its order
    for n in range(idx.shape[0]):
        r = idx[n]
        for j in range(rows.shape[1]):
            out[r, j] += rows[n, j]


# ---- entry points ----------------------------------------------------------------------------------------


def _require(x: np.ndarray) -> None:
    reason = _load()
    if reason is not None:
        raise RuntimeError(f"the fused nn kernels are unavailable: {reason}")
    if x.dtype not in _DTYPES or not x.flags.c_contiguous:
        raise ValueError(
            f"the fused nn kernels take C-contiguous float32/float64 arrays, got {x.dtype}"
            f"{'' if x.flags.c_contiguous else ', not C-contiguous'}"
        )


def gelu_forward(x: np.ndarray, approximate: str) -> np.ndarray:
    """gelu(x) (approximate "none": x Phi(x) with erf; "tanh": the tanh approximation), as the
    reference; the backward needs only x. x: see `supports`."""
    _require(x)
    out = np.empty_like(x)
    _gelu_fwd_loop(x.reshape(-1), out.reshape(-1), approximate == "tanh", x.dtype == np.float32)
    return out


def gelu_backward(g: np.ndarray, x: np.ndarray, approximate: str) -> np.ndarray:
    """g * d gelu(x) / dx, recomputing Phi(x) and the density (or tanh) from x in one pass."""
    _require(x)
    g = np.ascontiguousarray(g, dtype=x.dtype)
    out = np.empty_like(x)
    single = x.dtype == np.float32
    _gelu_bwd_loop(x.reshape(-1), g.reshape(-1), out.reshape(-1), approximate == "tanh", single)
    return out


def _rows(a: np.ndarray, d: int) -> np.ndarray:
    return a.reshape(-1, d)


def layer_norm_forward(
    x: np.ndarray, w: np.ndarray | None, b: np.ndarray | None, k: int, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """layer_norm over x's trailing k dims: (out, stats), stats (rows, 2) holding each row's mean and
    1 / sqrt(var + eps) in x's dtype (what `layer_norm_backward` takes). w, b: the trailing shape."""
    _require(x)
    d = math.prod(x.shape[x.ndim - k :])
    xr = _rows(x, d)
    out = np.empty_like(x)
    stats = np.empty((xr.shape[0], 2), dtype=x.dtype)
    wr = xr[0] if w is None else np.ascontiguousarray(w).reshape(-1)
    br = xr[0] if b is None else np.ascontiguousarray(b).reshape(-1)
    _ln_fwd_loop(xr, wr, br, w is not None, b is not None, float(eps), _rows(out, d), stats)
    return out, stats


def layer_norm_backward(
    g: np.ndarray, x: np.ndarray, stats: np.ndarray, w: np.ndarray | None, k: int,
    needs: tuple[bool, ...],
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:  # fmt: skip
    """(dx, dw, db) of layer_norm for upstream gradient g, None where `needs` says no."""
    _require(x)
    shape = x.shape[x.ndim - k :]
    d = math.prod(shape)
    xr = _rows(x, d)
    n = xr.shape[0]
    gr = _rows(np.ascontiguousarray(g, dtype=x.dtype), d)
    need_x, need_wb = needs[0], needs[1] or needs[2]
    dx = np.empty_like(xr) if need_x else xr
    dw = np.zeros(d, dtype=np.float64)
    db = np.zeros(d, dtype=np.float64)
    row_means = np.empty((n, 2), dtype=x.dtype)
    wr = xr[0] if w is None else np.ascontiguousarray(w).reshape(-1)
    if need_x or need_wb:
        _ln_bwd_loop(gr, xr, wr, w is not None, stats, row_means, need_x, need_wb, dx, dw, db)
    return (
        dx.reshape(x.shape) if need_x else None,
        dw.astype(x.dtype).reshape(shape) if needs[1] else None,
        db.astype(x.dtype).reshape(shape) if needs[2] else None,
    )


def supports_scatter_rows(rows: Any, num_rows: int) -> bool:
    """Whether `scatter_add_rows` takes rows (N, D): C-contiguous float32/float64 with at least
    `MIN_SIZE` elements in rows or in the (num_rows, D) table, and numba available."""
    ok = isinstance(rows, np.ndarray) and rows.ndim == 2 and rows.dtype in _DTYPES and rows.flags.c_contiguous
    return ok and max(rows.size, num_rows * rows.shape[1]) >= MIN_SIZE and _load() is None


def scatter_add_rows(idx: np.ndarray, rows: np.ndarray, num_rows: int) -> np.ndarray:
    """A (num_rows, D) table of zeros with rows[n] added into row idx[n] for each n in order: what
    `np.add.at(table, idx, rows)` gives, bit for bit. idx (N,) integers in [0, num_rows)."""
    _require(rows)
    if idx.ndim != 1 or idx.shape[0] != rows.shape[0] or idx.dtype.kind not in "iu":
        raise ValueError(
            f"scatter_add_rows: idx must be ({rows.shape[0]},) integers, got {idx.dtype} {idx.shape}"
        )
    if idx.size and (idx.min() < 0 or idx.max() >= num_rows):
        bad = idx.min() if idx.min() < 0 else idx.max()
        raise IndexError(f"scatter_add_rows: index {bad} is out of range for a table of {num_rows} rows")
    out = np.zeros((num_rows, rows.shape[1]), dtype=rows.dtype)
    _scatter_rows_loop(idx, rows, out)
    return out
