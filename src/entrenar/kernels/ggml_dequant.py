"""Fused GGML block dequantization (Q4_0, Q4_1, Q8_0) for `entrenar.quant.ggml.GGMLTensor`.

The NumPy reference, which is the spec, is `entrenar.quant.ggml.dequantize_blocks`; the test
tests/llama/test_ggml_blocks.py holds the two equal bit for bit. The float16 scales (and Q4_1
minimums) are converted to float32 by NumPy before the loop; per element, in float32 and in this
order (no fastmath, so no fused multiply-add), then stored in the output dtype::

    Q4_0  d * (q - 8)     Q4_1  d * q + m     Q8_0  d * q

One pass writes the sub-rectangle straight into `out` (the NumPy path builds the whole blocks,
then copies the window). Compiled lazily on first use, as the other kernels; without numba
`available()` is False and the caller takes the reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from entrenar.kernels._lazy import import_numba, jit, once

__all__ = ["KIND_CODES", "available", "dequantize_window"]

KIND_CODES = {"Q4_0": 0, "Q4_1": 1, "Q8_0": 2}
_KERNELS: dict[str, Any] = {}


def _window(codes: np.ndarray, d: np.ndarray, m: np.ndarray, kind: int, skip: int, out: np.ndarray) -> None:
    """codes (R, nblk, 16 or 32) uint8, d and m (R, nblk) float32 -> out (R, C): elements skip .. skip + C."""
    rows, ncols = out.shape
    nblk = d.shape[1]
    for r in range(rows):
        for b in range(nblk):
            db = d[r, b]
            mb = m[r, b]
            base = b * 32 - skip
            for j in range(32):
                c = base + j
                if c < 0 or c >= ncols:
                    continue
                if kind == 2:
                    q = np.float32(np.int8(codes[r, b, j]))
                    out[r, c] = db * q
                else:
                    byte = codes[r, b, j % 16]
                    q4 = (byte & 15) if j < 16 else (byte >> 4)
                    if kind == 0:
                        out[r, c] = db * (np.float32(q4) - np.float32(8.0))
                    else:
                        out[r, c] = db * np.float32(q4) + mb


@once
def _load() -> str | None:
    numba, reason = import_numba()
    if numba is None:
        return reason
    _KERNELS["window"] = jit(numba, _window)
    return None


def available() -> bool:
    return _load() is None


def dequantize_window(kind: str, blocks: np.ndarray, skip: int, out: np.ndarray) -> np.ndarray:
    """blocks (R, nblk, type bytes) uint8 -> out (R, C), C <= nblk * 32 - skip, starting `skip` into row."""
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
    d = np.ascontiguousarray(blocks[:, :, 0:2]).view(np.float16).astype(np.float32)[..., 0]  # (R, nblk)
    if kind == "Q4_1":
        m = np.ascontiguousarray(blocks[:, :, 2:4]).view(np.float16).astype(np.float32)[..., 0]
        codes = blocks[:, :, 4:]
    else:
        m = d  # unused
        codes = blocks[:, :, 2:]
    _KERNELS["window"](codes, d, m, KIND_CODES[kind], skip, out)
    return out
