"""The fused GGML matrix-vector kernel against its NumPy reference, and GGMLLinear's use of it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entrenar import Tensor
from entrenar.autograd.tape import no_grad
from entrenar.kernels import ggml_matvec
from entrenar.quant import ggml
from entrenar.quant.ggml import GGML_TYPE_BYTES, GGMLLinear, GGMLTensor, dequantize_blocks

pytestmark = pytest.mark.skipif(not ggml_matvec.available(), reason="numba unavailable")


def random_blocks(kind: str, rows: int, nblk: int, rng: np.random.Generator) -> np.ndarray:
    """Random codes with finite float16 scales (and Q4_1 minimums) of realistic sizes: (rows, nblk * nb)."""
    nb = GGML_TYPE_BYTES[kind]
    b = rng.integers(0, 256, size=(rows, nblk, nb), dtype=np.uint8)
    d = (rng.standard_normal((rows, nblk)) * 0.01).astype(np.float16)
    b[:, :, 0:2] = d[..., None].view(np.uint8)
    if kind == "Q4_1":
        m = (-8 * np.abs(d.astype(np.float32)) * rng.uniform(0.5, 1.5, (rows, nblk))).astype(np.float16)
        b[:, :, 2:4] = m[..., None].view(np.uint8)
    return b.reshape(rows, nblk * nb)


def bound(kind: str, blocks: np.ndarray, x: np.ndarray) -> np.ndarray:
    """|x| @ |W|^T: the scale of each output's rounding error, (M, R)."""
    rows = blocks.shape[0]
    w = dequantize_blocks(kind, blocks.reshape(-1, GGML_TYPE_BYTES[kind])).reshape(rows, -1)
    return np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64).T


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(sorted(GGML_TYPE_BYTES)),
    rows=st.integers(1, 70),
    nblk=st.integers(1, 6),
    m=st.integers(1, ggml_matvec.MAX_ROWS),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**32 - 1),
    parallel=st.sampled_from([None, False, True]),
)
def test_equals_reference(
    kind: str, rows: int, nblk: int, m: int, dtype: type, seed: int, parallel: bool | None
) -> None:
    rng = np.random.default_rng(seed)
    blocks = random_blocks(kind, rows, nblk, rng)
    x = rng.standard_normal((m, nblk * 32)).astype(dtype)
    got = ggml_matvec.matvec(kind, blocks, x, parallel=parallel)
    want = ggml_matvec.reference(kind, blocks, x)
    assert got.dtype == want.dtype == np.dtype(dtype) and got.shape == want.shape == (m, rows)
    tol = 1e-5 if dtype is np.float32 else 1e-12
    assert np.all(np.abs(got - want) <= tol * bound(kind, blocks, x) + 1e-30)


def test_equals_reference_at_smollm2_sizes() -> None:
    rng = np.random.default_rng(0)
    for kind, (rows, cols) in [("Q4_1", (1536, 576)), ("Q8_0", (576, 1536)), ("Q4_0", (192, 576))]:
        blocks = random_blocks(kind, rows, cols // 32, rng)
        x = rng.standard_normal((3, cols)).astype(np.float32)
        got, want = ggml_matvec.matvec(kind, blocks, x), ggml_matvec.reference(kind, blocks, x)
        assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))
        assert np.all(np.abs(got - want) <= 1e-5 * bound(kind, blocks, x))


