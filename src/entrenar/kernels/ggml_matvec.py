"""Fused GGML matrix-vector product: y = x @ W^T straight from packed Q4_0 / Q4_1 / Q8_0 blocks.

Decoding one token at a time multiplies a few input rows by every weight: the dequantize-then-BLAS
path would write the whole float matrix per call, while this reads each packed block once, per
output row, in parallel over output rows (numba prange). A block of 32 weights with scale d (and
Q4_1 minimum m) contributes to y[i, r], with s = sum_j x[i, 32b + j] q_j and X = sum_j x[i, 32b + j]::

    Q4_0  d * s - 8 d * X        Q4_1  d * s + m * X        Q8_0  d * s

(the block sums X are computed once per input row, not once per output row). Within a block the
sum runs in the input's dtype, vectorised (fastmath reassoc/contract: the order of the 32 terms is
left to the compiler); across blocks it is accumulated in float64. That is not the reference's
rounding: the reference (`reference`: dequantize to x's dtype, then x @ W^T by BLAS) sums in another
order, so the two agree to rounding error of the dot products: |y - ref| <= 1e-5 * (|x| @ |W|^T),
held by tests/llama/test_ggml_matvec.py. Compiled lazily on first use; without numba `available()`
is False and callers take the reference.

The float16 scales are decoded in the loop by a 65,536-entry table (`ggml_dequant.f16_at`), so
nothing but the packed bytes is kept per weight. The nibbles are masked and shifted as uint8: with
an int64 intermediate (numba's default for `byte & 15`) LLVM converts them one by one and the loop
runs at a quarter of the speed. Quiet 2-core VM: 2 (one thread) to 3.4 (two) billion Q4_1 weights
a second; SmolLM2-135M decodes a token in ~80 ms (bench/bench_generate.py against transformers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from entrenar.kernels import ggml_dequant
from entrenar.kernels._lazy import import_numba, jit, once
from entrenar.kernels.ggml_dequant import F16_TO_F32

__all__ = ["MAX_ROWS", "PARALLEL_MIN_WEIGHTS", "available", "matvec", "reference"]

# The kernel serves up to this many input rows (decoding steps of a small batch); more rows are GEMM work.
MAX_ROWS = 8
# Below this many weights one thread is as fast: waking numba's pool costs microseconds, and on a
# loaded machine a parallel region waits for its slowest thread.
PARALLEL_MIN_WEIGHTS = 1 << 18
_TYPE_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}
_KERNELS: dict[tuple[str, Any, bool], Any] = {}  # (kind, float type, parallel) -> compiled
prange: Callable[..., Any] = range  # rebound to numba.prange when compiled
f16_at: Callable[..., Any] = ggml_dequant.f16_at  # rebound to its compiled (inlined) form


def _make_q4(ft: Any, offset: int) -> Callable[..., None]:
    """The 4-bit loop for inputs of float type ft: blocks (R, nblk * nb) uint8 whose codes start at `offset`.

    The float16 scale (and Q4_1 minimum) of each block is decoded in the loop by the table `f16`
    (`ggml_dequant.F16_TO_F32`): nothing but the packed bytes is kept per weight.
    """
    nb = offset + 16
    lo, hi = np.uint8(15), np.uint8(4)  # uint8 operands keep the nibbles uint8: int64 would not vectorise
    q4_1 = offset == 4
    minus8 = np.float32(-8.0)

    def q4(blocks: np.ndarray, f16: np.ndarray, x: np.ndarray, xsum: np.ndarray, y: np.ndarray) -> None:
        rows, m = y.shape[1], x.shape[0]
        nblk = x.shape[1] // 32
        for r in prange(rows):
            row = blocks[r]
            for i in range(m):
                xi = x[i]
                acc = 0.0
                for b in range(nblk):
                    start = b * nb
                    d = f16_at(row, start, f16)
                    # Q4_1: the minimum m; Q4_0: -8 d (exact: a power of two)
                    c = f16_at(row, start + 2, f16) if q4_1 else d * minus8
                    off = start + offset
                    xo = b * 32
                    s = ft(0)
                    for j in range(16):
                        byte = row[off + j]
                        s += xi[xo + j] * ft(byte & lo) + xi[xo + 16 + j] * ft(byte >> hi)
                    acc += np.float64(d) * s + np.float64(c) * xsum[i, b]
                y[i, r] = acc

    return q4


def _make_q8(ft: Any) -> Callable[..., None]:
    """The 8-bit loop for inputs of float type ft: blocks (R, nblk * 34) uint8, scales decoded by `f16`."""

    def q8(blocks: np.ndarray, f16: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
        rows, m = y.shape[1], x.shape[0]
        nblk = x.shape[1] // 32
        for r in prange(rows):
            row = blocks[r]
            for i in range(m):
                xi = x[i]
                acc = 0.0
                for b in range(nblk):
                    start = b * 34
                    d = f16_at(row, start, f16)
                    off = start + 2
                    xo = b * 32
                    s = ft(0)
                    for j in range(32):
                        s += xi[xo + j] * ft(np.int8(row[off + j]))
                    acc += np.float64(d) * s
                y[i, r] = acc

    return q8


@once
def _load() -> str | None:
    numba, reason = import_numba()
    if numba is None:
        return reason
    reason = ggml_dequant._load()  # compiles f16_at, which these loops inline
    if reason is not None:
        return reason
    globals()["f16_at"] = ggml_dequant.f16_at
    globals()["prange"] = numba.prange
    fast = {"reassoc", "contract"}
    for ft in (np.float32, np.float64):
        for par in (False, True):
            _KERNELS["Q4_0", ft, par] = jit(numba, _make_q4(ft, 2), parallel=par, fastmath=fast)
            _KERNELS["Q4_1", ft, par] = jit(numba, _make_q4(ft, 4), parallel=par, fastmath=fast)
            _KERNELS["Q8_0", ft, par] = jit(numba, _make_q8(ft), parallel=par, fastmath=fast)
    return None


def available() -> bool:
    return _load() is None


def _check(kind: str, blocks: np.ndarray, x: np.ndarray, where: str) -> tuple[int, int]:
    if kind not in _TYPE_BYTES:
        raise ValueError(f"{where}: unsupported GGML kind {kind!r} (supported: {sorted(_TYPE_BYTES)})")
    if x.ndim != 2 or x.dtype not in (np.float32, np.float64):
        raise ValueError(f"{where}: x must be float32/float64 (rows, in_features), got {x.dtype} {x.shape}")
    rows, cols = x.shape[1] // 32, x.shape[1]
    if (
        blocks.dtype != np.uint8
        or blocks.ndim != 2
        or cols % 32
        or blocks.shape[1] != rows * _TYPE_BYTES[kind]
    ):
        raise ValueError(
            f"{where}: {kind} blocks must be uint8 (out_features, {cols} / 32 * {_TYPE_BYTES[kind]}) for x "
            f"{x.shape}, got {blocks.dtype} {blocks.shape}"
        )
    return blocks.shape[0], rows


def reference(kind: str, blocks: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The spec: W dequantized (float32 products, as ggml) and cast to x's dtype, then x @ W^T (M, R)."""
    from entrenar.quant.ggml import dequantize_blocks

    out_f, nblk = _check(kind, blocks, x, "ggml_matvec.reference")
    w = dequantize_blocks(kind, blocks.reshape(out_f * nblk, _TYPE_BYTES[kind]))  # (R * nblk, 32)
    return x @ w.reshape(out_f, nblk * 32).astype(x.dtype).T  # (M, K) @ (K, R) -> (M, R)


