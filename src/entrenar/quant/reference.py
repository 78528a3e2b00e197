"""Block quantization in plain NumPy: the spec that the fused kernel and every test are held to.

Quantize (element x_i of the row-major flattened tensor, block b = i // B, B = block_size)::

    a_b  = max_{i in b} |x_i|                       (float32; a final partial block has its own)
    NF4  c_i = nearest NF4 code to x_i / a_b        (float32 division, ties to the lower code)
    int4 s_b = a_b / 7;  c_i = clip(rint(x_i / s_b), -7, 7) + 8        (rint: ties to even)

with x / 0 taken as 0, so an all-zero block gets the zero code and decodes to zeros (never NaN).

Double quantization of the block absmaxes (the 4-bit codes are unchanged; groups of G = 256 blocks)::

    m    = mean_b a_b                               (summed in float64, rounded to float32)
    d_b  = a_b - m;   S_g = max_{b in g} |d_b|      (float32)
    q_b  = nearest dynamic-map code to d_b / S_g    (uint8; S_g = 0 gives code of 0)
    a~_b = DYNAMIC_MAP[q_b] * S_g + m               (float32: what dequantization uses for a_b)

Dequantize: x~_i = TABLE[c_i] * (a_b / D), D = 1 (NF4) or 7 (int4); a_b / D in float32, the
product in the output dtype (float32, or float64 where it is exact).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from entrenar.quant.codes import DIVISOR, DYNAMIC_MAP, INT4_MAX, TABLE, ZERO_CODE, nearest_code

__all__ = ["dequantize_double", "dequantize_rect", "double_quantize", "quantize_codes"]

# Elements per chunk of the NumPy loops, so that their temporaries stay a few MiB whatever the size.
_CHUNK = 1 << 20


def quantize_codes(x: np.ndarray, kind: str, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(codes uint8 (n,), absmax float32 (ceil(n / block_size),)) of the 1-D float32 array x."""
    n = x.size
    nblocks = -(-n // block_size)
    codes = np.empty(n, dtype=np.uint8)
    absmax = np.empty(nblocks, dtype=np.float32)
    per = max(1, _CHUNK // block_size)  # blocks per chunk
    for b0 in range(0, nblocks, per):
        b1 = min(nblocks, b0 + per)
        i0, i1 = b0 * block_size, min(n, b1 * block_size)
        flat = np.zeros((b1 - b0) * block_size, dtype=np.float32)  # a partial last block is padded with 0
        flat[: i1 - i0] = x[i0:i1]
        xb = flat.reshape(b1 - b0, block_size)  # (blocks, B)
        a = np.abs(xb).max(axis=1)
        absmax[b0:b1] = a
        if kind == "nf4":
            scaled = xb / np.where(a == 0, np.float32(1), a)[:, None]
            c = nearest_code(scaled.reshape(-1), "nf4")
        else:
            s = a / np.float32(INT4_MAX)
            q = np.rint(xb / np.where(s == 0, np.float32(1), s)[:, None])
            c = (np.clip(q, -INT4_MAX, INT4_MAX) + ZERO_CODE["int4"]).astype(np.uint8).reshape(-1)
        codes[i0:i1] = c[: i1 - i0]
    return codes, absmax


def double_quantize(absmax: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes uint8 (blocks,), scale float32 (ceil(blocks / group),), offset float32 (1,)) of absmax."""
    nb = absmax.size
    offset = np.array([absmax.astype(np.float64).mean() if nb else 0.0], dtype=np.float32)
    d = absmax - offset[0]  # float32
    ngroups = -(-nb // group)
    flat = np.zeros(ngroups * group, dtype=np.float32)
    flat[:nb] = d
    padded = flat.reshape(ngroups, group)  # (groups, G)
    scale = np.abs(padded).max(axis=1) if nb else np.zeros(0, dtype=np.float32)
    scaled = padded / np.where(scale == 0, np.float32(1), scale)[:, None]
    codes = nearest_code(scaled.reshape(-1)[:nb], "dynamic")
    return codes, scale.astype(np.float32), offset


def dequantize_double(codes: np.ndarray, scale: np.ndarray, offset: np.ndarray, group: int) -> np.ndarray:
    """The float32 block absmaxes that double-quantized scales stand for."""
    nb = codes.size
    return DYNAMIC_MAP[codes] * np.repeat(scale, group)[:nb] + offset[0]


def dequantize_rect(
    data: np.ndarray,
    absmax: np.ndarray,
    kind: str,
    block_size: int,
    cols: int,
    rows: tuple[int, int],
    columns: tuple[int, int],
    out: np.ndarray,
) -> np.ndarray:
    """Rows [r0, r1) x columns [c0, c1) of the (rows, cols) matrix packed in `data` into `out`.

    absmax: the float32 absmax of every block (already dequantized when double-quantized). Each
    element is computed from its own flat index, so blocks may straddle rows freely.
    """
    (r0, r1), (c0, c1) = rows, columns
    dtype = out.dtype
    lut = TABLE[kind].astype(dtype)
    divisor = np.float32(DIVISOR[kind])
    width = c1 - c0
    step = max(1, _CHUNK // max(1, width))  # rows per chunk
    for a in range(r0, r1, step):
        b = min(r1, a + step)
        idx = np.arange(a, b, dtype=np.int64)[:, None] * cols + np.arange(c0, c1, dtype=np.int64)  # (R, C)
        byte = data[idx >> 1]
        code = np.where(idx & 1, byte & 15, byte >> 4)  # the even element sits in the high nibble
        scale: Any = absmax[idx // block_size] / divisor  # float32
        out[a - r0 : b - r0] = lut[code] * scale.astype(dtype)
    return out
