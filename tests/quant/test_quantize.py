"""quantize / QuantizedTensor: codes, scales, layout, storage size, errors (entrenar.quant.tensor)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from entrenar import Tensor
from entrenar.quant import INT4_CODE, NF4_CODE, QuantizedAbsmax, QuantizedTensor, quantize
from entrenar.quant.codes import unpack_nibbles


def _codes(q: QuantizedTensor) -> np.ndarray:
    return unpack_nibbles(q.data, q.numel)


def _golden_input(n: int) -> np.ndarray:
    """A fixed input whose float32 values are exact everywhere: two full blocks of 64 and a partial one."""
    i = np.arange(n)
    x = (((i * 37) % 101) - 50).astype(np.float32) / np.float32(17)
    x[64:128] *= np.float32(3)
    return x


# Produced with bitsandbytes 0.50.2 on CPU (torch 2.13, the default backend's quantize_4bit):
#   PYTHONPATH=/tmp/bnb python -c "import torch, bitsandbytes.functional as bf; \
#     p, st = bf.quantize_4bit(torch.from_numpy(x), blocksize=64, quant_type='nf4'); \
#     print(p.flatten().tolist(), st.absmax.tolist())"
# with x = _golden_input(130) (and 131 for the padded case; compress_statistics=True for the last).
BNB_NF4_130_BYTES = [
    4, 193, 110, 41, 243, 176, 93, 23, 226, 159, 60, 5, 209, 142, 42, 244, 193, 110, 24, 227, 176, 93, 23,
    226, 159, 59, 5, 209, 142, 42, 244, 193, 109, 24, 227, 176, 76, 23, 226, 159, 59, 5, 209, 126, 42, 244,
    192, 109, 24, 226, 160, 76, 22, 226, 159, 59, 5, 209, 126, 41, 243, 192, 93, 24, 242,
]  # fmt: skip
BNB_NF4_130_ABSMAX = [2.941176414489746, 8.823529243469238, 2.3529412746429443]
BNB_NF4_131_LAST_BYTES = [24, 242, 183]  # 183 = 0xB7: element 130's code 11, then the padding code 7
BNB_DQ_130 = {"codes": [40, 255, 30], "scale": [4.11764669418335], "offset": 4.705882549285889}


def test_nf4_layout_is_bitsandbytes_byte_for_byte() -> None:
    q = quantize(_golden_input(130), "nf4", 64)
    assert q.data.dtype == np.uint8 and q.data.tolist() == BNB_NF4_130_BYTES
    assert q.absmax.dtype == np.float32 and q.absmax.tolist() == BNB_NF4_130_ABSMAX
    q = quantize(_golden_input(131), "nf4", 64)
    assert q.data.tolist()[-3:] == BNB_NF4_131_LAST_BYTES
    assert q.data.size == 66


def test_double_quant_matches_bitsandbytes_on_the_golden_input() -> None:
    q = quantize(_golden_input(130), "nf4", 64, double_quant=True)
    qa = q.quantized_absmax
    assert qa is not None
    assert qa.codes.tolist() == BNB_DQ_130["codes"]
    # bitsandbytes takes the mean in float32 (torch), we sum in float64: equal to an ulp or two
    np.testing.assert_allclose(qa.offset, [BNB_DQ_130["offset"]], rtol=3e-7)
    np.testing.assert_allclose(qa.scale, BNB_DQ_130["scale"], rtol=3e-7)
    assert q.data.tolist() == BNB_NF4_130_BYTES  # the 4-bit codes do not depend on the scales' storage


def test_int4_codes_by_hand() -> None:
    # block of 8 with absmax 7: scale 1, q = rint(x) (ties to even), code q + 8; a zero block; a partial block
    x = np.array([7, -7, 2.5, -2.5, 3.5, 0.4, -0.6, 1] + [0] * 8 + [-14, 3], dtype=np.float32)
    q = quantize(x, "int4", 8)
    assert _codes(q).tolist() == [15, 1, 10, 6, 12, 8, 7, 9] + [8] * 8 + [1, 10]
    assert q.data.tolist() == [0xF1, 0xA6, 0xC8, 0x79, 0x88, 0x88, 0x88, 0x88, 0x1A]
    assert q.absmax.tolist() == [7, 0, 14]
    np.testing.assert_array_equal(q.dequantize(), [7, -7, 2, -2, 4, 0, -1, 1] + [0] * 8 + [-14, 4])


def test_nf4_codes_by_hand() -> None:
    x = np.array([-2, 2, 0, 0.2, 0.5, -0.05], dtype=np.float32)  # one block of 6 (absmax 2)
    q = quantize(x, "nf4", 6)
    # x / 2 = -1, 1, 0, 0.1, 0.25, -0.025: nearest NF4 values -1, 1, 0, 0.0796, 0.2461, 0
    assert _codes(q).tolist() == [0, 15, 7, 8, 10, 7]
    assert q.data.tolist() == [0x0F, 0x78, 0xA7]


def _blocky(draw: Any, kind: str, double_quant: bool) -> tuple[np.ndarray, int]:
    """A random array whose blocks have very different scales (and some all-zero blocks)."""
    block = draw(st.sampled_from([2, 4, 6, 8, 64]))
    shape = draw(st.sampled_from([(1,), (7,), (64,), (129,), (3, 5), (4, 64), (5, 13), (2, 3, 7)]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = math.prod(shape)
    nblocks = -(-n // block)
    # DQ keeps scales within a factor of 10: its absolute error on a scale is a fraction of the spread
    lo, hi = (-1.0, 1.0) if double_quant else (-3.0, 3.0)
    scales = 10.0 ** rng.uniform(lo, hi, nblocks)
    scales[rng.random(nblocks) < 0.15] = 0.0
    x = rng.standard_normal(n) * np.repeat(scales, block)[:n]
    return x.reshape(shape).astype(np.float32), block


@settings(max_examples=60, deadline=None)
@given(st.data(), st.sampled_from(["nf4", "int4"]), st.booleans(), st.sampled_from([np.float32, np.float64]))
def test_requantizing_a_dequantized_tensor_gives_the_same_codes(
    data: Any, kind: str, double_quant: bool, dtype: Any
) -> None:
    x, block = _blocky(data.draw, kind, double_quant)
    q = quantize(x, kind, block, double_quant)
    blocks = np.abs(np.pad(x.reshape(-1), (0, -x.size % block)).reshape(-1, block)).max(axis=1)
    # the law needs every non-zero block's (double-quantized) scale to be positive
    assume(np.all(q.absmax[blocks > 0] > 0))
    d = q.dequantize(dtype)
    assert d.shape == x.shape and d.dtype == dtype
    again = quantize(d, kind, block, double_quant)
    np.testing.assert_array_equal(again.data, q.data)
    if not double_quant:
        np.testing.assert_allclose(again.absmax, q.absmax, rtol=2e-7)  # int4: 7 * (a / 7) may round


@settings(max_examples=60, deadline=None)
@given(st.data(), st.sampled_from(["nf4", "int4"]))
def test_each_code_is_the_nearest_by_brute_force(data: Any, kind: str) -> None:
    x, block = _blocky(data.draw, kind, False)
    q = quantize(x, kind, block)
    flat = x.reshape(-1)
    a = np.repeat(q.absmax, block)[: flat.size]
    codes = _codes(q)
    if kind == "nf4":
        s = flat / np.where(a == 0, np.float32(1), a)  # float32, as quantize computes it
        dist = np.abs(s.astype(np.float64)[:, None] - NF4_CODE.astype(np.float64))
        np.testing.assert_array_equal(codes, np.argmin(dist, axis=1))  # argmin: the lower code of a tie
    else:
        scale = a / np.float32(7)
        s = flat / np.where(scale == 0, np.float32(1), scale)
        levels = INT4_CODE[1:].astype(np.float64)  # -7..7, codes 1..15
        dist = np.abs(s.astype(np.float64)[:, None] - levels)
        chosen = dist[np.arange(flat.size), codes.astype(np.int64) - 1]
        np.testing.assert_array_equal(chosen, dist.min(axis=1))
        tie = (dist == dist.min(axis=1, keepdims=True)).sum(axis=1) > 1
        assert np.all((codes[tie].astype(np.int64) - 8) % 2 == 0), "int4 ties go to the even integer"


def test_error_on_a_standard_normal_matrix_matches_the_references() -> None:
    x = np.random.default_rng(0).standard_normal((1024, 1024))
    for kind, expected in (("nf4", 0.0728), ("int4", 0.0913)):
        for dq in (False, True):
            err = np.abs(quantize(x, kind, 64, dq).dequantize(np.float64) - x).mean()
            assert abs(err - expected) <= 0.02 * expected, (kind, dq, err)


@pytest.mark.parametrize("kind", ["nf4", "int4"])
@pytest.mark.parametrize("double_quant", [False, True])
def test_partial_final_block_odd_count_and_zero_blocks(kind: str, double_quant: bool) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal(64 * 3 + 5).astype(np.float32)  # odd count, a final block of 5
    x[64:128] = 0.0  # an all-zero block
    x[-5:] *= 1e-3  # the partial block has its own (small) absmax
    q = quantize(x, kind, 64, double_quant)
    assert q.data.shape == (99,) and q.num_blocks == 4
    d = q.dequantize()
    assert np.all(np.isfinite(d))
    np.testing.assert_array_equal(d[64:128], 0.0)
    assert q.data[-1] & 15 == (7 if kind == "nf4" else 8), "the padding nibble is the zero code"
    if not double_quant:
        assert not np.any(np.signbit(d[64:128])), "an all-zero block decodes to +0"
        assert q.absmax[-1] == np.abs(x[-5:]).max()
        assert np.abs(d[-5:] - x[-5:]).max() <= 0.2 * np.abs(x[-5:]).max()


def test_all_zero_and_empty_tensors() -> None:
    for kind in ("nf4", "int4"):
        for dq in (False, True):
            q = quantize(np.zeros((3, 10)), kind, 4, dq)
            np.testing.assert_array_equal(q.dequantize(np.float64), np.zeros((3, 10)))
            e = quantize(np.zeros((0, 5), dtype=np.float32), kind, 4, dq)
            assert e.dequantize().shape == (0, 5) and e.data.size == 0 and math.isnan(e.bits_per_param)


def test_float64_round_trip_is_the_float32_one_exactly() -> None:
    x = np.random.default_rng(2).standard_normal((17, 33))
    for kind in ("nf4", "int4"):
        q = quantize(x, kind, 8)
        d64, d32 = q.dequantize(np.float64), q.dequantize(np.float32)
        assert d64.dtype == np.float64 and d32.dtype == np.float32
        np.testing.assert_array_equal(d64.astype(np.float32), d32)  # code * scale is exact in float64
        assert np.abs(d64 - x).max() <= 0.2 * np.abs(x).max()


def test_inputs_are_rounded_to_float32_first_whatever_their_type() -> None:
    x = np.random.default_rng(3).standard_normal((4, 25))
    ref = quantize(x.astype(np.float32))
    for v in (x, Tensor(x.astype(np.float32)), x.tolist()):
        q = quantize(v)
        assert q.shape == (4, 25)
        np.testing.assert_array_equal(q.data, ref.data)
        np.testing.assert_array_equal(q.absmax, ref.absmax)
    half = x.astype(np.float16)
    np.testing.assert_array_equal(quantize(half).data, quantize(half.astype(np.float32)).data)


def test_nbytes_and_bits_per_param_are_exact() -> None:
    # (4096, 4096): 8 MiB of codes + 4 bytes per block of 64, or 1 byte per block + 4 per 256 blocks + 4
    n, nb = 4096 * 4096, 4096 * 4096 // 64
    plain = QuantizedTensor(np.zeros(n // 2, np.uint8), np.zeros(nb, np.float32), (4096, 4096), "nf4", 64)
    assert plain.nbytes == n // 2 + 4 * nb and plain.bits_per_param == 4.5
    dq = QuantizedAbsmax(np.zeros(nb, np.uint8), np.zeros(nb // 256, np.float32), np.zeros(1, np.float32))
    double = QuantizedTensor(np.zeros(n // 2, np.uint8), dq, (4096, 4096), "nf4", 64)
    assert double.nbytes == n // 2 + nb + 4 * (nb // 256) + 4
    assert double.bits_per_param == 4 + 8 / 64 + 32 / (64 * 256) + 32 / n
    assert abs(double.bits_per_param - 4.127) < 5e-4
    q = quantize(np.ones(130, np.float32), "int4", 64, double_quant=True)
    assert q.nbytes == 65 + 3 + 4 + 4 == sum(a.nbytes for a in q.arrays().values())


def test_arrays_and_from_arrays_are_inverse() -> None:
    x = np.random.default_rng(4).standard_normal((6, 50))
    for dq in (False, True):
        q = quantize(x, "int4", 10, dq)
        arrays = q.arrays()
        dq_keys = {"data", "absmax_codes", "absmax_scale", "absmax_offset"}
        assert set(arrays) == (dq_keys if dq else {"data", "absmax"})
        back = QuantizedTensor.from_arrays(arrays, q.shape, q.kind, q.block_size)
        assert back.double_quant == dq and back.data is q.data
        np.testing.assert_array_equal(back.dequantize(), q.dequantize())
    with pytest.raises(ValueError, match="expected keys"):
        QuantizedTensor.from_arrays({"data": q.data}, q.shape, q.kind, q.block_size)


def test_dequantize_rows_with_blocks_straddling_rows() -> None:
    x = np.random.default_rng(5).standard_normal((9, 13))  # 13 columns, blocks of 4 cross the rows
    for dq in (False, True):
        q = quantize(x, "nf4", 4, dq)
        full = q.dequantize()
        for start, stop in ((0, 9), (2, 5), (8, 9), (4, 4)):
            np.testing.assert_array_equal(q.dequantize_rows(start, stop), full[start:stop])
        out = np.empty((3, 13), np.float64)
        assert q.dequantize_rows(1, 4, np.float64, out=out) is out
        np.testing.assert_array_equal(out, q.dequantize(np.float64)[1:4])
        np.testing.assert_array_equal(q.dequantize_rect(2, 7, 3, 12), full[2:7, 3:12])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: quantize(np.ones(4), kind="fp4"), "kind must be one of"),
        (lambda: quantize(np.ones(4), block_size=0), "block_size must be a positive even int"),
        (lambda: quantize(np.ones(4), block_size=63), "block_size must be a positive even int"),
        (lambda: quantize(np.ones(4), block_size=True), "block_size must be a positive even int"),
        (lambda: quantize(np.ones(4), block_size=64.0), "block_size must be a positive even int"),
        (lambda: quantize(np.ones(4), double_quant="yes"), "double_quant must be a bool"),
        (lambda: quantize(np.arange(4)), "x must be a floating-point array"),
        (lambda: quantize(np.array([1.0, np.nan])), r"x must be finite.*index \(1,\)"),
        (lambda: quantize(np.array([[1.0, 1e39]])), r"x must be finite and within float32's range"),
        (lambda: quantize(np.ones(4)).dequantize(np.int32), "dtype must be float32 or float64"),
        (lambda: quantize(np.ones(4)).dequantize_rows(0, 1), r"needs a 2-D \(rows, cols\) tensor"),
        (lambda: quantize(np.ones((2, 4))).dequantize_rows(1, 3), r"rows \[1, 3\) must satisfy"),
        (lambda: quantize(np.ones((2, 4))).dequantize_rect(0, 1, 3, 2), r"columns \[3, 2\) must satisfy"),
        (lambda: quantize(np.ones((2, 4))).dequantize_rows(0, 2, out=np.empty((2, 3), np.float32)),
         r"out must be a writeable float32 array of shape \(2, 4\), got float32 \(2, 3\)"),
        (lambda: quantize(np.ones((2, 4))).dequantize_rows(0, 2, out=[[0.0] * 4] * 2),
         r"out must be a writeable float32 array of shape \(2, 4\), got list"),
        (lambda: QuantizedTensor(np.zeros(3, np.uint8), np.zeros(1, np.float32), (4,), "nf4", 64),
         r"data must be a uint8 array of shape \(2,\)"),
        (lambda: QuantizedTensor(np.zeros(2, np.uint8), np.zeros(2, np.float64), (4,), "nf4", 2),
         r"absmax must be a float32 array of shape \(2,\)"),
        (lambda: QuantizedTensor(np.zeros(2, np.uint8), np.zeros(1, np.float32), [4], "nf4", 64),
         "shape must be a tuple of non-negative ints"),
    ],
)  # fmt: skip
def test_bad_input_names_the_argument_and_the_expected_form(call: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
