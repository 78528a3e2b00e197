"""Tests written for mutants of entrenar.quant that survived scripts/mutate.py (the GGML blocks were
only tested under tests/llama, which the quant mutants never face).

- ggml.py dequantize_blocks: Q4_0 `d * (codes - 8)` (and its Q8_0 / Q4_1 neighbours) against the
  `gguf` package's own dequantization of the same bytes.
- ggml.py GGMLTensor.dequantize_rows: `dequantize_rect(start, stop, 0, cols)` against slices.
- tensor.py QuantizedTensor.dequantize_rect: the bounds check `all(int, not bool) ... or not
  0 <= lo <= hi <= size` at its edges (empty ranges, floats, bools, NumPy ints).
- linear.py _rounding_error: rel_error = sqrt(sum err^2 / sum w^2), 0 for an all-zero weight.
"""

from __future__ import annotations

from typing import Any

import gguf
import numpy as np
import pytest

from entrenar.quant import QuantLinear, quantize
from entrenar.quant.ggml import GGML_BLOCK, dequantize_blocks, quantize_ggml


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1", "Q8_0"])
def test_ggml_blocks_dequantize_as_gguf_does(kind: str) -> None:
    w = np.random.default_rng(6).standard_normal((4, 2 * GGML_BLOCK)).astype(np.float32) * 3.0
    q = quantize_ggml(kind, w)
    blocks = q.data.reshape(-1, q.data.size // (w.size // GGML_BLOCK))
    expected = gguf.quants.dequantize(q.data.reshape(4, -1), gguf.GGMLQuantizationType[kind])
    np.testing.assert_array_equal(dequantize_blocks(kind, blocks).reshape(w.shape), expected)
    np.testing.assert_array_equal(q.dequantize(np.float32), expected)


@pytest.mark.parametrize("kind", ["Q4_0", "Q8_0"])
def test_ggml_dequantize_rows_is_a_slice_of_the_whole(kind: str) -> None:
    q = quantize_ggml(kind, np.random.default_rng(7).standard_normal((5, GGML_BLOCK)).astype(np.float32))
    whole = q.dequantize(np.float32)
    for start, stop in ((0, 5), (0, 1), (1, 4), (4, 5), (2, 2)):
        np.testing.assert_array_equal(q.dequantize_rows(start, stop), whole[start:stop])


def _q() -> Any:
    return quantize(np.random.default_rng(8).standard_normal((4, 64)).astype(np.float32), "nf4", 64)


@pytest.mark.parametrize(
    "bounds", [(0, 0, 0, 64), (2, 2, 0, 64), (0, 4, 64, 64), (np.int64(1), np.int32(3), 0, 8)]
)
def test_dequantize_rect_accepts_empty_ranges_and_numpy_ints(bounds: tuple[Any, ...]) -> None:
    q = _q()
    r0, r1, c0, c1 = bounds
    out = q.dequantize_rect(r0, r1, c0, c1)
    np.testing.assert_array_equal(out, q.dequantize(np.float32)[int(r0) : int(r1), int(c0) : int(c1)])


@pytest.mark.parametrize("bounds", [(0.0, 2, 0, 64), (0, 2.0, 0, 64), (False, 2, 0, 64), (0, True, 0, 64),
                                    (0, 2, 0, 65), (3, 2, 0, 64), (-1, 2, 0, 64), (0, 5, 0, 64)])  # fmt: skip
def test_dequantize_rect_refuses_bounds_that_are_not_ints_in_order(bounds: tuple[Any, ...]) -> None:
    with pytest.raises(ValueError, match=r"must satisfy 0 <= start <= stop <="):
        _q().dequantize_rect(*bounds)


def test_the_rounding_report_of_an_all_zero_weight_is_zero() -> None:
    layer = QuantLinear(quantize(np.ones((2, 64), np.float32), "nf4", 64))
    report = layer.set_weight(np.zeros((2, 64), np.float32))
    assert report == {"max_abs_error": 0.0, "mean_abs_error": 0.0, "rel_error": 0.0}


def test_the_relative_rounding_error_of_a_small_weight() -> None:
    # sum w^2 < 1, so a check `sum_sq > 1` instead of `> 0` would report 0
    w = np.random.default_rng(9).uniform(-0.05, 0.05, (2, 64)).astype(np.float32)
    layer = QuantLinear(quantize(np.ones((2, 64), np.float32), "nf4", 64))
    report = layer.set_weight(w)
    w64 = w.astype(np.float64)
    err = layer.qweight.dequantize(np.float64) - w64
    assert np.square(w64).sum() < 1.0
    assert report["rel_error"] == pytest.approx(
        np.sqrt(np.square(err).sum() / np.square(w64).sum()), rel=1e-9
    )
    assert 0.0 < report["rel_error"] < 0.5
