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
* The GELU loops (both dtypes) are compiled with fastmath "contract": a multiply followed by an add
  becomes one fused multiply-add, rounded once. That is most of erf's and exp's polynomial
  evaluations, and GELU's own `cdf + x * pdf`. The error only shrinks (on 4M float32 points of
  [-12, 12], the value's largest error went 5.8 -> 4.0 u for the erf form, the gradient's 2.5 -> 2.5 u),
  and the time goes down: over 1M float32 elements, forward 1.24 -> 0.84 ms and backward 2.87 -> 1.94
  ms (one thread, first decile of 40).
* layer_norm sums each row's mean, variance and the backward's two row sums in float64 (the
  reference sums in the dtype, pairwise), and sums the weight and bias gradients over rows in
  float64 (the reference adds rows one by one in the dtype). The row sums are split over vector
  lanes (fastmath "reassoc" on those sums only): on a (1024, 256) float32 input the forward went
  0.29 -> 0.15 ms and the backward 0.66 -> 0.25 ms (one thread, first decile of 50). The
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
from entrenar.kernels._lazy import compile_on_first_use, jit_group, probes

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


_load = compile_on_first_use(  # numba imported and the loops compiled on first use
    globals(),
    # The per-element GELU helpers are inlined in numba's IR: left to LLVM's inliner, the float32 erf
    # backward kept erf and exp as calls in the loop and did not vectorize (5x slower, measured).
    jit_group(
        "_tanh32",
        "_gelu_erf32",
        "_gelu_tanh32",
        "_gelu_erf_grad32",
        "_gelu_tanh_grad32",
        "_gelu_erf64",
        "_gelu_tanh64",
        "_gelu_erf_grad64",
        "_gelu_tanh_grad64",
        inline="always",
    ),
    jit_group("_row_sum64", "_row_sq64", "_row_grad_sums64", fastmath={"reassoc"}),  # layer_norm's sums
    # The loops run on one thread (no parallel=True), see the module docstring.
    jit_group("_gelu_fwd_loop", "_gelu_bwd_loop", fastmath={"contract"}),
    jit_group("_ln_fwd_loop", "_ln_bwd_loop", "_scatter_rows_loop"),
    needs=(vmath.load,),
    bind={"_exp32": lambda: vmath.exp32, "_erf32": lambda: vmath.erf32},
)

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


# ---- vmath's functions (compiled versions bound by _load) -----------------------------------------------
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
# The row sums (`_row_*`) are compiled with fastmath "reassoc" only: float64 sums split over vector
# lanes (a chain of dependent float64 additions, one element a step, was most of the time); the terms
# are the same float64 values, summed in another order.


def _row_sum64(x: Any) -> float:
    """sum(x) in float64."""
    total = 0.0
    for j in range(x.shape[0]):
        total += np.float64(x[j])
    return total


def _row_sq64(x: Any, mu: Any) -> float:
    """sum((x - mu)^2), the difference in the dtype (the reference's x - mean), squared in float64."""
    total = 0.0
    for j in range(x.shape[0]):
        c = np.float64(x[j] - mu)
        total += c * c
    return total


def _row_grad_sums64(g: Any, x: Any, w: Any, has_w: bool, mu: Any, r: Any) -> tuple[float, float]:
    """(sum(gh), sum(gh x_hat)) in float64, gh = g w and x_hat = (x - mu) r in the dtype."""
    s = t = 0.0
    if has_w:
        for j in range(x.shape[0]):
            gh = g[j] * w[j]
            s += np.float64(gh)
            t += np.float64(gh) * ((x[j] - mu) * r)
    else:
        for j in range(x.shape[0]):
            s += np.float64(g[j])
            t += np.float64(g[j]) * ((x[j] - mu) * r)
    return s, t


def _ln_fwd_loop(x: Any, w: Any, b: Any, has_w: bool, has_b: bool, eps: float, out: Any, stats: Any) -> None:
    n, d = x.shape
    for i in range(n):
        xi, oi = x[i], out[i]
        stats[i, 0] = _row_sum64(xi) / d  # rounds to the dtype
        mu = stats[i, 0]
        stats[i, 1] = 1.0 / math.sqrt(_row_sq64(xi, mu) / d + eps)
        r = stats[i, 1]
        # one loop per case: a branch inside kept LLVM from vectorizing
        if has_w and has_b:
            for j in range(d):
                oi[j] = (xi[j] - mu) * r * w[j] + b[j]
        elif has_w:
            for j in range(d):
                oi[j] = (xi[j] - mu) * r * w[j]
        elif has_b:
            for j in range(d):
                oi[j] = (xi[j] - mu) * r + b[j]
        else:
            for j in range(d):
                oi[j] = (xi[j] - mu) * r


def _ln_bwd_loop(
    g: Any, x: Any, w: Any, has_w: bool, stats: Any, row_means: Any, need_x: bool, need_wb: bool,
    dx: Any, dw: Any, db: Any,
) -> None:  # fmt: skip
    # dx = rstd (gh - mean(gh) - x_hat mean(gh x_hat)), gh = g w; dw, db: row sums in float64
    n, d = x.shape
    for i in range(n):
        mu, r = stats[i, 0], stats[i, 1]
        gi, xi = g[i], x[i]
        if need_x:
            s, t = _row_grad_sums64(gi, xi, w, has_w, mu, r)
            row_means[i, 0] = s / d  # rounds to the dtype
            row_means[i, 1] = t / d
            m1, m2 = row_means[i, 0], row_means[i, 1]
            dxi = dx[i]
            if has_w:
                for j in range(d):
                    dxi[j] = r * (gi[j] * w[j] - m1 - (xi[j] - mu) * r * m2)
            else:
                for j in range(d):
                    dxi[j] = r * (gi[j] - m1 - (xi[j] - mu) * r * m2)
        if need_wb:
            for j in range(d):
                dw[j] += np.float64(gi[j] * ((xi[j] - mu) * r))
                db[j] += np.float64(gi[j])


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
