"""Fused 4-bit block dequantization: packed codes and block scales -> float32 / float64, one pass.

The fast path of `entrenar.quant.QuantizedTensor.dequantize_rect` (and so of `dequantize`,
`dequantize_rows` and the `quant_linear` op). The plain-NumPy reference, which is the spec, is
`entrenar.quant.reference.dequantize_rect`; tests/quant/test_dequant_fused.py holds the two equal
bit for bit. For element i of the row-major flattened tensor, in block b = i // block_size::

    code  = data[i // 2] >> 4        if i is even      (the even element sits in the HIGH nibble)
            data[i // 2] & 15        if i is odd
    a_b   = absmax[b]                                               (plain scales)
            dmap[qabsmax[b]] * dscale[b // dgroup] + offset         (double-quantized scales, float32)
    s_b   = a_b / divisor                                           (float32; 1 for NF4, 7 for int4)
    out_i = lut[code] * s_b                                         (in the output dtype)

`lut` is the 16-value code table in the output dtype. Every float32 operation is done in float32
in that order, without fastmath, so LLVM neither fuses a multiply-add nor reorders: the result is
the reference's bit for bit. In float64, lut[code] and s_b are float32 values whose product is
exact in float64, so a float64 result rounded to float32 is the float32 result.

Per block: its scale is computed once, its bytes are split into codes in a small scratch, and
each code is looked up by a tree of selects (vectorized: LLVM does not vectorize a gather from a
16-entry table for AVX2) and multiplied by the scale. The loops are split into tasks over rows (a
sub-rectangle of a 2-D tensor) or over chunks of whole blocks (a run of whole rows), run on
numba's threads (`NUMBA_NUM_THREADS`) for outputs of at least `PARALLEL_MIN_SIZE` elements and on
the calling thread below that.

Measured (bench/bench_quant.py, 4096 x 4096 NF4 to float32, a shared 2-core VM whose memory
bandwidth was ~4-10 GB/s at the time): 17 ms fused, 76 ms for the fastest NumPy lookup (a 256-entry
byte table; the anchor machine ran it in 13.6 ms), 272 ms for the NumPy reference. Writing 64 MB is
the bound there: one and two threads took the same time, and a bare memset of the output took
6.5 ms.

Compilation is lazy, as in `optim_fused`: numba is imported on the first call and each loop is
compiled once per output dtype and cached on disk (`cache=True`). Without numba (or with
`NUMBA_DISABLE_JIT`) `available()` is False and `supports()` says no, so the caller takes the
reference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from entrenar.kernels._lazy import import_numba, jit, once, probes

__all__ = ["PARALLEL_MIN_SIZE", "available", "dequantize_rect", "supports", "unavailable_reason"]

# Below this many output elements one thread is as fast: waking numba's pool costs a few microseconds.
PARALLEL_MIN_SIZE = 1 << 16
# A chunk of the flat loop (in blocks): large enough to amortise the scheduling, small enough to balance.
_CHUNK_BLOCKS = 256
# Tasks per thread: a few, so that a thread slowed by another process does not hold up the rest.
_TASKS_PER_THREAD = 4

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

prange: Callable[..., Any] = range  # rebound to numba.prange by _compile_all


def _compile_all() -> str | None:
    numba, reason = import_numba()
    if reason is not None:
        return reason
    g = globals()
    g["prange"] = numba.prange

    for name in ("_block_scale", "_select", "_segment"):
        g[name] = jit(numba, g[name], inline="always")
    for name in ("_rows", "_flat"):
        _LOOPS[name, False] = jit(numba, g[name])
        _LOOPS[name, True] = jit(numba, g[name], parallel=True)
    return None


_LOOPS: dict[tuple[str, bool], Any] = {}  # (loop, parallel) -> compiled loop, filled on first use
_load = once(_compile_all)

available, unavailable_reason = probes(_load)


def supports(out: Any) -> bool:
    """Whether the kernel writes `out`: a writeable C-contiguous float32/float64 ndarray, numba working."""
    return (
        isinstance(out, np.ndarray)
        and out.dtype in _DTYPES
        and out.flags.c_contiguous
        and out.flags.writeable
        and _load() is None
    )


# ---- per block and per run of elements --------------------------------------------------------------
# sc, the scales: (absmax, qabsmax, dmap, dscale, offset, dgroup, dq). absmax (float32 per block) is
# used when dq is False; otherwise qabsmax (uint8 per block), dmap (float32, 256), dscale (float32 per
# group of dgroup blocks) and offset (float32, (1,)). The unused arrays are 1-element stand-ins.


def _block_scale(b: int, sc: Any, divisor: Any) -> Any:
    absmax, qabsmax, dmap, dscale, offset, dgroup, dq = sc
    a = dmap[qabsmax[b]] * dscale[b // dgroup] + offset[0] if dq else absmax[b]
    return a / divisor


def _select(q: Any, t: Any) -> Any:
    """t[q] for a code q in [0, 16) and a 16-tuple t, as a tree of selects on q's bits.

    An array lookup lut[q] is a gather, which LLVM does not vectorize for AVX2; fifteen selects
    (blends) per element over values held in registers do vectorize, and ran 1.6x faster.
    """
    b0 = (q & 1) != 0
    b1 = (q & 2) != 0
    b2 = (q & 4) != 0
    a0 = t[1] if b0 else t[0]
    a1 = t[3] if b0 else t[2]
    a2 = t[5] if b0 else t[4]
    a3 = t[7] if b0 else t[6]
    a4 = t[9] if b0 else t[8]
    a5 = t[11] if b0 else t[10]
    a6 = t[13] if b0 else t[12]
    a7 = t[15] if b0 else t[14]
    c0 = a1 if b1 else a0
    c1 = a3 if b1 else a2
    c2 = a5 if b1 else a4
    c3 = a7 if b1 else a6
    d0 = c1 if b2 else c0
    d1 = c3 if b2 else c2
    return d1 if (q & 8) != 0 else d0


def _segment(data: Any, lut: Any, bs: int, i0: int, i1: int, out: Any, o0: int, codes: Any, sc: Any,
             divisor: Any) -> None:  # fmt: skip
    """Elements [i0, i1) of the flat tensor into out[o0 : o0 + i1 - i0] (out 1-D).

    Block by block: the bytes holding the block's elements are split into their two codes in
    `codes` (an int32 scratch of block_size + 2 entries, so it stays in L1), then looked up and
    scaled. Both inner loops vectorize; splitting a whole chunk first and reading the codes back
    from L2 was 4x slower (measured).
    """
    t = (lut[0], lut[1], lut[2], lut[3], lut[4], lut[5], lut[6], lut[7], lut[8], lut[9], lut[10], lut[11],
         lut[12], lut[13], lut[14], lut[15])  # fmt: skip
    for b in range(i0 // bs, (i1 - 1) // bs + 1):
        lo = max(i0, b * bs)
        hi = min(i1, (b + 1) * bs)
        s = _block_scale(b, sc, divisor)
        first = lo >> 1
        nbytes = ((hi + 1) >> 1) - first
        # Slices rather than offset indices: with offsets, LLVM left these loops scalar inside the
        # callers' loop nests (2.5x slower, measured).
        src = data[first : first + nbytes]
        for k in range(nbytes):  # codes[k] is element 2 * first + k
            v = np.int32(src[k])
            codes[2 * k] = v >> 4
            codes[2 * k + 1] = v & 15
        run = codes[lo & 1 : (lo & 1) + hi - lo]
        dst = out[o0 + lo - i0 : o0 + hi - i0]
        for j in range(hi - lo):
            dst[j] = _select(run[j], t) * s


# ---- loops: tasks over runs of rows or of whole blocks; each task owns one code scratch ------------


def _rows(data: Any, lut: Any, bs: int, cols: int, r0: int, c0: int, out: Any, tasks: int, sc: Any,
          divisor: Any) -> None:  # fmt: skip
    nrows, width = out.shape
    flat = out.reshape(-1)
    per = (nrows + tasks - 1) // tasks
    for task in prange(tasks):
        codes = np.empty(bs + 2, dtype=np.int32)
        for r in range(task * per, min(nrows, (task + 1) * per)):
            i0 = (r0 + r) * cols + c0
            _segment(data, lut, bs, i0, i0 + width, flat, r * width, codes, sc, divisor)


def _flat(data: Any, lut: Any, bs: int, i0: int, chunk: int, out: Any, tasks: int, sc: Any,
          divisor: Any) -> None:  # fmt: skip
    n = out.size
    nchunks = (n + chunk - 1) // chunk
    per = (nchunks + tasks - 1) // tasks
    for task in prange(tasks):
        codes = np.empty(bs + 2, dtype=np.int32)
        for q in range(task * per, min(nchunks, (task + 1) * per)):
            a = q * chunk
            _segment(data, lut, bs, i0 + a, i0 + min(n, a + chunk), out, a, codes, sc, divisor)


# ---- entry point ------------------------------------------------------------------------------------

_NO_U8 = np.zeros(1, dtype=np.uint8)
_NO_F32 = np.zeros(1, dtype=np.float32)


def dequantize_rect(
    data: np.ndarray,
    lut: np.ndarray,
    block_size: int,
    cols: int,
    row_start: int,
    col_start: int,
    out: np.ndarray,
    *,
    absmax: np.ndarray | None,
    divisor: float,
    double: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int] | None = None,
    parallel: bool | None = None,
) -> np.ndarray:
    """Write rows [row_start, row_start + out.shape[0]) x cols [col_start, col_start + out.shape[1]) of
    the (rows, cols) matrix whose row-major codes are packed in `data` into `out` (2-D), and return it.

    lut: the 16 code values in out's dtype. Scales: `absmax` (float32, one per block), or
    double=(qabsmax uint8 per block, dmap float32 (256,), dscale float32 per group, offset float32 (1,),
    group) with absmax None. divisor: what each block's absmax is divided by (float32 arithmetic).
    parallel: None picks numba's threads for outputs of at least PARALLEL_MIN_SIZE elements.
    The caller (QuantizedTensor) has checked the shapes and ranges; this checks only what the
    compiled loop relies on (dtypes, contiguity).
    """
    reason = _load()
    if reason is not None:
        raise RuntimeError(
            f"the fused dequantization kernel is unavailable: {reason}; "
            "use entrenar.quant.reference.dequantize_rect"
        )
    if not supports(out) or out.ndim != 2:
        raise ValueError(
            "out must be a writeable C-contiguous 2-D float32/float64 array, got "
            f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}"
        )
    if lut.dtype != out.dtype or lut.shape != (16,):
        raise ValueError(f"lut must be 16 values of out's dtype {out.dtype}, got {lut.dtype} {lut.shape}")
    if data.dtype != np.uint8:
        raise ValueError(f"data must be uint8 packed codes, got {data.dtype}")
    if out.size == 0:
        return out
    if double is None:
        if absmax is None or absmax.dtype != np.float32:
            raise ValueError("absmax must be a float32 array when the scales are not double-quantized")
        sc: tuple[Any, ...] = (absmax, _NO_U8, _NO_F32, _NO_F32, _NO_F32, 1, False)
    else:
        qabsmax, dmap, dscale, offset, group = double
        sc = (_NO_F32, qabsmax, dmap, dscale, offset, int(group), True)
    div = np.float32(divisor)
    par = out.size >= PARALLEL_MIN_SIZE if parallel is None else parallel
    tasks = _TASKS_PER_THREAD * _num_threads() if par else 1
    if col_start == 0 and out.shape[1] == cols:  # one run of the flat tensor: chunks of whole blocks
        chunk = _CHUNK_BLOCKS * block_size
        _LOOPS["_flat", par](data, lut, block_size, row_start * cols, chunk, out.reshape(-1), tasks, sc, div)
    else:
        _LOOPS["_rows", par](data, lut, block_size, cols, row_start, col_start, out, tasks, sc, div)
    return out


def _num_threads() -> int:
    import numba  # already imported by _load

    return int(numba.get_num_threads())
