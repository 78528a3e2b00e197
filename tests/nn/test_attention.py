"""MultiheadAttention against torch.nn.MultiheadAttention with the same weights, masks, dropout, errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from entrenar import Tensor
from entrenar.nn.attention import MultiheadAttention, attention_bias

torch.set_num_threads(1)

C, H = 12, 3


def _mha(dtype: Any = np.float64, seed: int = 0, **kw: Any) -> MultiheadAttention:
    return MultiheadAttention(C, H, dtype=dtype, generator=np.random.default_rng(seed), **kw)


def _torch_mha(m: MultiheadAttention) -> torch.nn.MultiheadAttention:
    """torch's module holding the same weights: in_proj is [q; k; v] stacked, out_proj is o_proj."""
    dt = torch.float64 if m.q_proj.weight.dtype == np.float64 else torch.float32
    t = torch.nn.MultiheadAttention(C, H, batch_first=True, dtype=dt)
    with torch.no_grad():
        t.in_proj_weight.copy_(
            torch.from_numpy(
                np.concatenate([m.q_proj.weight.data, m.k_proj.weight.data, m.v_proj.weight.data])
            )
        )
        t.in_proj_bias.copy_(
            torch.from_numpy(np.concatenate([m.q_proj.bias.data, m.k_proj.bias.data, m.v_proj.bias.data]))
        )
        t.out_proj.weight.copy_(torch.from_numpy(m.o_proj.weight.data))
        t.out_proj.bias.copy_(torch.from_numpy(m.o_proj.bias.data))
    return t


def _mask(B: int, S: int, lengths: list[int]) -> np.ndarray:
    """(B, S) bool, True for the first lengths[b] tokens (right padding)."""
    return np.arange(S)[None, :] < np.asarray(lengths)[:, None]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_matches_torch_multihead_attention_value_and_gradients(causal: bool, padded: bool) -> None:
    rng = np.random.default_rng(1)
    B, T = 3, 5
    m = _mha()
    t = _torch_mha(m)
    x = rng.standard_normal((B, T, C))
    mask = _mask(B, T, [5, 3, 1]) if padded else None
    xe = Tensor(x.copy(), requires_grad=True)
    out = m(xe, attention_mask=mask, is_causal=causal)
    xt = torch.tensor(x, requires_grad=True)
    kw: dict[str, Any] = {"need_weights": False}
    if padded:
        kw["key_padding_mask"] = torch.from_numpy(~mask)  # torch: True = ignore
    if causal:
        kw["attn_mask"] = torch.from_numpy(~np.tri(T, dtype=bool))  # torch: True = not allowed
    ref, _ = t(xt, xt, xt, **kw)
    np.testing.assert_allclose(out.data, ref.detach().numpy(), rtol=1e-10, atol=1e-12)

    w = rng.standard_normal((B, T, C))
    (out * Tensor(w)).sum().backward()
    (ref * torch.from_numpy(w)).sum().backward()
    np.testing.assert_allclose(xe.grad, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    assert t.in_proj_weight.grad is not None and t.out_proj.weight.grad is not None
    gin_w = np.concatenate([m.q_proj.weight.grad, m.k_proj.weight.grad, m.v_proj.weight.grad])
    gin_b = np.concatenate([m.q_proj.bias.grad, m.k_proj.bias.grad, m.v_proj.bias.grad])
    np.testing.assert_allclose(gin_w, t.in_proj_weight.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gin_b, t.in_proj_bias.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(m.o_proj.weight.grad, t.out_proj.weight.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_cross_attention_float32_matches_torch() -> None:
    rng = np.random.default_rng(2)
    B, T, S = 2, 4, 6
    m = _mha(np.float32)
    t = _torch_mha(m)
    x = rng.standard_normal((B, T, C)).astype(np.float32)
    ctx = rng.standard_normal((B, S, C)).astype(np.float32)
    mask = _mask(B, S, [6, 2]).astype(np.int64)  # 0/1 integers, as a tokenizer gives them
    out = m(x, context=ctx, attention_mask=mask)
    assert out.dtype == np.float32 and out.shape == (B, T, C)
    ref, _ = t(
        torch.from_numpy(x),
        torch.from_numpy(ctx),
        torch.from_numpy(ctx),
        key_padding_mask=torch.from_numpy(mask == 0),
        need_weights=False,
    )
    np.testing.assert_allclose(out.data, ref.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_padding_tokens_do_not_reach_real_tokens() -> None:
    rng = np.random.default_rng(3)
    B, T = 2, 6
    m = _mha()
    mask = _mask(B, T, [4, 2])
    x = rng.standard_normal((B, T, C))
    y = x.copy()
    y[~mask] = rng.standard_normal((int((~mask).sum()), C)) * 100  # only the padding changes
    a, b = m(x, attention_mask=mask).data, m(y, attention_mask=mask).data
    np.testing.assert_allclose(a[mask], b[mask], rtol=1e-12, atol=1e-12)
    assert not np.allclose(a[~mask], b[~mask])  # the padded queries themselves did change


def test_causal_output_ignores_the_future() -> None:
    rng = np.random.default_rng(4)
    m = _mha()
    x = rng.standard_normal((2, 7, C))
    y = x.copy()
    y[:, 4:] += rng.standard_normal((2, 3, C))
    a, b = m(x, is_causal=True).data, m(y, is_causal=True).data
    np.testing.assert_allclose(a[:, :4], b[:, :4], rtol=1e-12, atol=1e-12)
    assert not np.allclose(a[:, 4:], b[:, 4:])
    assert not np.allclose(m(x).data[:, :4], a[:, :4])  # without is_causal the future does matter


def test_causal_and_padding_combine() -> None:
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])
    bias = attention_bias(mask, 2, 4, 4, is_causal=True)
    assert bias is not None and bias.shape == (2, 1, 4, 4) and bias.dtype == np.bool_
    want = np.tri(4, dtype=bool)[None] & (mask[:, None, :] == 1)
    np.testing.assert_array_equal(bias[:, 0], want)
    assert attention_bias(None, 2, 4, 4, is_causal=False) is None


def test_attention_dropout_uses_the_owned_generator() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 5, C))
    plain = _mha(seed=7)
    a, b = _mha(seed=7, dropout=0.5), _mha(seed=7, dropout=0.5)
    first = a(x).data
    np.testing.assert_array_equal(first, b(x).data)  # same seed, same masks
    assert not np.allclose(first, plain(x).data)  # dropout changed the weights
    assert not np.allclose(first, a(x).data)  # the next call draws a new mask
    a.eval()
    np.testing.assert_allclose(a(x).data, plain(x).data, rtol=1e-12)  # identity in eval mode


