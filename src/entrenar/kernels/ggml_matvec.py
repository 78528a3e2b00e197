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

bench/bench_generate.py (SmolLM2-135M Q4_1, prompt 20, 64 greedy tokens, interleaved runs on the
shared 2-core VM): at a load average of 4 to 5, entrenar 49 to 51 s against transformers' float32
generate 27 to 34 s (1.57x its time: the goal is not met); at a load of 12 to 18 the order reversed
(0.69x), so the kernel's speed on a quiet machine is still to be measured and tuned.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from entrenar.kernels._lazy import import_numba, jit, once

__all__ = ["MAX_ROWS", "PARALLEL_MIN_WEIGHTS", "available", "block_scales", "matvec", "reference"]

# The kernel serves up to this many input rows (decoding steps of a small batch); more rows are GEMM work.
MAX_ROWS = 8
# Below this many weights one thread is as fast: waking numba's pool costs microseconds, and on a
# loaded machine a parallel region waits for its slowest thread.
PARALLEL_MIN_WEIGHTS = 1 << 18
_TYPE_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}
_KERNELS: dict[tuple[str, str, bool], Any] = {}  # (loop, dtype, parallel) -> compiled
prange: Callable[..., Any] = range  # rebound to numba.prange when compiled


def _make_q4(ft: Any) -> Callable[..., None]:
    """The 4-bit loop for inputs of float type ft: codes (R, nblk, 16), d, c (R, nblk), xs (M, nblk, 32)."""

    def q4(
        codes: np.ndarray, d: np.ndarray, c: np.ndarray, xs: np.ndarray, xsum: np.ndarray, y: np.ndarray
    ) -> None:
        rows, nblk = d.shape
        m = xs.shape[0]
        for r in prange(rows):
            for i in range(m):
                acc = 0.0
                for b in range(nblk):
                    s = ft(0)
                    for j in range(16):
                        byte = codes[r, b, j]
                        s += xs[i, b, j] * ft(byte & 15) + xs[i, b, j + 16] * ft(byte >> 4)
                    acc += np.float64(d[r, b]) * s + np.float64(c[r, b]) * xsum[i, b]
                y[i, r] = acc

    return q4


def _make_q8(ft: Any) -> Callable[..., None]:
    """The 8-bit loop for inputs of float type ft: codes (R, nblk, 32) int8, d (R, nblk), xs (M, nblk, 32)."""

    def q8(codes: np.ndarray, d: np.ndarray, xs: np.ndarray, y: np.ndarray) -> None:
        rows, nblk = d.shape
        m = xs.shape[0]
        for r in prange(rows):
            for i in range(m):
                acc = 0.0
                for b in range(nblk):
                    s = ft(0)
                    for j in range(32):
                        s += xs[i, b, j] * ft(codes[r, b, j])
                    acc += np.float64(d[r, b]) * s
                y[i, r] = acc

    return q8


@once
def _load() -> str | None:
    numba, reason = import_numba()
    if numba is None:
        return reason
    globals()["prange"] = numba.prange
    fast = {"reassoc", "contract"}
    for ft in (np.float32, np.float64):
        name = np.dtype(ft).name
        for par in (False, True):
            _KERNELS["q4", name, par] = jit(numba, _make_q4(ft), parallel=par, fastmath=fast)
            _KERNELS["q8", name, par] = jit(numba, _make_q8(ft), parallel=par, fastmath=fast)
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


def block_scales(kind: str, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d, c) float32 (R, nblk) from packed (R, nblk * type bytes) blocks: d the scale, c the term of X.

    c is the Q4_1 minimum m, -8 d for Q4_0 and unused (d) for Q8_0. Callers that multiply by the same
    weight many times (GGMLTensor) keep them, so the float16 decoding is not repeated per call.
    """
    if (
        kind not in _TYPE_BYTES
        or blocks.dtype != np.uint8
        or blocks.ndim != 2
        or blocks.shape[1] % _TYPE_BYTES[kind]
    ):
        raise ValueError(
            f"ggml_matvec.block_scales: expected uint8 (rows, n * type bytes) blocks of a supported kind "
            f"{sorted(_TYPE_BYTES)}, got {kind!r} {blocks.dtype} {blocks.shape}"
        )
    nb = _TYPE_BYTES[kind]
    b3 = blocks.reshape(blocks.shape[0], -1, nb)  # (R, nblk * nb) -> (R, nblk, nb)
    d = np.ascontiguousarray(b3[:, :, 0:2]).view(np.float16)[..., 0].astype(np.float32)  # (R, nblk)
    if kind == "Q4_1":
        return d, np.ascontiguousarray(b3[:, :, 2:4]).view(np.float16)[..., 0].astype(np.float32)
    return d, (d * np.float32(-8.0) if kind == "Q4_0" else d)  # -8 d is exact: a power of two


def matvec(
    kind: str,
    blocks: np.ndarray,
    x: np.ndarray,
    scales: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    parallel: bool | None = None,
) -> np.ndarray:
    """y = x @ W^T, (M, K) x packed (R, K) -> (M, R) in x's dtype, M <= MAX_ROWS (see the docstring).

    scales: `block_scales(kind, blocks)`, if the caller keeps them; computed here otherwise.
    parallel: numba's threads over output rows; None takes them from PARALLEL_MIN_WEIGHTS weights on.
    """
    out_f, nblk = _check(kind, blocks, x, "ggml_matvec.matvec")
    if not 1 <= x.shape[0] <= MAX_ROWS:
        raise ValueError(f"ggml_matvec.matvec: x must have 1 to {MAX_ROWS} rows, got {x.shape[0]}")
    if not available():
        raise RuntimeError(f"ggml_matvec.matvec: the fused kernel is unavailable ({_load()})")
    d, c = block_scales(kind, blocks) if scales is None else scales
    if d.shape != (out_f, nblk) or c.shape != (out_f, nblk) or d.dtype != np.float32 or c.dtype != np.float32:
        raise ValueError(
            f"ggml_matvec.matvec: scales must be two float32 ({out_f}, {nblk}) arrays, got "
            f"{d.dtype} {d.shape} and {c.dtype} {c.shape}"
        )
    b3 = blocks.reshape(out_f, nblk, _TYPE_BYTES[kind])  # (R, nblk * nb) -> (R, nblk, nb)
    xs = np.ascontiguousarray(x).reshape(x.shape[0], nblk, 32)  # (M, K) -> (M, nblk, 32)
    y = np.empty((x.shape[0], out_f), dtype=x.dtype)
    name = x.dtype.name
    par = out_f * x.shape[1] >= PARALLEL_MIN_WEIGHTS if parallel is None else bool(parallel)
    if kind == "Q8_0":
        _KERNELS["q8", name, par](b3[:, :, 2:].view(np.int8), d, xs, y)
        return y
    codes = b3[:, :, 4:] if kind == "Q4_1" else b3[:, :, 2:]
    xsum = xs.sum(axis=-1, dtype=np.float64)  # (M, nblk)
    _KERNELS["q4", name, par](codes, d, c, xs, xsum, y)
    return y
