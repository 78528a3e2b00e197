"""The fused attention kernels equal the op's NumPy reference path, in value and gradient.

Each comparison runs `F.scaled_dot_product_attention` twice on the same inputs: once with
`attention_fused.MIN_WORK` lowered to 0 (the kernels, whatever the size) and once with it out of
reach (the reference). A spy on the kernel entry points checks that each run took the path it claims.

Tolerances: the kernels sum in another order than BLAS (and use fused multiply-adds), and the float32
exp is nn_fused's float64 one rounded to float32 where the reference calls NumPy's float32 exp. Every
output is a sum of products of terms bounded by the inputs, so the error bound is relative to the
largest reference value of each output: 2e-5 (float32) and 1e-11 (float64) of max |ref|.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import entrenar.functional as F
from entrenar import Tensor
from entrenar.autograd.gradcheck import gradcheck
from entrenar.kernels import attention_fused, nn_fused
from entrenar.nn.attention import merge_heads, multi_head_attention

DTYPES = [np.float32, np.float64]
RTOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-11}


def test_available() -> None:
    assert attention_fused.available(), attention_fused.unavailable_reason()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Names of the kernel entry points the op calls during the test."""
    log: list[str] = []
    for name in ("attention_forward", "attention_backward"):
        fn = getattr(attention_fused, name)

        def spy(*args: Any, _name: str = name, _fn: Any = fn, **kwargs: Any) -> Any:
            log.append(_name)
            return _fn(*args, **kwargs)

        monkeypatch.setattr(attention_fused, name, spy)
    yield log


def _heads(rng: np.random.Generator, dtype: type, b: int, t: int, h: int, d: int) -> np.ndarray:
    """(B, H, T, D) as the model makes it: a view of a (B, T, H * D) projection, not contiguous."""
    x = (rng.standard_normal((b, t, h * d)) * 1.5).astype(dtype)
    return x.reshape(b, t, h, d).transpose(0, 2, 1, 3)


def _run(
    arrays: list[np.ndarray], g: np.ndarray, min_work: int, monkeypatch: pytest.MonkeyPatch, **kw: Any
) -> tuple[np.ndarray, list[np.ndarray]]:
    monkeypatch.setattr(attention_fused, "MIN_WORK", min_work)
    ts = [Tensor(a, requires_grad=True) for a in arrays]
    out = F.scaled_dot_product_attention(*ts, **kw)
    out.backward(g)
    grads = [t.grad for t in ts]
    assert all(gr is not None for gr in grads)
    return out.data, [gr for gr in grads if gr is not None]


def _assert_close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, what
    atol = RTOL[want.dtype] * float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=what)


CASES = [  # (B, H, L, S, E, Ev, is_causal)
    (2, 3, 17, 17, 8, 8, True),
    (2, 2, 9, 23, 5, 7, True),  # more keys than queries: query i sees keys 0..i
    (1, 2, 23, 9, 6, 4, True),  # more queries than keys: the rows past S see every key
    (3, 1, 11, 13, 4, 6, False),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("B", "H", "L", "S", "E", "Ev", "causal"), CASES)
def test_equals_reference(
    dtype: type,
    B: int,
    H: int,
    L: int,
    S: int,
    E: int,
    Ev: int,
    causal: bool,
    monkeypatch: pytest.MonkeyPatch,
    calls: list[str],
) -> None:
    rng = np.random.default_rng(0)
    q, k = _heads(rng, dtype, B, L, H, E), _heads(rng, dtype, B, S, H, E)
    v = _heads(rng, dtype, B, S, H, Ev)
    g = rng.standard_normal((B, H, L, Ev)).astype(dtype)
    out, grads = _run([q, k, v], g, 0, monkeypatch, is_causal=causal)
    assert calls == ["attention_forward", "attention_backward"]
    ref, rgrads = _run([q, k, v], g, 1 << 62, monkeypatch, is_causal=causal)
    assert len(calls) == 2, "the reference run called a kernel"
    _assert_close(out, ref, "out")
    for name, a, r in zip(("dq", "dk", "dv"), grads, rgrads, strict=True):
        _assert_close(a, r, name)