def test_parameter_names() -> None:
    names = [n for n, _ in _mha().named_parameters()]
    assert names == [f"{p}_proj.{w}" for p in "qkvo" for w in ("weight", "bias")]
    no_bias = MultiheadAttention(C, H, bias=False, generator=np.random.default_rng(0))
    assert [n for n, _ in no_bias.named_parameters()] == [f"{p}_proj.weight" for p in "qkvo"]


@pytest.mark.parametrize(
    ("kwargs", "call", "error", "match"),
    [
        ({"embed_dim": 10, "num_heads": 3}, None, ValueError, "divisible by num_heads"),
        ({"embed_dim": 12, "num_heads": 0}, None, ValueError, "num_heads must be a positive int"),
        (
            {"embed_dim": 12, "num_heads": 3, "dropout": 1.5},
            None,
            ValueError,
            "dropout must be a probability",
        ),
        ({"embed_dim": 12, "num_heads": 3, "generator": 0}, None, TypeError, "np.random.Generator"),
        ({}, {"x": np.zeros((2, 5, 8))}, ValueError, r"x must be \(batch, length, 12\)"),
        ({}, {"x": np.zeros((5, 12))}, ValueError, r"x must be \(batch, length, 12\)"),
        (
            {},
            {"attention_mask": np.ones((2, 4), bool)},
            ValueError,
            r"attention_mask must have shape .*\(2, 5\)",
        ),
        ({}, {"attention_mask": np.full((2, 5), 2)}, ValueError, "bools or 0/1"),
        ({}, {"context": np.zeros((3, 5, 12))}, ValueError, "x has batch 2 but context 3"),
    ],
)
def test_bad_input_names_the_problem(
    kwargs: dict[str, Any], call: dict[str, Any] | None, error: type[Exception], match: str
) -> None:
    kw = {"embed_dim": 12, "num_heads": 3, "generator": np.random.default_rng(0), **kwargs}
    with pytest.raises(error, match=match):
        m = MultiheadAttention(**kw)
        args = {"x": np.zeros((2, 5, 12), np.float32), **(call or {})}
        m(**args)
