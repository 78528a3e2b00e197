"""Cross-check against bitsandbytes' CPU path, when it is importable (it is not a dependency).

Run with e.g. `pip install --no-deps --target /tmp/bnb bitsandbytes==0.50.2` and
`PYTHONPATH=/tmp/bnb python -m pytest tests/quant/test_bnb_oracle.py`; without it these tests skip
(the golden literals in test_quantize.py were produced this way and always run).
"""

from __future__ import annotations

import numpy as np
import pytest

from entrenar.quant import DYNAMIC_MAP, NF4_CODE, quantize

torch = pytest.importorskip("torch")
bf = pytest.importorskip("bitsandbytes.functional")

torch.set_num_threads(1)


@pytest.mark.parametrize("n", [2, 63, 64, 65, 130, 131, 1000, 4097, 64 * 300 + 5])
def test_nf4_bytes_absmax_and_dequantization_equal_bitsandbytes(n: int) -> None:
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    packed, state = bf.quantize_4bit(torch.from_numpy(x), blocksize=64, quant_type="nf4")
    ours = quantize(x, "nf4", 64)
    np.testing.assert_array_equal(ours.data, packed.numpy().reshape(-1))
    np.testing.assert_array_equal(ours.absmax, state.absmax.numpy())
    np.testing.assert_array_equal(ours.dequantize(), bf.dequantize_4bit(packed, state).numpy().reshape(-1))


def test_tables_equal_bitsandbytes() -> None:
    np.testing.assert_array_equal(NF4_CODE, bf.get_4bit_type("nf4", device="cpu").numpy())
    theirs = bf.create_dynamic_map(signed=True).numpy()
    ulps = np.abs(DYNAMIC_MAP.view(np.int32).astype(np.int64) - theirs.view(np.int32).astype(np.int64))
    assert ulps.max() <= 1, "the dynamic map may differ from bitsandbytes' by one float32 ulp, no more"


@pytest.mark.parametrize("n", [130, 4097, 64 * 600])
def test_double_quantized_scales_agree_with_bitsandbytes(n: int) -> None:
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    packed, state = bf.quantize_4bit(torch.from_numpy(x), blocksize=64, quant_type="nf4",
                                     compress_statistics=True)  # fmt: skip
    ours = quantize(x, "nf4", 64, double_quant=True)
    np.testing.assert_array_equal(ours.data, packed.numpy().reshape(-1))
    qa = ours.quantized_absmax
    assert qa is not None
    np.testing.assert_allclose(qa.offset, [float(state.offset)], rtol=1e-6)
    # the codes may differ by one where bitsandbytes' mean or table is an ulp away from ours
    assert np.abs(qa.codes.astype(np.int64) - state.absmax.numpy().astype(np.int64)).max() <= 1
    deq = bf.dequantize_4bit(packed, state).numpy().reshape(-1)
    np.testing.assert_allclose(ours.dequantize(), deq, atol=0.01 * np.abs(x).max())