def test_matches_torch_at_model_size(calls: list[str]) -> None:
    """The shipped threshold takes the kernels at the GPT benchmark's size; torch agrees."""
    rng = np.random.default_rng(1)
    q, k, v = (_heads(rng, np.float32, 2, 128, 4, 64) for _ in range(3))
    g = rng.standard_normal(q.shape).astype(np.float32)
    ts = [Tensor(a, requires_grad=True) for a in (q, k, v)]
    out = F.scaled_dot_product_attention(*ts, is_causal=True)
    out.backward(g)
    assert calls == ["attention_forward", "attention_backward"]
    tts = [torch.from_numpy(np.ascontiguousarray(a)).requires_grad_() for a in (q, k, v)]
    tout = torch.nn.functional.scaled_dot_product_attention(*tts, is_causal=True)
    tout.backward(torch.from_numpy(g))
    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-4, atol=2e-5)
    for t, tt in zip(ts, tts, strict=True):
        assert t.grad is not None and tt.grad is not None
        np.testing.assert_allclose(t.grad, tt.grad.numpy(), rtol=1e-4, atol=2e-5 * float(tt.grad.abs().max()))


def test_gradcheck_through_kernels(monkeypatch: pytest.MonkeyPatch, calls: list[str]) -> None:
    monkeypatch.setattr(attention_fused, "MIN_WORK", 0)
    rng = np.random.default_rng(2)
    arrays = [_heads(rng, np.float64, 1, t, 2, d) for t, d in ((3, 2), (4, 2), (4, 3))]
    ts = [Tensor(np.ascontiguousarray(a), requires_grad=True) for a in arrays]
    assert gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), ts)
    assert gradcheck(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, scale=0.7), ts)
    assert "attention_backward" in calls


def test_outputs_are_head_views_of_token_major_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """out, dq, dk, dv are (B, H, T, D) views of (B, T, H, D) arrays: merging heads copies nothing."""
    monkeypatch.setattr(attention_fused, "MIN_WORK", 0)
    rng = np.random.default_rng(3)
    q, k, v = (_heads(rng, np.float32, 2, 6, 3, 4) for _ in range(3))
    out, p = attention_fused.attention_forward(q, k, v, 0.5, True)
    assert out.shape == (2, 3, 6, 4) and out.base is not None and out.base.flags.c_contiguous
    assert out.base.shape == (2, 6, 3, 4)
    merged = merge_heads(Tensor(out)).data  # (B, T, C)
    assert np.shares_memory(merged, out)
    assert np.all(np.triu(p, 1) == 0)
    grads = attention_fused.attention_backward(np.ones_like(out), q, k, v, p, 0.5, True)
    for gr, a in zip(grads, (q, k, v), strict=True):
        assert gr.shape == a.shape and gr.base is not None and gr.base.shape == (2, 6, 3, 4)


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 9), st.integers(1, 9), st.integers(1, 6), st.integers(1, 6), st.booleans(),
    st.integers(0, 2**32 - 1),
)  # fmt: skip
def test_gradients_equal_reference_for_all_small_shapes(
    L: int, S: int, E: int, Ev: int, causal: bool, seed: int
) -> None:
    """Every remainder of the loops' four-at-a-time blocks (rows, keys) against the reference, float64."""
    rng = np.random.default_rng(seed)
    q, k = _heads(rng, np.float64, 1, L, 2, E), _heads(rng, np.float64, 1, S, 2, E)
    v = _heads(rng, np.float64, 1, S, 2, Ev)
    g = rng.standard_normal((1, 2, L, Ev))
    with pytest.MonkeyPatch.context() as mp:
        out, grads = _run([q, k, v], g, 0, mp, is_causal=causal)
        ref, rgrads = _run([q, k, v], g, 1 << 62, mp, is_causal=causal)
    _assert_close(out, ref, "out")
    for name, a, r in zip(("dq", "dk", "dv"), grads, rgrads, strict=True):
        _assert_close(a, r, name)


