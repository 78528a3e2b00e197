"""Fused GGML block dequantization (Q4_0, Q4_1, Q8_0) for `entrenar.quant.ggml.GGMLTensor`.

The NumPy reference, which is the spec, is `entrenar.quant.ggml.dequantize_blocks`; the test
tests/llama/test_ggml_blocks.py holds the two equal bit for bit. The float16 scales (and Q4_1
minimums) are decoded in the loops from their two bytes by the table F16_TO_F32 (`f16_at`, shared
with `ggml_matvec`); per element, in float32 and in this order (no fastmath, so no fused
multiply-add), then stored in the output dtype::

    Q4_0  d * (q - 8)     Q4_1  d * q + m     Q8_0  d * q

One pass writes the sub-rectangle straight into `out` (the NumPy path builds the whole blocks,
then copies the window). Compiled lazily on first use, as the other kernels; without numba
`available()` is False and the caller takes the reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from entrenar.kernels._lazy import import_numba, jit, once

__all__ = ["F16_TO_F32", "KIND_CODES", "PARALLEL_MIN_SIZE", "available", "dequantize_window", "f16_at"]

KIND_CODES = {"Q4_0": 0, "Q4_1": 1, "Q8_0": 2}
# Whole rows of at least this many elements are written on numba's threads (below, one thread is as fast).
PARALLEL_MIN_SIZE = 1 << 18
_TYPE_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}
_KERNELS: dict[Any, Any] = {}
prange: Any = range  # rebound to numba.prange when compiled


# float16 bits -> float32, exact (numba has no float16): a block's scale is looked up from its two bytes
F16_TO_F32 = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)


def f16_at(row: np.ndarray, at: int, f16: np.ndarray) -> np.float32:
    """The float16 stored little-endian at bytes at, at + 1 of the uint8 array `row`, by the table `f16`
    (F16_TO_F32). Compiled inline into every GGML loop (here and in `ggml_matvec`)."""
    return f16[np.int64(row[at]) | (np.int64(row[at + 1]) << 8)]


def _window(blocks: np.ndarray, f16: np.ndarray, kind: int, skip: int, out: np.ndarray) -> None:
    """blocks (R, nblk, type bytes) uint8 -> out (R, C): elements skip .. skip + C of each row."""
    rows, ncols = out.shape
    nblk = blocks.shape[1]
    for r in range(rows):
        for b in range(nblk):
            blk = blocks[r, b]
            db = f16_at(blk, 0, f16)
            base = b * 32 - skip
            for j in range(32):
                c = base + j
                if c < 0 or c >= ncols:
                    continue
                if kind == 2:
                    out[r, c] = db * np.float32(np.int8(blk[2 + j]))
                elif kind == 0:
                    byte = blk[2 + j % 16]
                    out[r, c] = db * (np.float32((byte & 15) if j < 16 else (byte >> 4)) - np.float32(8.0))
                else:
                    byte = blk[4 + j % 16]
                    out[r, c] = db * np.float32((byte & 15) if j < 16 else (byte >> 4)) + f16_at(blk, 2, f16)


def _make_rows(kind: str) -> Any:
    """Whole rows: blocks (R, nblk * type bytes) uint8 -> out (R, nblk * 32), scales decoded in the loop.

    The same products as `_window` in the same order; unrolled per kind with uint8 nibble operands (an
    int64 intermediate would keep the loop from vectorising) and split over rows. `f16` is F16_TO_F32.
    """
    nb = _TYPE_BYTES[kind]
    lo, hi, eight = np.uint8(15), np.uint8(4), np.float32(8.0)
    q4_1 = kind == "Q4_1"  # a constant of the compiled loop: the branch below is resolved at compile time

    def q4(blocks: np.ndarray, f16: np.ndarray, out: np.ndarray) -> None:
        rows, nblk = out.shape[0], out.shape[1] // 32
        for r in prange(rows):
            row, o = blocks[r], out[r]
            for b in range(nblk):
                off = b * nb
                db = f16_at(row, off, f16)
                if q4_1:  # d * q + m
                    mb = f16_at(row, off + 2, f16)
                    for j in range(16):
                        byte = row[off + 4 + j]
                        o[b * 32 + j] = db * np.float32(byte & lo) + mb
                        o[b * 32 + 16 + j] = db * np.float32(byte >> hi) + mb
                else:  # d * (q - 8)
                    for j in range(16):
                        byte = row[off + 2 + j]
                        o[b * 32 + j] = db * (np.float32(byte & lo) - eight)
                        o[b * 32 + 16 + j] = db * (np.float32(byte >> hi) - eight)

    def q8(blocks: np.ndarray, f16: np.ndarray, out: np.ndarray) -> None:
        rows, nblk = out.shape[0], out.shape[1] // 32
        for r in prange(rows):
            row, o = blocks[r], out[r]
            for b in range(nblk):
                off = b * nb
                db = f16_at(row, off, f16)
                for j in range(32):
                    o[b * 32 + j] = db * np.float32(np.int8(row[off + 2 + j]))

    return q8 if kind == "Q8_0" else q4


@once
def _load() -> str | None:
    numba, reason = import_numba()
    if numba is None:
        return reason
    g = globals()
    g["prange"] = numba.prange
    g["f16_at"] = jit(numba, f16_at, inline="always")
    _KERNELS["window"] = jit(numba, _window)
    for kind in _TYPE_BYTES:
        _KERNELS[kind, False] = jit(numba, _make_rows(kind))
        _KERNELS[kind, True] = jit(numba, _make_rows(kind), parallel=True)
    return None


def available() -> bool:
    return _load() is None


def dequantize_window(
    kind: str, blocks: np.ndarray, skip: int, out: np.ndarray, parallel: bool | None = None
) -> np.ndarray:
    """blocks (R, nblk, type bytes) uint8 -> out (R, C), C <= nblk * 32 - skip, starting `skip` into row.

    parallel: whole rows on numba's threads; None takes them from PARALLEL_MIN_SIZE elements on. Between
    BLAS calls (the tiles of a layer) pass False: OpenBLAS's threads spin for a while after each call,
    and a parallel region started then waits for the thread that shares a core with them.
    """
    # numba does not check bounds: the shapes are checked here
    if (
        kind not in KIND_CODES
        or blocks.dtype != np.uint8
        or blocks.ndim != 3
        or out.ndim != 2
        or out.shape[0] != blocks.shape[0]
        or not 0 <= skip < 32
        or out.shape[1] > blocks.shape[1] * 32 - skip
    ):
        raise ValueError(
            f"dequantize_window: {kind} blocks {blocks.dtype} {blocks.shape} do not cover out {out.shape} "
            f"from column {skip}"
        )
    rows, nblk, nb = blocks.shape
    if skip == 0 and out.shape[1] == nblk * 32 and out.flags.c_contiguous:
        # whole rows (every tile of a GGMLLinear): the unrolled loop on (R, nblk * nb) contiguous bytes
        flat = np.ascontiguousarray(blocks).reshape(rows, nblk * nb)  # (R, nblk, nb) -> (R, nblk * nb)
        par = out.size >= PARALLEL_MIN_SIZE if parallel is None else bool(parallel)
        _KERNELS[kind, par](flat, F16_TO_F32, out)
        return out
    _KERNELS["window"](blocks, F16_TO_F32, KIND_CODES[kind], skip, out)
    return out
