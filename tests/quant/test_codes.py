"""Code tables, nearest-code search and nibble packing (entrenar.quant.codes)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from entrenar.quant.codes import (
    DYNAMIC_MAP,
    INT4_CODE,
    NF4_CODE,
    nearest_code,
    pack_nibbles,
    thresholds,
    unpack_nibbles,
)

# The NF4 values as bitsandbytes lists them (ANCHORS.md), index = stored code.
BNB_NF4 = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
]  # fmt: skip

finite32 = st.floats(-1.0, 1.0, width=32)


def test_tables() -> None:
    assert NF4_CODE.dtype == np.float32 and NF4_CODE.tolist() == [float(np.float32(v)) for v in BNB_NF4]
    assert INT4_CODE.tolist() == list(range(-8, 8))
    assert DYNAMIC_MAP.dtype == np.float32 and DYNAMIC_MAP.shape == (256,)
    assert np.all(np.diff(DYNAMIC_MAP) > 0), "the dynamic map must be strictly increasing"
    assert DYNAMIC_MAP[-1] == 1.0 and 0.0 in DYNAMIC_MAP
    # bitsandbytes' extremes and its value nearest zero: +-0.993 and +-(1e-6 * 0.55)
    assert DYNAMIC_MAP[0] == np.float32(-0.99296875)
    assert np.float32(5.5e-7) in DYNAMIC_MAP
    for table in (NF4_CODE, DYNAMIC_MAP):
        with pytest.raises(ValueError):
            table[0] = 0  # read-only: a module constant must not be edited by accident


def test_thresholds_are_the_float32_just_below_the_exact_midpoints() -> None:
    for table in (NF4_CODE, DYNAMIC_MAP):
        t = thresholds(table)
        mid = (table[:-1].astype(np.float64) + table[1:].astype(np.float64)) / 2
        assert np.all(t.astype(np.float64) <= mid)
        above = np.nextafter(t, np.float32(np.inf)).astype(np.float64)
        assert np.all(above > mid), "no float32 lies between a threshold and its midpoint"


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 64), elements=finite32))
def test_nearest_nf4_code_is_the_nearest_value_ties_low(s: np.ndarray) -> None:
    codes = nearest_code(s, "nf4")
    # brute force in float64 (exact for these differences); np.argmin takes the first (lower) of a tie
    expected = np.argmin(np.abs(s.astype(np.float64)[:, None] - NF4_CODE.astype(np.float64)), axis=1)
    np.testing.assert_array_equal(codes, expected)


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 64), elements=finite32))
def test_nearest_dynamic_code_is_the_nearest_value_ties_low(s: np.ndarray) -> None:
    codes = nearest_code(s, "dynamic")
    expected = np.argmin(np.abs(s.astype(np.float64)[:, None] - DYNAMIC_MAP.astype(np.float64)), axis=1)
    np.testing.assert_array_equal(codes, expected)


def test_exact_midpoints_go_to_the_lower_code() -> None:
    mid = (NF4_CODE[:-1].astype(np.float64) + NF4_CODE[1:].astype(np.float64)) / 2
    exact = mid.astype(np.float32).astype(np.float64) == mid  # the midpoints a float32 can hold
    assert exact.any()
    s = mid[exact].astype(np.float32)
    lower = np.nonzero(exact)[0]
    np.testing.assert_array_equal(nearest_code(s, "nf4"), lower)
    np.testing.assert_array_equal(nearest_code(np.nextafter(s, np.float32(2)), "nf4"), lower + 1)


def test_nearest_code_needs_float32() -> None:
    with pytest.raises(TypeError, match="float32"):
        nearest_code(np.zeros(3), "nf4")


def test_packing_layout_even_element_in_the_high_nibble() -> None:
    codes = np.array([1, 2, 15, 0, 7], dtype=np.uint8)
    packed = pack_nibbles(codes, pad=9)
    assert packed.tolist() == [0x12, 0xF0, 0x79]  # the odd count is padded with 9
    np.testing.assert_array_equal(unpack_nibbles(packed, 5), codes)


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.uint8, st.integers(0, 50), elements=st.integers(0, 15)))
def test_unpack_inverts_pack(codes: np.ndarray) -> None:
    packed = pack_nibbles(codes, pad=7)
    assert packed.shape == ((codes.size + 1) // 2,)
    np.testing.assert_array_equal(unpack_nibbles(packed, codes.size), codes)
    for i in range(codes.size):  # byte i // 2, high nibble for even i
        assert (packed[i // 2] >> (4 if i % 2 == 0 else 0)) & 15 == codes[i]
