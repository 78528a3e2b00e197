"""The fused dequantization kernel equals the NumPy reference bit for bit, and QuantizedTensor uses it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entrenar.kernels import dequant_fused
from entrenar.quant import QuantizedTensor, quantize, reference
from entrenar.quant.codes import DIVISOR, DYNAMIC_MAP, TABLE

pytestmark = pytest.mark.skipif(
    not dequant_fused.available(), reason=f"numba unavailable: {dequant_fused.unavailable_reason()}"
)


def test_available() -> None:
    # numba is a runtime dependency: the fused path must be usable wherever entrenar is installed.
    assert dequant_fused.available(), dequant_fused.unavailable_reason()


def _reference(q: QuantizedTensor, rows: tuple[int, int], cols: tuple[int, int], dtype: Any) -> np.ndarray:
    out = np.empty((rows[1] - rows[0], cols[1] - cols[0]), dtype=dtype)
    return reference.dequantize_rect(q.data, q.absmax, q.kind, q.block_size, q.shape[1], rows, cols, out)


def _same_bits(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    bits = [np.ascontiguousarray(v).view(np.uint8) for v in (a, b)]
    np.testing.assert_array_equal(*bits)  # -0.0 and +0.0 differ too


@st.composite
def quantized_rect(draw: Any) -> tuple[QuantizedTensor, tuple[int, int], tuple[int, int]]:
    rows = draw(st.integers(1, 9))
    cols = draw(st.integers(1, 40))
    block = draw(st.sampled_from([2, 4, 6, 8, 16, 64]))
    kind = draw(st.sampled_from(["nf4", "int4"]))
    dq = draw(st.booleans())
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)) * 10.0 ** rng.uniform(-2, 2, (rows, 1))
    x[rng.random((rows, cols)) < 0.1] = 0.0
    q = quantize(x, kind, block, dq)
    r0 = draw(st.integers(0, rows))
    r1 = draw(st.integers(r0, rows))
    c0 = draw(st.integers(0, cols))
    c1 = draw(st.integers(c0, cols))
    return q, (r0, r1), (c0, c1)


@settings(max_examples=150, deadline=None)
@given(quantized_rect(), st.sampled_from([np.float32, np.float64]), st.booleans())
def test_kernel_equals_reference_bit_for_bit(case: Any, dtype: Any, parallel: bool) -> None:
    q, rows, cols = case
    expected = _reference(q, rows, cols, dtype)
    out = np.empty(expected.shape, dtype=dtype)
    qa = q.quantized_absmax
    absmax, double = (q.absmax, None) if qa is None else (None, (qa.codes, np.array(DYNAMIC_MAP), qa.scale,
                                                                 qa.offset, qa.group))  # fmt: skip
    got = dequant_fused.dequantize_rect(
        q.data, TABLE[q.kind].astype(dtype), q.block_size, q.shape[1], rows[0], cols[0], out, absmax=absmax,
        divisor=DIVISOR[q.kind], double=double, parallel=parallel,
    )  # fmt: skip
    assert got is out
    _same_bits(out, expected)


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Which implementation QuantizedTensor took for each dequantization during the test."""
    log: list[str] = []
    for module, tag in ((dequant_fused, "fused"), (reference, "reference")):
        fn = module.dequantize_rect

        def spy(*a: Any, _fn: Any = fn, _tag: str = tag, **k: Any) -> Any:
            log.append(_tag)
            return _fn(*a, **k)

        monkeypatch.setattr(module, "dequantize_rect", spy)
    yield log


@pytest.mark.parametrize("kind", ["nf4", "int4"])
@pytest.mark.parametrize("double_quant", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_quantized_tensor_takes_the_kernel_and_matches_the_reference(
    kind: str, double_quant: bool, dtype: Any, calls: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # large enough for the parallel loops (>= PARALLEL_MIN_SIZE elements), cols not a multiple of 64
    x = np.random.default_rng(0).standard_normal((300, 257))
    q = quantize(x, kind, 64, double_quant)
    fused_full = q.dequantize(dtype)
    fused_rows = q.dequantize_rows(7, 290, dtype)
    fused_rect = q.dequantize_rect(3, 299, 65, 250, dtype)
    assert calls == ["fused"] * 3
    monkeypatch.setattr(dequant_fused, "supports", lambda out: False)  # as without numba
    _same_bits(fused_full, q.dequantize(dtype))
    _same_bits(fused_rows, q.dequantize_rows(7, 290, dtype))
    _same_bits(fused_rect, q.dequantize_rect(3, 299, 65, 250, dtype))
    assert calls == ["fused"] * 3 + ["reference"] * 3


def test_non_contiguous_out_takes_the_reference(calls: list[str]) -> None:
    q = quantize(np.random.default_rng(1).standard_normal((6, 8)), "nf4", 4)
    out = np.empty((6, 16), np.float32)[:, ::2]
    q.dequantize_rows(0, 6, out=out)
    assert calls == ["reference"]
    _same_bits(out, q.dequantize())


def test_kernel_rejects_what_it_cannot_write() -> None:
    q = quantize(np.ones((2, 4)), "nf4", 4)
    lut = TABLE["nf4"].copy()
    with pytest.raises(ValueError, match="C-contiguous 2-D"):
        dequant_fused.dequantize_rect(q.data, lut, 4, 4, 0, 0, np.empty((4, 2), np.float32).T,
                                      absmax=q.absmax, divisor=1.0)  # fmt: skip
    with pytest.raises(ValueError, match="lut must be 16 values"):
        out = np.empty((2, 4), np.float32)
        dequant_fused.dequantize_rect(q.data, lut.astype(np.float64), 4, 4, 0, 0, out, absmax=q.absmax,
                                      divisor=1.0)  # fmt: skip