def matvec(kind: str, blocks: np.ndarray, x: np.ndarray, *, parallel: bool | None = None) -> np.ndarray:
    """y = x @ W^T, (M, K) x packed (R, K) -> (M, R) in x's dtype, M <= MAX_ROWS (see the docstring).

    parallel: numba's threads over output rows; None takes them from PARALLEL_MIN_WEIGHTS weights on.
    """
    out_f, nblk = _check(kind, blocks, x, "ggml_matvec.matvec")
    if not 1 <= x.shape[0] <= MAX_ROWS:
        raise ValueError(f"ggml_matvec.matvec: x must have 1 to {MAX_ROWS} rows, got {x.shape[0]}")
    if not available():
        raise RuntimeError(f"ggml_matvec.matvec: the fused kernel is unavailable ({_load()})")
    blocks = np.ascontiguousarray(blocks)  # rows read whole: a packed weight is contiguous already
    xs = np.ascontiguousarray(x)
    y = np.empty((x.shape[0], out_f), dtype=x.dtype)
    par = out_f * x.shape[1] >= PARALLEL_MIN_WEIGHTS if parallel is None else bool(parallel)
    kernel = _KERNELS[kind, x.dtype.type, par]
    if kind == "Q8_0":
        kernel(blocks, F16_TO_F32, xs, y)
    else:
        kernel(blocks, F16_TO_F32, xs, xs.reshape(x.shape[0], nblk, 32).sum(axis=-1, dtype=np.float64), y)
    return y
