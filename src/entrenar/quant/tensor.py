"""QuantizedTensor: a float array stored as packed 4-bit codes and per-block scales, and `quantize`.

Storage, for n elements in blocks of B (see `reference` for the arithmetic):

    data      uint8 (ceil(n / 2),)     two 4-bit codes per byte, even element in the high nibble
    absmax    float32 (ceil(n / B),)   one scale per block                     (plain)
or, double-quantized (groups of 256 blocks):
    absmax_codes   uint8 (ceil(n / B),)         the block absmaxes in the dynamic 8-bit map
    absmax_scale   float32 (ceil(n / B / 256),) one scale per group
    absmax_offset  float32 (1,)                 the mean subtracted first

That is 4 + 32 / B bits per element (4.5 for B = 64) and 4 + 8 / B + 32 / (256 B) (4.127) with
double quantization, plus a constant 4 bytes. `arrays()` names these arrays and `from_arrays`
rebuilds the tensor from them: the one key mapping the state dict of a QuantLinear uses.

Dequantization takes the fused kernel (`entrenar.kernels.dequant_fused`) for a C-contiguous float32 or
float64 output when numba works, and the NumPy reference otherwise; the two agree bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from entrenar.kernels import dequant_fused
from entrenar.quant import reference
from entrenar.quant.codes import DIVISOR, DYNAMIC_MAP, KINDS, TABLE, ZERO_CODE, pack_nibbles
from entrenar.tensor import Tensor

__all__ = ["DOUBLE_QUANT_GROUP", "QuantizedAbsmax", "QuantizedTensor", "quantize"]

DOUBLE_QUANT_GROUP = 256  # blocks per float32 scale of the double-quantized absmaxes
_OUT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# A writeable copy for the kernel: numba types a read-only array differently and would compile its
# loops a second time for it.
_KERNEL_DMAP = np.array(DYNAMIC_MAP)


def _array(owner: str, name: str, value: Any, dtype: Any, size: int) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.dtype != dtype or value.shape != (size,):
        got = f"{value.dtype} {value.shape}" if isinstance(value, np.ndarray) else type(value).__name__
        raise ValueError(f"{owner}: {name} must be a {np.dtype(dtype)} array of shape ({size},), got {got}")
    if not value.flags.c_contiguous:
        raise ValueError(f"{owner}: {name} must be C-contiguous")
    return value


def _check_kind(owner: str, kind: Any) -> str:
    if kind not in KINDS:
        raise ValueError(f"{owner}: kind must be one of {KINDS}, got {kind!r}")
    return str(kind)


def _check_block_size(owner: str, block_size: Any) -> int:
    if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) or block_size <= 0 \
            or block_size % 2:  # fmt: skip
        raise ValueError(f"{owner}: block_size must be a positive even int, got {block_size!r}")
    return int(block_size)


def _check_dtype(owner: str, dtype: Any) -> np.dtype[Any]:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in _OUT_DTYPES:
        raise ValueError(f"{owner}: dtype must be float32 or float64, got {dtype!r}")
    return np.dtype(dt)


@dataclass(frozen=True, eq=False)
class QuantizedAbsmax:
    """Double-quantized block scales: absmax[b] = DYNAMIC_MAP[codes[b]] * scale[b // group] + offset[0]."""

    codes: np.ndarray  # uint8 (blocks,)
    scale: np.ndarray  # float32 (ceil(blocks / group),)
    offset: np.ndarray  # float32 (1,)
    group: int = DOUBLE_QUANT_GROUP

    def __post_init__(self) -> None:
        nb = self.codes.size if isinstance(self.codes, np.ndarray) else -1
        _array("QuantizedAbsmax", "codes", self.codes, np.uint8, max(nb, 0))
        _array("QuantizedAbsmax", "scale", self.scale, np.float32, -(-nb // self.group))
        _array("QuantizedAbsmax", "offset", self.offset, np.float32, 1)

    @classmethod
    def quantize(cls, absmax: np.ndarray, group: int = DOUBLE_QUANT_GROUP) -> QuantizedAbsmax:
        codes, scale, offset = reference.double_quantize(absmax, group)
        return cls(codes, scale, offset, group)

    def dequantize(self) -> np.ndarray:
        """The float32 absmax of every block, as dequantization uses them."""
        return reference.dequantize_double(self.codes, self.scale, self.offset, self.group)


class QuantizedTensor:
    """A float tensor in 4-bit block quantization (NF4 or symmetric int4); build one with `quantize`.

    Attributes: data (uint8 packed codes), shape, kind ("nf4" | "int4"), block_size, double_quant,
    absmax (float32 per block; with double quantization a dequantized view computed on each access),
    quantized_absmax (the stored QuantizedAbsmax, or None), nbytes (exact storage), bits_per_param.
    """

    __slots__ = ("_absmax", "_qabsmax", "block_size", "data", "kind", "shape")

    _absmax: np.ndarray | None
    _qabsmax: QuantizedAbsmax | None
    data: np.ndarray
    shape: tuple[int, ...]
    kind: str
    block_size: int

    def __init__(
        self,
        data: np.ndarray,
        absmax: np.ndarray | QuantizedAbsmax,
        shape: tuple[int, ...],
        kind: str,
        block_size: int,
    ) -> None:
        owner = "QuantizedTensor"
        if not isinstance(shape, tuple) or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise ValueError(f"{owner}: shape must be a tuple of non-negative ints, got {shape!r}")
        self.shape = tuple(int(d) for d in shape)
        self.kind = _check_kind(owner, kind)
        self.block_size = _check_block_size(owner, block_size)
        n = self.numel
        self.data = _array(owner, "data", data, np.uint8, -(-n // 2))
        nblocks = -(-n // self.block_size)
        if isinstance(absmax, QuantizedAbsmax):
            if absmax.codes.size != nblocks:
                raise ValueError(
                    f"{owner}: the double-quantized absmax has {absmax.codes.size} codes, "
                    f"expected one per block ({nblocks})"
                )
            self._absmax = None
            self._qabsmax = absmax
        else:
            self._absmax = _array(owner, "absmax", absmax, np.float32, nblocks)
            self._qabsmax = None

    # ------------------------------------------------------------------------------ attributes
    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def num_blocks(self) -> int:
        return -(-self.numel // self.block_size)

    @property
    def double_quant(self) -> bool:
        return self._qabsmax is not None

    @property
    def quantized_absmax(self) -> QuantizedAbsmax | None:
        return self._qabsmax

    @property
    def absmax(self) -> np.ndarray:
        """float32 (num_blocks,): the stored absmaxes, or the double-quantized ones dequantized."""
        if self._qabsmax is not None:
            return self._qabsmax.dequantize()
        assert self._absmax is not None
        return self._absmax

    def arrays(self) -> dict[str, np.ndarray]:
        """Every stored array by name (the arrays themselves, not copies); `from_arrays` inverts it."""
        if self._qabsmax is None:
            assert self._absmax is not None
            return {"data": self.data, "absmax": self._absmax}
        q = self._qabsmax
        return {
            "data": self.data,
            "absmax_codes": q.codes,
            "absmax_scale": q.scale,
            "absmax_offset": q.offset,
        }

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], shape: tuple[int, ...], kind: str, block_size: int
    ) -> QuantizedTensor:
        """The tensor whose `arrays()` are `arrays` (same keys, the arrays used as they are)."""
        keys = set(arrays)
        if keys == {"data", "absmax"}:
            return cls(arrays["data"], arrays["absmax"], shape, kind, block_size)
        if keys == {"data", "absmax_codes", "absmax_scale", "absmax_offset"}:
            q = QuantizedAbsmax(arrays["absmax_codes"], arrays["absmax_scale"], arrays["absmax_offset"])
            return cls(arrays["data"], q, shape, kind, block_size)
        raise ValueError(
            "QuantizedTensor.from_arrays: expected keys {data, absmax} or {data, absmax_codes, absmax_scale, "
            f"absmax_offset}}, got {sorted(keys)}"
        )

    @property
    def nbytes(self) -> int:
        """Bytes of every stored array together."""
        return sum(a.nbytes for a in self.arrays().values())

    @property
    def bits_per_param(self) -> float:
        """8 * nbytes / numel (NaN for an empty tensor)."""
        return 8 * self.nbytes / self.numel if self.numel else math.nan

    def __repr__(self) -> str:
        return (
            f"QuantizedTensor(shape={self.shape}, kind={self.kind!r}, block_size={self.block_size}, "
            f"double_quant={self.double_quant}, bits_per_param={self.bits_per_param:.4g})"
        )

    # ------------------------------------------------------------------------------ dequantization
    def dequantize(self, dtype: Any = np.float32) -> np.ndarray:
        """The float tensor (of `shape`) that the codes and scales stand for, in float32 or float64."""
        dt = _check_dtype("QuantizedTensor.dequantize", dtype)
        out = np.empty(self.shape, dtype=dt)
        self._rect(self.numel, (0, 1), (0, self.numel), out.reshape(1, -1))
        return out

    def dequantize_rows(
        self,
        start: int,
        stop: int,
        dtype: Any = np.float32,
        out: np.ndarray | None = None,
        *,
        parallel: bool | None = None,
    ) -> np.ndarray:
        """Rows [start, stop) of a 2-D (rows, cols) tensor, shape (stop - start, cols), into `out` if given.

        Blocks run over the row-major flattened tensor, so when cols is not a multiple of block_size
        a block straddles two rows; each element still takes its own block's scale. `parallel` as in
        `dequantize_rect`.
        """
        cols = self._matrix("dequantize_rows")[1]
        return self.dequantize_rect(start, stop, 0, cols, dtype, out, parallel=parallel)

    def dequantize_rect(
        self,
        row_start: int,
        row_stop: int,
        col_start: int,
        col_stop: int,
        dtype: Any = np.float32,
        out: np.ndarray | None = None,
        *,
        parallel: bool | None = None,
    ) -> np.ndarray:
        """The sub-matrix [row_start:row_stop, col_start:col_stop] of a 2-D tensor, into `out` if given.

        parallel: whether the fused kernel may use numba's threads (None: for large outputs). False
        keeps it on the calling thread, as `quant_linear` does between BLAS calls, where numba's
        threads and OpenBLAS's still-spinning ones would take the cores from each other.
        """
        owner = "QuantizedTensor.dequantize_rect"
        rows, cols = self._matrix(owner)
        dt = _check_dtype(owner, dtype)
        for name, lo, hi, size in (
            ("rows", row_start, row_stop, rows),
            ("columns", col_start, col_stop, cols),
        ):
            if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (lo, hi)) or \
                    not 0 <= lo <= hi <= size:  # fmt: skip
                raise ValueError(
                    f"{owner}: {name} [{lo!r}, {hi!r}) must satisfy 0 <= start <= stop <= {size}"
                )
        shape = (int(row_stop) - int(row_start), int(col_stop) - int(col_start))
        if out is None:
            out = np.empty(shape, dtype=dt)
        elif (
            not isinstance(out, np.ndarray)
            or out.shape != shape
            or out.dtype != dt
            or not out.flags.writeable
        ):
            got = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
            raise ValueError(f"{owner}: out must be a writeable {dt} array of shape {shape}, got {got}")
        rows_, columns = (int(row_start), int(row_stop)), (int(col_start), int(col_stop))
        return self._rect(cols, rows_, columns, out, parallel)

    def _matrix(self, owner: str) -> tuple[int, int]:
        if len(self.shape) != 2:
            raise ValueError(
                f"QuantizedTensor.{owner.split('.')[-1]}: needs a 2-D (rows, cols) tensor, "
                f"this one has shape {self.shape}"
            )
        return self.shape[0], self.shape[1]

    def _rect(
        self,
        cols: int,
        rows: tuple[int, int],
        columns: tuple[int, int],
        out: np.ndarray,
        parallel: bool | None = None,
    ) -> np.ndarray:
        """The checked sub-matrix of the flat tensor viewed as (numel / cols, cols), into 2-D `out`."""
        if out.size == 0:
            return out
        if dequant_fused.supports(out):
            lut = TABLE[self.kind].astype(out.dtype)
            q = self._qabsmax
            double = None if q is None else (q.codes, _KERNEL_DMAP, q.scale, q.offset, q.group)
            return dequant_fused.dequantize_rect(
                self.data, lut, self.block_size, cols, rows[0], columns[0], out,
                absmax=self._absmax, divisor=DIVISOR[self.kind], double=double, parallel=parallel,
            )  # fmt: skip
        return reference.dequantize_rect(
            self.data, self.absmax, self.kind, self.block_size, cols, rows, columns, out
        )


def quantize(x: Any, kind: str = "nf4", block_size: int = 64, double_quant: bool = False) -> QuantizedTensor:
    """Quantize a float array (ndarray or Tensor, any shape) to 4-bit codes in blocks of `block_size`.

    kind "nf4": each element's code is the NF4 value nearest to x / absmax of its block. kind "int4":
    q = round(x / (absmax / 7)) in [-7, 7], stored as q + 8. double_quant: also quantize the block
    absmaxes to 8 bits (mean offset, groups of 256). The input is rounded to float32 first (the
    precision of the scales). See `entrenar.quant.reference` for the exact arithmetic.
    """
    kind = _check_kind("quantize", kind)
    block_size = _check_block_size("quantize", block_size)
    if not isinstance(double_quant, (bool, np.bool_)):
        raise ValueError(f"quantize: double_quant must be a bool, got {double_quant!r}")
    arr = x.data if isinstance(x, Tensor) else np.asarray(x)
    if arr.dtype.kind != "f":
        raise ValueError(
            f"quantize: x must be a floating-point array (float16, float32 or float64), got {arr.dtype}"
        )
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes inf, reported below
        flat = np.ascontiguousarray(arr, dtype=np.float32).reshape(-1)
    bad = ~np.isfinite(flat)
    if bad.any():
        first = np.unravel_index(int(np.argmax(bad)), arr.shape)
        raise ValueError(
            f"quantize: x must be finite and within float32's range; {int(bad.sum())} element(s) "
            f"are not (the first at index {tuple(int(i) for i in first)}: {arr[first]!r})"
        )
    codes, absmax = reference.quantize_codes(flat, kind, block_size)
    data = pack_nibbles(codes, ZERO_CODE[kind])
    scales: np.ndarray | QuantizedAbsmax = QuantizedAbsmax.quantize(absmax) if double_quant else absmax
    return QuantizedTensor(data, scales, tuple(arr.shape), kind, block_size)
