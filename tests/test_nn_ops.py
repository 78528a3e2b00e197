"""nn ops beyond the spec table: errors, dropout statistics, padding rows, masks, laws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import entrenar.functional as F
from entrenar import Tensor
from entrenar.kernels import dropout_fused


def _t(a: np.ndarray, grad: bool = True) -> Tensor:
    return Tensor(a.copy(), requires_grad=grad)


def _tt(a: np.ndarray, grad: bool = True) -> torch.Tensor:
    return torch.from_numpy(a.copy()).requires_grad_(grad)


# ----------------------------------------------------------------------------------- softmax
def test_softmax_is_stable_and_keeps_float32() -> None:
    x = np.array([[1000.0, 1001.0, -1000.0], [-1e4, 0.0, 1e4]], dtype=np.float32)
    s = F.softmax(Tensor(x), dim=1)
    ls = F.log_softmax(Tensor(x), dim=1)
    assert s.dtype == np.float32 and ls.dtype == np.float32
    assert np.all(np.isfinite(s.data)) and np.all(np.isfinite(ls.data))
    np.testing.assert_allclose(s.data, TF.softmax(torch.from_numpy(x), 1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(ls.data, TF.log_softmax(torch.from_numpy(x), 1).numpy(), rtol=1e-6)


def test_softmax_methods_and_law() -> None:
    x = np.random.default_rng(0).standard_normal((3, 5))
    t = Tensor(x)
    np.testing.assert_allclose(t.softmax(-1).data.sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.exp(t.log_softmax(0).data), F.softmax(t, 0).data, rtol=1e-12)


def test_softmax_rejects_bad_dim_and_int_input() -> None:
    with pytest.raises(IndexError, match="softmax: dim 2"):
        F.softmax(Tensor(np.zeros((2, 3))), dim=2)
    with pytest.raises(TypeError, match="log_softmax"):
        F.log_softmax(Tensor(np.zeros((2, 3), dtype=np.int64)), dim=1)


# ----------------------------------------------------------------------------------- norms
def test_layer_norm_validates_shapes() -> None:
    x = Tensor(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match=r"layer_norm: normalized_shape \(3,\)"):
        F.layer_norm(x, (3,))
    with pytest.raises(ValueError, match=r"layer_norm: weight has shape \(3,\)"):
        F.layer_norm(x, 4, Tensor(np.ones(3)))
    with pytest.raises(ValueError, match=r"rms_norm: normalized_shape \(2, 3\)"):
        F.rms_norm(x, (2, 3))


def test_layer_norm_int_shape_and_float32() -> None:
    x = np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)
    ours = F.layer_norm(Tensor(x), 6)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(
        ours.data, TF.layer_norm(torch.from_numpy(x), (6,)).numpy(), rtol=1e-5, atol=1e-6
    )


def test_rms_norm_default_eps_is_dtype_epsilon() -> None:
    # tiny inputs, so that eps (finfo(float32).eps ~ 1.2e-7) changes the result visibly
    x = (np.random.default_rng(2).standard_normal((3, 4)) * 1e-4).astype(np.float32)
    ours = F.rms_norm(Tensor(x), (4,))
    theirs = TF.rms_norm(torch.from_numpy(x), (4,))
    np.testing.assert_allclose(ours.data, theirs.numpy(), rtol=1e-5)
    no_eps = x / np.sqrt((x * x).mean(-1, keepdims=True))
    assert not np.allclose(ours.data, no_eps, rtol=1e-3)


# ----------------------------------------------------------------------------------- embedding
@pytest.mark.parametrize("padding_idx", [1, -2])
def test_embedding_padding_row_gets_no_gradient(padding_idx: int) -> None:
    rng = np.random.default_rng(3)
    idx = np.array([[0, 1, 2], [1, 1, 3]])
    w = rng.standard_normal((4, 3))
    g = rng.standard_normal((2, 3, 3))
    ours_w = _t(w)
    out = F.embedding(Tensor(idx), ours_w, padding_idx=padding_idx)
    out.backward(g)
    theirs_w = _tt(w)
    TF.embedding(torch.from_numpy(idx), theirs_w, padding_idx=padding_idx).backward(torch.from_numpy(g))
    np.testing.assert_allclose(out.data, w[idx])
    assert ours_w.grad is not None
    np.testing.assert_allclose(ours_w.grad, theirs_w.grad.numpy(), rtol=1e-12)
    assert np.all(ours_w.grad[padding_idx % 4] == 0)


def test_embedding_repeated_indices_accumulate() -> None:
    w = _t(np.zeros((3, 2)))
    F.embedding([2, 2, 2, 0], w).backward(np.ones((4, 2)))
    assert w.grad is not None
    np.testing.assert_array_equal(w.grad, [[1, 1], [0, 0], [3, 3]])


def test_embedding_errors() -> None:
    w = Tensor(np.zeros((4, 3)))
    with pytest.raises(IndexError, match="embedding: index 4"):
        F.embedding(Tensor(np.array([0, 4])), w)
    with pytest.raises(IndexError, match="embedding: index -1"):
        F.embedding(Tensor(np.array([-1])), w)
    with pytest.raises(ValueError, match="padding_idx 4"):
        F.embedding(Tensor(np.array([0])), w, padding_idx=4)
    with pytest.raises(TypeError, match="integer indices"):
        F.embedding(Tensor(np.array([0.0])), w)
    with pytest.raises(ValueError, match="2-D"):
        F.embedding(Tensor(np.array([0])), Tensor(np.zeros(4)))


# ----------------------------------------------------------------------------------- dropout
def test_dropout_statistics_and_gradient() -> None:
    p = 0.3
    x = _t(np.ones((400, 500), dtype=np.float32))
    out = F.dropout(x, p, generator=np.random.default_rng(0))
    assert out.dtype == np.float32
    kept = out.data != 0
    # 200,000 Bernoulli(0.7) draws: the kept fraction is within 5 standard deviations (~0.005) of 0.7
    assert abs(kept.mean() - (1 - p)) < 0.005
    np.testing.assert_allclose(out.data[kept], 1 / (1 - p), rtol=1e-6)
    assert abs(out.data.mean() - 1.0) < 0.01  # inverted dropout keeps the expectation
    out.backward(np.full(out.shape, 2.0, dtype=np.float32))
    assert x.grad is not None
    np.testing.assert_allclose(x.grad, 2 * out.data, rtol=1e-6)


def test_dropout_same_seed_same_mask() -> None:
    x = Tensor(np.ones(100))
    a = F.dropout(x, 0.5, generator=np.random.default_rng(7))
    b = F.dropout(x, 0.5, generator=np.random.default_rng(7))
    np.testing.assert_array_equal(a.data, b.data)


def test_dropout_needs_an_explicit_generator() -> None:
    with pytest.raises(ValueError, match="explicit generator"):
        F.dropout(Tensor(np.ones(3)), 0.5)
    with pytest.raises(TypeError, match=r"np\.random\.Generator"):
        F.dropout(Tensor(np.ones(3)), 0.5, generator=0)  # type: ignore[arg-type]


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_dropout_validates_p(p: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        F.dropout(Tensor(np.ones(3)), p, training=False)


def test_dropout_edge_cases_draw_nothing() -> None:
    x = _t(np.ones((2, 3)))
    assert F.dropout(x, 0.5, training=False) is x
    assert F.dropout(x, 0.0) is x
    zeros = F.dropout(x, 1.0)  # no generator needed: nothing is random
    np.testing.assert_array_equal(zeros.data, 0.0)
    zeros.backward(np.ones((2, 3)))
    assert x.grad is not None
    np.testing.assert_array_equal(x.grad, 0.0)


# ----------------------------------------------------------------------------------- attention
def _attention_pair(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, g: np.ndarray, **kw: object
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    ours = [_t(a) for a in (q, k, v)]
    out = F.scaled_dot_product_attention(*ours, **kw)  # type: ignore[arg-type]
    out.backward(g)
    theirs = [_tt(a) for a in (q, k, v)]
    tkw = {k_: torch.from_numpy(v_) if isinstance(v_, np.ndarray) else v_ for k_, v_ in kw.items()}
    tout = TF.scaled_dot_product_attention(*theirs, **tkw)  # type: ignore[arg-type]
    tout.backward(torch.from_numpy(g))
    a = [out.data] + [t.grad for t in ours]  # type: ignore[misc]
    b = [tout.detach().numpy()] + [t.grad.numpy() for t in theirs]  # type: ignore[union-attr]
    return a, b


def test_attention_fully_masked_row_is_zero_like_torch() -> None:
    rng = np.random.default_rng(4)
    q, k, v = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 5, 6))
    g = rng.standard_normal((2, 3, 6))
    mask = rng.random((3, 5)) < 0.6
    mask[1] = False
    ours, theirs = _attention_pair(q, k, v, g, attn_mask=mask)
    assert np.all(ours[0][:, 1] == 0)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    fmask = np.where(mask, 0.0, -np.inf)
    ours_f, _ = _attention_pair(q, k, v, g, attn_mask=fmask)
    for a, b in zip(ours_f, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


def test_attention_mask_with_batch_dims_only_value_has() -> None:
    # PyTorch adds the mask in place into (L, S) scores, so it needs query and key expanded first
    rng = np.random.default_rng(5)
    q, k, v = rng.standard_normal((3, 4)), rng.standard_normal((5, 4)), rng.standard_normal((2, 5, 6))
    mask = rng.standard_normal((2, 3, 5))
    g = rng.standard_normal((2, 3, 6))
    ours = [_t(a) for a in (q, k, v)]
    out = F.scaled_dot_product_attention(*ours, attn_mask=mask)
    out.backward(g)
    theirs = [_tt(a) for a in (q, k, v)]
    tq, tk = theirs[0].expand(2, 3, 4), theirs[1].expand(2, 5, 4)
    tout = TF.scaled_dot_product_attention(tq, tk, theirs[2], attn_mask=torch.from_numpy(mask))
    tout.backward(torch.from_numpy(g))
    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=1e-9)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a.grad, b.grad.numpy(), rtol=1e-9, atol=1e-12)  # type: ignore[arg-type,union-attr]


def test_attention_dropout_uses_the_generator_draws() -> None:
    rng = np.random.default_rng(6)
    q, k, v = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 5, 6))
    p = 0.25
    out = F.scaled_dot_product_attention(
        Tensor(q), Tensor(k), Tensor(v), dropout_p=p, generator=np.random.default_rng(9)
    )
    s = q @ np.swapaxes(k, -1, -2) / 2.0
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    key = dropout_fused.draw_key(np.random.default_rng(9))  # the one draw a mask takes
    keep = dropout_fused.keep_reference(key, w.size, p).reshape(w.shape)
    np.testing.assert_allclose(out.data, (w * keep / (1 - p)) @ v, rtol=1e-12)
    zeros = F.scaled_dot_product_attention(Tensor(q), Tensor(k), Tensor(v), dropout_p=1.0)
    np.testing.assert_array_equal(zeros.data, 0.0)


def test_attention_errors() -> None:
    q, k, v = Tensor(np.zeros((2, 3, 4))), Tensor(np.zeros((2, 5, 4))), Tensor(np.zeros((2, 5, 6)))
    with pytest.raises(ValueError, match="not both"):
        F.scaled_dot_product_attention(q, k, v, attn_mask=np.ones((3, 5), dtype=bool), is_causal=True)
    with pytest.raises(ValueError, match="explicit generator"):
        F.scaled_dot_product_attention(q, k, v, dropout_p=0.1)
    with pytest.raises(ValueError, match="dropout_p"):
        F.scaled_dot_product_attention(q, k, v, dropout_p=2.0)
    with pytest.raises(ValueError, match=r"key \(\.\.\., S, E\)"):
        F.scaled_dot_product_attention(q, Tensor(np.zeros((2, 5, 3))), v)
    with pytest.raises(ValueError, match=r"attn_mask of shape \(4, 5\)"):
        F.scaled_dot_product_attention(q, k, v, attn_mask=np.ones((4, 5), dtype=bool))
    with pytest.raises(TypeError, match="share a dtype"):
        F.scaled_dot_product_attention(q, k, Tensor(np.zeros((2, 5, 6), dtype=np.float32)))


def test_attention_float32_stays_float32() -> None:
    rng = np.random.default_rng(8)
    q, k, v = (rng.standard_normal((2, 4, 8)).astype(np.float32) for _ in range(3))
    out = F.scaled_dot_product_attention(_t(q), _t(k), _t(v), is_causal=True)
    assert out.dtype == np.float32
    out.backward(np.ones(out.shape, dtype=np.float32))