@pytest.mark.parametrize("kind", sorted(GGML_TYPE_BYTES))
def test_scales_decoded_in_the_kernel_cover_every_float16(kind: str) -> None:
    """The kernel decodes each block's float16 scale by table: every finite bit pattern, subnormals too."""
    rng = np.random.default_rng(1)
    bits = np.arange(1 << 16, dtype=np.uint16)
    finite = bits[np.isfinite(bits.view(np.float16))]  # (n,) every finite float16, as bits
    blocks = random_blocks(kind, finite.size // 4, 4, rng)  # 4 blocks per row: one float16 each
    nb = GGML_TYPE_BYTES[kind]
    b3 = blocks.reshape(blocks.shape[0], 4, nb)
    b3[:, :, 0:2] = finite[: b3.shape[0] * 4].reshape(-1, 4, 1).view(np.uint8)
    x = rng.standard_normal((2, 128)).astype(np.float32)
    got, want = ggml_matvec.matvec(kind, blocks, x), ggml_matvec.reference(kind, blocks, x)
    # the reference rounds each weight d * q + m to float32: the kernel's products differ at that level
    assert np.all(np.abs(got - want) <= 1e-5 * bound(kind, blocks, x))


def test_a_strided_view_of_blocks_equals_its_copy() -> None:
    rng = np.random.default_rng(2)
    wide = random_blocks("Q4_1", 12, 4, rng)  # (12, 80): rows of 4 blocks
    view = wide[::2]  # every other row, not contiguous
    x = rng.standard_normal((1, 128)).astype(np.float32)
    got, want = ggml_matvec.matvec("Q4_1", view, x), ggml_matvec.matvec("Q4_1", view.copy(), x)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("kind", "blocks", "x", "match"),
    [
        ("Q5_0", np.zeros((2, 20), np.uint8), np.zeros((1, 32), np.float32), "unsupported GGML kind 'Q5_0'"),
        ("Q4_1", np.zeros((2, 20), np.uint8), np.zeros((1, 32), np.int64), "x must be float32/float64"),
        (
            "Q4_1",
            np.zeros((2, 18), np.uint8),
            np.zeros((1, 32), np.float32),
            r"blocks must be uint8 \(out_features",
        ),
        ("Q4_1", np.zeros((2, 20), np.uint8), np.zeros((1, 64), np.float32), r"got uint8 \(2, 20\)"),
        (
            "Q4_1",
            np.zeros((2, 20), np.uint8),
            np.zeros((9, 32), np.float32),
            "x must have 1 to 8 rows, got 9",
        ),
    ],
)
def test_bad_input_is_refused(kind: str, blocks: np.ndarray, x: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ggml_matvec.matvec(kind, blocks, x)


def _layer(kind: str, rng: np.random.Generator, bias: bool) -> GGMLLinear:
    q = GGMLTensor(kind, random_blocks(kind, 40, 3, rng), (40, 96))
    return GGMLLinear(q, rng.standard_normal(40) if bias else None)


@pytest.mark.parametrize("kind", sorted(GGML_TYPE_BYTES))
def test_layer_takes_the_kernel_without_grad_and_agrees(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    layer = _layer(kind, rng, bias=True)
    x = rng.standard_normal((2, 3, 96)).astype(np.float32)  # 6 rows: decoding-sized
    with no_grad():
        fast = layer(x)
    calls: list[int] = []
    real = ggml_matvec.matvec
    monkeypatch.setattr(ggml_matvec, "matvec", lambda *a: calls.append(1) or real(*a))
    with no_grad():
        layer(x)
    assert calls == [1]
    monkeypatch.setattr(ggml, "MATVEC", False)
    with no_grad():
        tiled = layer(x)
    assert fast.shape == tiled.shape == (2, 3, 40) and not fast.requires_grad
    w = np.abs(layer.dequantize_weight(np.float64))
    scale = np.abs(x).astype(np.float64) @ w.T
    assert np.all(np.abs(fast.numpy() - tiled.numpy()) <= 1e-5 * scale + 1e-6)


def test_layer_keeps_the_tiled_path_when_grad_is_needed_or_rows_are_many(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(3)
    layer = _layer("Q4_1", rng, bias=False)
    calls: list[int] = []
    real = ggml_matvec.matvec
    monkeypatch.setattr(ggml_matvec, "matvec", lambda *a: calls.append(1) or real(*a))
    x = Tensor(rng.standard_normal((2, 96)), requires_grad=True)
    y = layer(x)
    y.sum().backward()
    assert calls == [] and x.grad is not None
    np.testing.assert_allclose(x.grad, layer.dequantize_weight(np.float64).sum(axis=0)[None].repeat(2, 0))
    with no_grad():
        layer(rng.standard_normal((9, 96)))
    assert calls == []
    layer(rng.standard_normal((2, 96)))  # grad mode, but the input needs none: the kernel is exact enough
    assert calls == [1]
