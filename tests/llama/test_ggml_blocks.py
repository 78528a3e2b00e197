"""GGML Q4_0 / Q4_1 / Q8_0 blocks: NumPy dequantization against `gguf.quants`, GGMLLinear against dense."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entrenar.autograd.gradcheck import gradcheck
from entrenar.quant.ggml import (
    GGML_BLOCK,
    GGML_TYPE_BYTES,
    GGMLLinear,
    GGMLTensor,
    dequantize_blocks,
    quantize_blocks,
)
from entrenar.tensor import Tensor

KINDS = sorted(GGML_TYPE_BYTES)


def _packed(kind: str, w: np.ndarray) -> GGMLTensor:
    qtype = gguf.GGMLQuantizationType[kind]
    return GGMLTensor(kind, gguf.quants.quantize(w.astype(np.float32), qtype), w.shape)


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from(KINDS), seed=st.integers(0, 2**31), n=st.integers(1, 9))
def test_dequantize_blocks_equals_gguf_on_arbitrary_bytes(kind: str, seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(n, GGML_TYPE_BYTES[kind]), dtype=np.uint8)
    # finite float16 scales (and minimum): exponent bits below all-ones
    blocks[:, 1] &= 0x7B
    if kind == "Q4_1":
        blocks[:, 3] &= 0x7B
    want = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[kind]).reshape(n, 32)
    np.testing.assert_array_equal(dequantize_blocks(kind, blocks), want)


def test_q4_0_writer_rounds_halves_up_and_clamps_at_15() -> None:
    """llama.cpp's quantize_row_q4_0_ref: d = x[argmax |x|] / -8, q = MIN(15, (int8_t)(x / d + 8.5f)).
    So a value half-way between two steps rounds up (toward +inf, not away from zero as Q8_0's roundf),
    and x / d = 7.5 (-> 16) is clamped to 15. The block t = -8, -7.5, ..., 7.5 times d = 0.25 (exact in
    float16) has codes q_i = min(15, ceil(i / 2)); the negated block picks d = -0.25, the same codes."""
    t = np.arange(GGML_BLOCK, dtype=np.float32) / 2 - 8
    x = np.stack([t * np.float32(0.25), -t * np.float32(0.25)])
    blocks = quantize_blocks("Q4_0", x)
    np.testing.assert_array_equal(blocks[:, :2], np.array([[0.25], [-0.25]], np.float16).view(np.uint8))
    codes = np.minimum((np.arange(GGML_BLOCK) + 1) // 2, 15)
    nibbles = blocks[:, 2:]  # byte j: element j low, element j + 16 high
    np.testing.assert_array_equal(np.concatenate([nibbles & 0xF, nibbles >> 4], axis=1), [codes, codes])
    np.testing.assert_array_equal(blocks, gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q4_0))


@pytest.mark.parametrize("kind", KINDS)
def test_rect_rows_and_take_rows_agree_with_the_whole(kind: str) -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((7, 96)).astype(np.float32)
    q = _packed(kind, w)
    full = q.dequantize()
    np.testing.assert_array_equal(full, gguf.quants.dequantize(q.data, gguf.GGMLQuantizationType[kind]))
    np.testing.assert_array_equal(q.dequantize_rect(2, 6, 17, 70), full[2:6, 17:70])
    np.testing.assert_array_equal(q.dequantize_rows(1, 3, np.float64), full[1:3].astype(np.float64))
    order = rng.permutation(7)
    np.testing.assert_array_equal(q.take_rows(order).dequantize(), full[order])
    tol = {"Q8_0": 0.02, "Q4_0": 0.35, "Q4_1": 0.3}[kind]  # rounding error, standard normal weights
    assert np.abs(full - w).max() < tol
    nf4 = q.to_nf4(block_size=32)
    assert np.abs(nf4.dequantize() - full).mean() < 0.1


@pytest.mark.parametrize("kind", KINDS)
def test_ggml_linear_matches_dense_and_gradchecks(kind: str) -> None:
    rng = np.random.default_rng(1)
    q = _packed(kind, rng.standard_normal((10, 64)))
    layer = GGMLLinear(q, tile_rows=3)  # tiles of 3, 3, 3, 1 rows
    x = rng.standard_normal((2, 5, 64))
    w = q.dequantize(np.float64)
    np.testing.assert_allclose(layer(Tensor(x)).numpy(), x @ w.T, rtol=1e-12, atol=1e-12)
    assert gradcheck(lambda t: layer(t), [Tensor(x, requires_grad=True)])
    assert list(layer.state_dict()) == ["qweight_blocks"] and not list(layer.parameters())


def test_bad_inputs_name_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="unsupported kind 'Q5_0'"):
        GGMLTensor("Q5_0", np.zeros((1, 22), np.uint8), (1, 32))
    with pytest.raises(ValueError, match=r"must be uint8 \(2, 36\)"):
        GGMLTensor("Q4_0", np.zeros((2, 18), np.uint8), (2, 64))
    with pytest.raises(ValueError, match="multiple of the block size 32"):
        GGMLTensor("Q8_0", np.zeros((2, 34), np.uint8), (2, 40))
    layer = GGMLLinear(_packed("Q8_0", np.ones((2, 32))))
    with pytest.raises(ValueError, match=r"\(\*, 32\)"):
        layer(Tensor(np.ones((3, 31), np.float32)))


def test_bias_is_a_frozen_parameter_in_the_state_dict() -> None:
    rng = np.random.default_rng(2)
    q = _packed("Q8_0", rng.standard_normal((3, 32)))
    bias = rng.standard_normal(3)
    layer = GGMLLinear(q, bias)
    x = rng.standard_normal((4, 32))
    np.testing.assert_allclose(layer(Tensor(x)).numpy(), x @ q.dequantize(np.float64).T + bias, atol=1e-6)
    assert sorted(layer.state_dict()) == ["bias", "qweight_blocks"]
    assert not layer.bias.requires_grad
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        GGMLLinear(q, np.zeros(4))


@pytest.mark.parametrize("kind", KINDS)
def test_fused_kernel_equals_numpy_reference(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from entrenar.kernels import ggml_dequant
    from entrenar.quant import ggml

    assert ggml_dequant.available()
    rng = np.random.default_rng(4)
    q = _packed(kind, rng.standard_normal((9, 128)) * 3)
    rects = [(0, 9, 0, 128), (2, 7, 5, 101), (4, 5, 33, 34), (0, 9, 64, 128), (3, 3, 0, 10)]
    fused = [q.dequantize_rect(*r, dtype=dt) for r in rects for dt in (np.float32, np.float64)]
    monkeypatch.setattr(ggml, "FUSED", False)
    plain = [q.dequantize_rect(*r, dtype=dt) for r in rects for dt in (np.float32, np.float64)]
    for a, b in zip(fused, plain, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_fused_kernel_refuses_a_window_it_does_not_cover() -> None:
    from entrenar.kernels import ggml_dequant

    blocks = np.zeros((2, 1, 34), np.uint8)
    with pytest.raises(ValueError, match="do not cover out"):
        ggml_dequant.dequantize_window("Q8_0", blocks, 4, np.empty((2, 29), np.float32))
    with pytest.raises(ValueError, match="do not cover out"):
        ggml_dequant.dequantize_window("Q8_0", blocks, 0, np.empty((3, 8), np.float32))


@settings(max_examples=30, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    seed=st.integers(0, 2**31),
    rows=st.integers(1, 12),
    nblk=st.integers(1, 5),
    parallel=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_whole_row_kernel_equals_reference_bit_for_bit_on_arbitrary_bytes(
    kind: str, seed: int, rows: int, nblk: int, parallel: bool, dtype: type
) -> None:
    """Whole rows take the unrolled loop (scales decoded in it by table); any bytes, inf/NaN scales too."""
    from entrenar.kernels import ggml_dequant
    from entrenar.quant import ggml

    nb = GGML_TYPE_BYTES[kind]
    data = np.random.default_rng(seed).integers(0, 256, size=(rows, nblk * nb), dtype=np.uint8)
    q = GGMLTensor(kind, data, (rows, nblk * 32))
    want = dequantize_blocks(kind, data.reshape(-1, nb)).reshape(rows, -1).astype(dtype)
    saved = ggml_dequant.PARALLEL_MIN_SIZE
    ggml_dequant.PARALLEL_MIN_SIZE = 0 if parallel else 1 << 62
    try:
        got = q.dequantize(dtype)
    finally:
        ggml_dequant.PARALLEL_MIN_SIZE = saved
    assert ggml.FUSED and got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, want)


def test_ggml_embedding_looks_up_dequantized_rows_and_checks_ids() -> None:
    from entrenar.quant.ggml import GGMLEmbedding

    rng = np.random.default_rng(5)
    q = _packed("Q8_0", rng.standard_normal((11, 64)))
    emb = GGMLEmbedding(q, dtype=np.float64)
    ids = np.array([[3, 0, 10], [3, 7, 7]])
    out = emb(ids)
    assert out.shape == (2, 3, 64) and out.data.dtype == np.float64 and not out.requires_grad
    np.testing.assert_array_equal(out.data, q.dequantize(np.float64)[ids])
    assert list(emb.parameters()) == [] and list(emb.state_dict()) == []
    with pytest.raises(IndexError, match=r"ids must lie in \[0, 11\), got 0\.\.11"):
        emb(np.array([0, 11]))
    with pytest.raises(ValueError, match="ids must be integers"):
        emb(np.array([1.0]))
    with pytest.raises(TypeError, match="must be a GGMLTensor"):
        GGMLEmbedding(np.zeros((2, 32)))  # type: ignore[arg-type]
