"""FeedForward, SwiGLUFeedForward and the pre-LN TransformerBlock against PyTorch with the same weights."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from entrenar import Tensor
from entrenar.nn import Module
from entrenar.nn.transformer import FeedForward, SwiGLUFeedForward, TransformerBlock

torch.set_num_threads(1)

C, H, FF = 12, 3, 20


def _torch_params(m: Module) -> dict[str, torch.Tensor]:
    return {n: torch.tensor(p.data, requires_grad=True) for n, p in m.named_parameters()}


def _compare_grads(m: Module, ref: dict[str, torch.Tensor], rtol: float = 1e-9) -> None:
    for name, p in m.named_parameters():
        g = ref[name].grad
        assert p.grad is not None and g is not None, name
        np.testing.assert_allclose(p.grad, g.numpy(), rtol=rtol, atol=1e-12, err_msg=name)


def torch_block(
    x: torch.Tensor,
    P: dict[str, torch.Tensor],
    *,
    mlp: str,
    norm: str,
    eps: float,
    causal: bool,
    mask: np.ndarray | None,
) -> torch.Tensor:
    """The pre-LN block written directly in torch on a dict of its parameters."""
    B, T, _ = x.shape

    def lin(h: torch.Tensor, name: str) -> torch.Tensor:
        return TF.linear(h, P[f"{name}.weight"], P.get(f"{name}.bias"))

    def nrm(h: torch.Tensor, name: str) -> torch.Tensor:
        if norm == "rmsnorm":
            return TF.rms_norm(h, (C,), P[f"{name}.weight"], eps)
        return TF.layer_norm(h, (C,), P[f"{name}.weight"], P[f"{name}.bias"], eps)

    def heads(h: torch.Tensor) -> torch.Tensor:
        return h.view(B, T, H, C // H).transpose(1, 2)

    allowed = torch.ones(B, 1, T, T, dtype=torch.bool)
    if causal:
        allowed = allowed & torch.ones(T, T, dtype=torch.bool).tril()
    if mask is not None:
        allowed = allowed & torch.from_numpy(mask)[:, None, None, :]
    h = nrm(x, "ln_1")
    a = TF.scaled_dot_product_attention(
        heads(lin(h, "attn.q_proj")), heads(lin(h, "attn.k_proj")), heads(lin(h, "attn.v_proj")), allowed
    )
    x = x + lin(a.transpose(1, 2).reshape(B, T, C), "attn.o_proj")
    h = nrm(x, "ln_2")
    if mlp == "gelu":
        f = lin(TF.gelu(lin(h, "mlp.fc1")), "mlp.fc2")
    else:
        f = lin(TF.silu(lin(h, "mlp.gate_proj")) * lin(h, "mlp.up_proj"), "mlp.down_proj")
    return x + f


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_feedforward_matches_torch(approximate: str) -> None:
    rng = np.random.default_rng(0)
    m = FeedForward(C, FF, approximate=approximate, dtype=np.float64, generator=rng)
    ref = torch.nn.Sequential(
        torch.nn.Linear(C, FF, dtype=torch.float64),
        torch.nn.GELU(approximate=approximate),
        torch.nn.Linear(FF, C, dtype=torch.float64),
    )
    ref.load_state_dict(
        {k.replace("fc1", "0").replace("fc2", "2"): torch.from_numpy(v) for k, v in m.state_dict().items()}
    )
    x = rng.standard_normal((2, 4, C)) * 2
    xe = Tensor(x.copy(), requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    out, want = m(xe), ref(xt)
    np.testing.assert_allclose(out.data, want.detach().numpy(), rtol=1e-10, atol=1e-12)
    out.sum().backward()
    want.sum().backward()
    np.testing.assert_allclose(xe.grad, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    assert ref[0].weight.grad is not None
    np.testing.assert_allclose(m.fc1.weight.grad, ref[0].weight.grad.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(m.fc2.bias.grad, ref[2].bias.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_swiglu_matches_torch() -> None:
    rng = np.random.default_rng(1)
    m = SwiGLUFeedForward(C, FF, dtype=np.float64, generator=rng)
    assert [n for n, _ in m.named_parameters()] == ["gate_proj.weight", "up_proj.weight", "down_proj.weight"]
    P = _torch_params(m)
    x = rng.standard_normal((3, C))
    out = m(x)
    want = TF.linear(
        TF.silu(TF.linear(torch.from_numpy(x), P["gate_proj.weight"]))
        * TF.linear(torch.from_numpy(x), P["up_proj.weight"]),
        P["down_proj.weight"],
    )
    np.testing.assert_allclose(out.data, want.detach().numpy(), rtol=1e-10, atol=1e-12)
    w = rng.standard_normal(out.shape)
    (out * Tensor(w)).sum().backward()
    (want * torch.from_numpy(w)).sum().backward()
    _compare_grads(m, P)


@pytest.mark.parametrize(("mlp", "norm"), [("gelu", "layernorm"), ("swiglu", "rmsnorm")])
@pytest.mark.parametrize(("causal", "padded"), [(True, False), (False, True), (True, True)])
def test_block_matches_torch_reimplementation(mlp: str, norm: str, causal: bool, padded: bool) -> None:
    rng = np.random.default_rng(2)
    B, T = 2, 5
    blk = TransformerBlock(C, H, FF, mlp=mlp, norm=norm, norm_eps=1e-6, dtype=np.float64, generator=rng)
    for p in blk.parameters():  # move the norms off 1 and 0 so that their gradients are exercised
        p.data += rng.uniform(-0.2, 0.2, p.shape)
    mask = np.arange(T)[None, :] < np.array([[5], [3]]) if padded else None
    P = _torch_params(blk)
    x = rng.standard_normal((B, T, C))
    xe = Tensor(x.copy(), requires_grad=True)
    xt = torch.tensor(x, requires_grad=True)
    out = blk(xe, attention_mask=mask, is_causal=causal)
    want = torch_block(xt, P, mlp=mlp, norm=norm, eps=1e-6, causal=causal, mask=mask)
    np.testing.assert_allclose(out.data, want.detach().numpy(), rtol=1e-10, atol=1e-12)
    w = rng.standard_normal(out.shape)
    (out * Tensor(w)).sum().backward()
    (want * torch.from_numpy(w)).sum().backward()
    np.testing.assert_allclose(xe.grad, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    _compare_grads(blk, P)


def test_block_float32_matches_torch() -> None:
    rng = np.random.default_rng(3)
    blk = TransformerBlock(C, H, FF, generator=rng)
    P = {n: torch.from_numpy(p.data) for n, p in blk.named_parameters()}
    x = rng.standard_normal((2, 6, C)).astype(np.float32)
    out = blk(x, is_causal=True)
    assert out.dtype == np.float32
    want = torch_block(torch.from_numpy(x), P, mlp="gelu", norm="layernorm", eps=1e-5, causal=True, mask=None)
    np.testing.assert_allclose(out.data, want.numpy(), rtol=1e-5, atol=1e-5)


def test_block_parameter_names() -> None:
    blk = TransformerBlock(C, H, FF, bias=False, generator=np.random.default_rng(0))
    names = [n for n, _ in blk.named_parameters()]
    assert names == [
        "ln_1.weight",
        *[f"attn.{p}_proj.weight" for p in "qkvo"],
        "ln_2.weight",
        "mlp.fc1.weight",
        "mlp.fc2.weight",
    ]


def test_block_dropout_is_reproducible_and_off_in_eval() -> None:
    x = np.random.default_rng(4).standard_normal((2, 5, C))

    def make(p: float) -> TransformerBlock:
        return TransformerBlock(
            C, H, FF, dropout=p, attn_dropout=p, dtype=np.float64, generator=np.random.default_rng(9)
        )

    a, b, plain = make(0.3), make(0.3), make(0.0)
    first = a(x)
    np.testing.assert_array_equal(first.data, b(x).data)
    assert not np.allclose(first.data, plain(x).data)
    a.eval()
    np.testing.assert_allclose(a(x).data, plain(x).data, rtol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"norm": "batchnorm"}, "norm must be 'layernorm' or 'rmsnorm'"),
        ({"mlp": "relu"}, "mlp must be 'gelu' or 'swiglu'"),
        ({"d_ff": 0}, "d_ff must be a positive int"),
        ({"dropout": -0.1}, "dropout must be a probability"),
        ({"num_heads": 5}, "divisible by num_heads"),
    ],
)
def test_block_rejects_bad_config(kwargs: dict[str, Any], match: str) -> None:
    kw = {"d_model": C, "num_heads": H, "d_ff": FF, "generator": np.random.default_rng(0), **kwargs}
    with pytest.raises(ValueError, match=match):
        TransformerBlock(**kw)


def test_block_rejects_bad_input() -> None:
    blk = TransformerBlock(C, H, FF, generator=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"x must be \(batch, length, 12\), got shape \(5, 12\)"):
        blk(np.zeros((5, C), np.float32))
    with pytest.raises(ValueError, match="approximate must be"):
        FeedForward(C, FF, approximate="erf", generator=np.random.default_rng(0))
