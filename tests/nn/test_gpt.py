"""GPT: shapes, tied embeddings, gradients against a PyTorch re-implementation, and learning a task."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from threadpoolctl import threadpool_limits

from entrenar.nn.gpt import GPT, GPTConfig
from entrenar.optim import AdamW

torch.set_num_threads(1)

SMALL = GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=8, d_ff=12)


def _gpt(config: GPTConfig = SMALL, dtype: Any = np.float64, seed: int = 0) -> GPT:
    return GPT(config, dtype=dtype, generator=np.random.default_rng(seed))


def torch_gpt(P: dict[str, torch.Tensor], idx: np.ndarray, c: GPTConfig) -> torch.Tensor:
    """The same decoder written directly in torch on a dict of parameters named as ours; -> logits."""
    B, T = idx.shape
    C, H = c.n_embd, c.n_head
    eps = c.layer_norm_eps

    def lin(h: torch.Tensor, name: str) -> torch.Tensor:
        return TF.linear(h, P[f"{name}.weight"], P.get(f"{name}.bias"))

    def ln(h: torch.Tensor, name: str) -> torch.Tensor:
        return TF.layer_norm(h, (C,), P[f"{name}.weight"], P.get(f"{name}.bias"), eps)

    def heads(h: torch.Tensor) -> torch.Tensor:
        return h.view(B, T, H, C // H).transpose(1, 2)

    ids = torch.from_numpy(idx)
    x = P["wte.weight"][ids] + P["wpe.weight"][:T]
    for i in range(c.n_layer):
        b = f"blocks.{i}"
        h = ln(x, f"{b}.ln_1")
        q, k, v = (heads(lin(h, f"{b}.attn.{n}_proj")) for n in "qkv")
        a = TF.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + lin(a.transpose(1, 2).reshape(B, T, C), f"{b}.attn.o_proj")
        x = x + lin(TF.gelu(lin(ln(x, f"{b}.ln_2"), f"{b}.mlp.fc1")), f"{b}.mlp.fc2")
    head = P["wte.weight"] if c.tie_embeddings else P["lm_head.weight"]
    return ln(x, "ln_f") @ head.T


def test_shapes_and_loss() -> None:
    m = _gpt(dtype=np.float32)
    idx = np.random.default_rng(1).integers(0, 13, (3, 5))
    logits = m(idx)
    assert logits.shape == (3, 5, 13) and logits.dtype == np.float32
    logits2, loss = m(idx, targets=idx)
    np.testing.assert_array_equal(logits.data, logits2.data)
    assert loss.shape == () and loss.dtype == np.float32
    # untrained, GPT-2 init: the predictions are near uniform, so the loss is near log(V)
    assert abs(loss.item() - np.log(13)) < 0.1


@pytest.mark.parametrize("tied", [True, False])
def test_loss_and_gradients_match_torch(tied: bool) -> None:
    c = replace(SMALL, tie_embeddings=tied)
    m = _gpt(c)
    rng = np.random.default_rng(2)
    for p in m.parameters():  # move every weight off its init (zero biases, unit norms)
        p.data += rng.normal(0, 0.3, p.shape)
    P = {n: torch.tensor(p.data, requires_grad=True) for n, p in m.named_parameters()}
    idx = rng.integers(0, 13, (3, 7))
    targets = rng.integers(0, 13, (3, 7))
    targets[0, :2] = -100  # ignored positions
    logits, loss = m(idx, targets)
    ref = torch_gpt(P, idx, c)
    ref_loss = TF.cross_entropy(ref.reshape(-1, 13), torch.from_numpy(targets).reshape(-1))
    np.testing.assert_allclose(logits.data, ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(loss.item(), ref_loss.item(), rtol=1e-12)
    loss.backward()
    ref_loss.backward()
    assert ("lm_head.weight" in P) is not tied
    for name, p in m.named_parameters():
        g = P[name].grad
        assert p.grad is not None and g is not None, name
        np.testing.assert_allclose(p.grad, g.numpy(), rtol=1e-8, atol=1e-12, err_msg=name)


def test_tied_embedding_is_one_parameter() -> None:
    m = _gpt()
    assert m.lm_head.weight is m.wte.weight
    params = list(m.parameters())
    assert sum(p is m.wte.weight for p in params) == 1
    assert len({id(p) for p in params}) == len(params)
    sd = m.state_dict()
    assert "wte.weight" in sd and "lm_head.weight" not in sd
    untied = _gpt(replace(SMALL, tie_embeddings=False))
    assert untied.num_parameters() == m.num_parameters() + 13 * 8
    assert "lm_head.weight" in untied.state_dict()

    # a round trip through the state dict restores the same function, tie intact
    idx = np.random.default_rng(3).integers(0, 13, (2, 6))
    fresh = _gpt(seed=1)
    assert not np.allclose(fresh(idx).data, m(idx).data)
    fresh.load_state_dict(sd)
    np.testing.assert_array_equal(fresh(idx).data, m(idx).data)
    assert fresh.lm_head.weight is fresh.wte.weight


def test_gpt2_initialisation() -> None:
    m = GPT(
        GPTConfig(vocab_size=500, block_size=64, n_layer=4, n_embd=64), generator=np.random.default_rng(0)
    )
    sd = m.state_dict()
    assert np.std(sd["wte.weight"]) == pytest.approx(0.02, rel=0.05)
    assert np.std(sd["blocks.0.mlp.fc1.weight"]) == pytest.approx(0.02, rel=0.05)
    assert np.std(sd["blocks.0.attn.o_proj.weight"]) == pytest.approx(0.02 / np.sqrt(8), rel=0.05)
    assert np.std(sd["blocks.3.mlp.fc2.weight"]) == pytest.approx(0.02 / np.sqrt(8), rel=0.05)
    assert not sd["blocks.1.attn.q_proj.bias"].any()
    assert (sd["ln_f.weight"] == 1).all() and (sd["blocks.2.ln_1.weight"] == 1).all()


def _reverse_batch(rng: np.random.Generator, batch: int, n: int, sep: int) -> tuple[np.ndarray, np.ndarray]:
    """Digits d_1..d_n, a separator, then the digits reversed; only the reversed half is scored."""
    d = rng.integers(0, sep, (batch, n))
    seq = np.concatenate([d, np.full((batch, 1), sep), d[:, ::-1]], axis=1)  # (B, 2n + 1)
    x, y = seq[:, :-1], seq[:, 1:].copy()  # predict the next token: (B, 2n) each
    y[:, : n - 1] = -100  # the first digits are random: nothing to learn there
    return x, y


def test_learns_to_reverse_a_sequence() -> None:
    n, sep = 6, 10
    m = GPT(
        GPTConfig(vocab_size=sep + 1, block_size=2 * n, n_layer=2, n_head=4, n_embd=48),
        generator=np.random.default_rng(0),
    )
    opt = AdamW(m.parameters(), lr=5e-3, weight_decay=0.0)
    rng = np.random.default_rng(1)
    losses = []
    with threadpool_limits(1):  # tiny matrices: threads only add contention under pytest -n 2
        for _ in range(300):
            x, y = _reverse_batch(rng, 32, n, sep)
            _, loss = m(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if loss.item() < 0.01:
                break
        assert losses[0] > 2.0 and losses[-1] < 0.01, f"loss {losses[0]:.3f} -> {losses[-1]:.4f}"
        x, _ = _reverse_batch(np.random.default_rng(2), 200, n, sep)  # unseen sequences
        out = m.eval().generate(x[:, : n + 1], n)
    np.testing.assert_array_equal(out[:, n + 1 :], x[:, n - 1 :: -1])


def test_generate() -> None:
    m = _gpt(dtype=np.float32)
    idx = np.random.default_rng(4).integers(0, 13, (2, 3))
    greedy = m.generate(idx, 9)  # runs past block_size 8: the context is cropped
    assert greedy.shape == (2, 12) and greedy.dtype == np.int64
    np.testing.assert_array_equal(greedy[:, :3], idx)
    np.testing.assert_array_equal(greedy, m.generate(idx, 9))
    first = m(idx).data[:, -1].argmax(-1)
    np.testing.assert_array_equal(greedy[:, 3], first)
    a = m.generate(idx, 6, generator=np.random.default_rng(5), temperature=2.0)
    b = m.generate(idx, 6, generator=np.random.default_rng(5), temperature=2.0)
    np.testing.assert_array_equal(a, b)
    assert ((a >= 0) & (a < 13)).all()
    top1 = m.generate(idx, 6, generator=np.random.default_rng(6), top_k=1)
    np.testing.assert_array_equal(top1, m.generate(idx, 6))  # top_k=1 sampling is greedy


@pytest.mark.parametrize(
    ("idx", "targets", "match"),
    [
        (np.zeros((2, 3), np.float32), None, r"idx must be \(batch, length\) integer token ids"),
        (np.zeros(3, np.int64), None, r"idx must be \(batch, length\)"),
        (np.zeros((2, 9), np.int64), None, r"sequence length 9 must be in \[1, block_size=8\]"),
        (
            np.zeros((2, 3), np.int64),
            np.zeros((2, 4), np.int64),
            r"targets must be integer token ids of shape \(2, 3\)",
        ),
        (np.zeros((2, 3), np.int64), np.zeros((2, 3), np.float32), "targets must be integer"),
    ],
)
def test_bad_input(idx: np.ndarray, targets: np.ndarray | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _gpt()(idx, targets)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"n_embd": 10, "n_head": 4}, "n_embd 10 must be divisible by n_head 4"),
        ({"vocab_size": 0}, "vocab_size must be a positive int"),
        ({"d_ff": -1}, "d_ff must be a positive int or None"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"mlp": "relu"}, "mlp must be 'gelu' or 'swiglu'"),
    ],
)
def test_config_is_validated(change: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        replace(SMALL, **change)