@settings(max_examples=12, deadline=None)
@given(
    st.integers(1, 2), st.integers(1, 3), st.integers(1, 12), st.integers(1, 12), st.integers(1, 9),
    st.booleans(), st.integers(0, 2**32 - 1),
)  # fmt: skip
def test_weights_are_a_causal_distribution(
    b: int, h: int, L: int, S: int, d: int, causal: bool, seed: int
) -> None:
    """For all shapes: each row of p sums to 1, is zero past the mask, and out = p @ v."""
    rng = np.random.default_rng(seed)
    q = _heads(rng, np.float64, b, L, h, d)
    k, v = _heads(rng, np.float64, b, S, h, d), _heads(rng, np.float64, b, S, h, d)
    out, p = attention_fused.attention_forward(q, k, v, 1.0 / np.sqrt(d), causal)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-12)
    if causal:
        assert np.all(p * (1 - np.tri(L, S)) == 0)
    np.testing.assert_allclose(out, p @ v, rtol=1e-12, atol=1e-12)


def test_supports_only_what_the_kernels_take() -> None:
    rng = np.random.default_rng(4)
    q = _heads(rng, np.float32, 2, 128, 2, 8)
    assert attention_fused.supports(q, q, q, True, True, 0.0)
    assert attention_fused.supports(q, q, q, False, False, 0.0)
    assert not attention_fused.supports(q, q, q, True, False, 0.0)  # an arbitrary mask
    assert not attention_fused.supports(q, q, q, False, False, 0.1)  # dropout
    assert not attention_fused.supports(q[0], q[0], q[0], False, False, 0.0)  # 3-D
    assert not attention_fused.supports(q, q, q.astype(np.float64), False, False, 0.0)
    assert not attention_fused.supports(q, q[:1], q[:1], False, False, 0.0)  # broadcast batch
    assert not attention_fused.supports(q.astype(np.float16), q, q, False, False, 0.0)
    small = q[:, :, :4]
    assert not attention_fused.supports(small, small, small, False, False, 0.0)  # below MIN_WORK
    with pytest.raises(ValueError, match="4-D"):
        attention_fused.attention_forward(q[0], q[0], q[0], 1.0, False)


def test_padding_mask_and_dropout_take_the_reference(calls: list[str]) -> None:
    """A padding mask or attention dropout goes the NumPy way, in the model's attention too."""
    rng = np.random.default_rng(5)
    x = Tensor(rng.standard_normal((2, 128, 16)).astype(np.float32), requires_grad=True)
    mask = np.ones((2, 128), dtype=bool)
    mask[1, 100:] = False
    multi_head_attention(x, x, x, 2, attention_mask=mask, is_causal=True).sum().backward()
    multi_head_attention(x, x, x, 2, dropout_p=0.2, generator=np.random.default_rng(0)).sum()
    assert calls == []
    multi_head_attention(x, x, x, 2, is_causal=True).sum().backward()
    assert calls == ["attention_forward", "attention_backward"]


# ---- embedding's backward: the scatter-add kernel ------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 60), st.integers(1, 9), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_scatter_add_rows_is_add_at_bit_for_bit(rows: int, d: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, rows, n)
    g = rng.standard_normal((n, d)).astype(np.float32)
    want = np.zeros((rows, d), dtype=np.float32)
    np.add.at(want, idx, g)
    np.testing.assert_array_equal(nn_fused.scatter_add_rows(idx, g, rows), want)


def test_embedding_grad_through_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(6)
    idx = rng.integers(0, 50, (4, 30))
    w = rng.standard_normal((50, 16)).astype(np.float32)
    g = rng.standard_normal((4, 30, 16)).astype(np.float32)
    grads = []
    for min_size in (0, 1 << 62):
        monkeypatch.setattr(nn_fused, "MIN_SIZE", min_size)
        assert nn_fused.supports_scatter_rows(g.reshape(-1, 16), 50) == (min_size == 0)
        t = Tensor(w, requires_grad=True)
        F.embedding(idx, t, padding_idx=3).backward(g)
        grads.append(t.grad)
    np.testing.assert_array_equal(grads[0], grads[1])
    assert grads[0] is not None and np.all(grads[0][3] == 0)


def test_scatter_add_rows_rejects_bad_indices() -> None:
    g = np.ones((3, 2), dtype=np.float32)
    with pytest.raises(IndexError, match="out of range for a table of 4 rows"):
        nn_fused.scatter_add_rows(np.array([0, 4, 1]), g, 4)
    with pytest.raises(ValueError, match=r"idx must be \(3,\) integers"):
        nn_fused.scatter_add_rows(np.array([0.0, 1.0, 2.0]), g, 4)
