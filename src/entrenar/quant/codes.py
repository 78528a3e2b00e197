"""The code tables of block quantization and the two primitive steps: nearest code, nibble packing.

* NF4: the 16 normal-float values of bitsandbytes (QLoRA), sorted, index = stored 4-bit code. An
  element x of a block with absmax a gets the code whose value is nearest to x / a.
* int4 (symmetric): code c stands for the integer c - 8; an element x of a block with absmax a gets
  q = rint(x / s) clipped to [-7, 7], s = a / 7, stored as c = q + 8 (codes 1..15; code 0, i.e.
  -8, is never written but decodes consistently as -8 s).
* The dynamic 8-bit map (bitsandbytes' `create_dynamic_map(signed=True)`), used for double
  quantization of the block scales: 256 sorted values in [-0.993, 1], dense near zero.

Nearest (NF4 and the dynamic map) means nearest in exact arithmetic to the float32 value x / a: the
code is the number of midpoints between consecutive table values that lie strictly below x / a, so
an exact tie goes to the lower code (as bitsandbytes' `torch.bucketize` over its midpoints). int4
rounds x / s with `np.rint`, so its ties go to the even integer.

Packing: two 4-bit codes per byte, the even-index element in the HIGH nibble,
byte[i] = (q[2i] << 4) | q[2i + 1], as bitsandbytes stores them; an odd count is padded with the
code of zero (NF4 7, int4 8).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "DIVISOR",
    "DYNAMIC_MAP",
    "INT4_CODE",
    "INT4_MAX",
    "KINDS",
    "NF4_CODE",
    "TABLE",
    "ZERO_CODE",
    "dynamic_map",
    "nearest_code",
    "pack_nibbles",
    "thresholds",
    "unpack_nibbles",
]

NF4_CODE = np.array(
    [
        -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
        -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
        0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
        0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
    ],
    dtype=np.float32,
)  # fmt: skip
NF4_CODE.flags.writeable = False

INT4_MAX = 7
INT4_CODE = np.arange(-8, 8, dtype=np.float32)  # code c decodes to c - 8
INT4_CODE.flags.writeable = False

KINDS = ("nf4", "int4")
ZERO_CODE = {"nf4": 7, "int4": 8}  # the code whose value is 0: padding and all-zero blocks
DIVISOR = {"nf4": 1.0, "int4": float(INT4_MAX)}  # block scale = absmax / DIVISOR
TABLE = {"nf4": NF4_CODE, "int4": INT4_CODE}


def dynamic_map() -> np.ndarray:
    """bitsandbytes' signed dynamic 8-bit map: 256 sorted float32 values.

    For i = 0..6 the 2**i midpoints of 2**i + 1 points spaced evenly over [0.1, 1], times 10**(i - 6),
    with both signs (254 values), plus 0 and 1. Each value is computed in float64 and rounded to
    float32 once; bitsandbytes builds the same values with float32 `torch.linspace`, whose rounding
    depends on the CPU's vector width, so its table can differ from this one by one float32 ulp in
    some entries (tests/quant compare the two when bitsandbytes is importable).
    """
    values: list[float] = [0.0, 1.0]
    for i in range(7):
        n = 2**i + 1
        bounds = 0.1 + 0.9 * np.arange(n, dtype=np.float64) / (n - 1)
        means = (bounds[:-1] + bounds[1:]) / 2
        values.extend((10.0 ** (i - 6) * means).tolist())
        values.extend((-(10.0 ** (i - 6)) * means).tolist())
    out = np.sort(np.array(values, dtype=np.float64)).astype(np.float32)
    if out.shape != (256,):
        raise AssertionError(f"the dynamic map must have 256 values, built {out.shape}")
    return out


DYNAMIC_MAP = dynamic_map()
DYNAMIC_MAP.flags.writeable = False


def thresholds(table: np.ndarray) -> np.ndarray:
    """float32 t with (s > t[k]) == (s > the exact midpoint of table[k], table[k+1]) for float32 s.

    The midpoint of two float32 values is exact in float64; rounding it DOWN to float32 keeps every
    comparison with a float32 value exact, so counting `s > t` gives the nearest code, ties low.
    """
    t64 = table.astype(np.float64)
    mid = (t64[:-1] + t64[1:]) / 2
    t = mid.astype(np.float32)
    above = t.astype(np.float64) > mid
    t[above] = np.nextafter(t[above], np.float32(-np.inf))
    return t


_THRESHOLDS = {"nf4": thresholds(NF4_CODE), "dynamic": thresholds(DYNAMIC_MAP)}


def nearest_code(scaled: np.ndarray, table: str) -> np.ndarray:
    """uint8 index of the value of `table` ("nf4" or "dynamic") nearest to each float32 element of
    `scaled` (values in [-1, 1]); an exact tie between two values picks the lower index."""
    if scaled.dtype != np.float32:
        raise TypeError(f"nearest_code: scaled must be float32, got {scaled.dtype}")
    # searchsorted(side="left") counts the thresholds strictly below each value
    return np.searchsorted(_THRESHOLDS[table], scaled, side="left").astype(np.uint8)


def pack_nibbles(codes: np.ndarray, pad: int) -> np.ndarray:
    """4-bit codes (uint8 values 0..15, 1-D) -> bytes, byte[i] = (q[2i] << 4) | q[2i+1]; an odd count
    is padded with `pad`."""
    if codes.ndim != 1 or codes.dtype != np.uint8:
        raise TypeError(f"pack_nibbles: codes must be a 1-D uint8 array, got {codes.dtype} {codes.shape}")
    if codes.size % 2:
        codes = np.concatenate([codes, np.array([pad], dtype=np.uint8)])
    return (codes[0::2] << 4) | codes[1::2]


def unpack_nibbles(packed: np.ndarray, count: int) -> np.ndarray:
    """The first `count` 4-bit codes of `packed` (uint8 bytes), in element order."""
    out = np.empty(2 * packed.size, dtype=np.uint8)
    out[0::2] = packed >> 4
    out[1::2] = packed & 15
    return out[:count]
