"""The Llama decoder against transformers' LlamaForCausalLM (the oracle), and its rotary / GQA gradients."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from entrenar.autograd.gradcheck import gradcheck
from entrenar.autograd.tape import no_grad
from entrenar.models.llama import (
    LlamaConfig,
    LlamaForCausalLM,
    apply_rotary,
    llama_from_pretrained,
    rotary_tables,
)
from entrenar.tensor import Tensor

TINY = {
    "vocab_size": 61,
    "hidden_size": 32,
    "intermediate_size": 40,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-5,
}


def _hf(tie: bool, theta: float = 1000.0) -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(**TINY, tie_word_embeddings=tie, rope_theta=theta)
    m = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # non-trivial norms, so that a missed weight shows
        for name, p in m.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return m


def _ours(hf: transformers.LlamaForCausalLM, dtype: type = np.float32) -> LlamaForCausalLM:
    config = LlamaConfig.from_dict(hf.config.to_dict())
    model = LlamaForCausalLM(config, dtype=dtype)
    state = {k: v.detach().numpy().astype(dtype) for k, v in hf.state_dict().items()}
    model.load_state_dict(state)
    return model


@pytest.mark.parametrize("tie", [True, False])
def test_logits_equal_transformers(tie: bool) -> None:
    hf = _hf(tie)
    model = _ours(hf)
    ids = np.random.default_rng(1).integers(0, TINY["vocab_size"], size=(3, 9))
    with torch.no_grad():
        want = hf(torch.from_numpy(ids)).logits.numpy()
    with no_grad():
        got = model(ids).numpy()
    assert got.shape == (3, 9, TINY["vocab_size"])
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == tie


def test_padding_mask_equals_transformers() -> None:
    hf = _hf(True)
    model = _ours(hf)
    ids = np.random.default_rng(2).integers(0, TINY["vocab_size"], size=(2, 7))
    mask = np.ones((2, 7), dtype=np.int64)
    mask[1, 5:] = 0  # right padding: the real tokens see no padding
    with torch.no_grad():
        want = hf(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    with no_grad():
        got = model(ids, attention_mask=mask).numpy()
    np.testing.assert_allclose(got[mask == 1], want[mask == 1], atol=1e-4, rtol=0)


def test_load_safetensors_checkpoint_dir(tmp_path: Path) -> None:
    hf = _hf(True, theta=500.0)
    hf.save_pretrained(tmp_path)
    model = llama_from_pretrained(tmp_path)
    assert model.config.rope_theta == 500.0 and model.config.kv_heads == 2
    ids = np.arange(10).reshape(2, 5)
    with torch.no_grad():
        want = hf(torch.from_numpy(ids)).logits.numpy()
    with no_grad():
        np.testing.assert_allclose(model(ids).numpy(), want, atol=1e-4, rtol=0)


def test_rotary_matches_transformers_and_gradchecks() -> None:
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    rng = np.random.default_rng(3)
    q, k = rng.standard_normal((2, 3, 5, 8)), rng.standard_normal((2, 1, 5, 8))
    cos, sin = rotary_tables(np.arange(2, 7), 8, 100.0, np.float64)
    tq, tk = apply_rotary_pos_emb(
        torch.from_numpy(q),
        torch.from_numpy(k),
        torch.from_numpy(cos.numpy())[None],
        torch.from_numpy(sin.numpy())[None],
    )
    np.testing.assert_allclose(apply_rotary(Tensor(q), cos, sin).numpy(), tq.numpy(), atol=1e-12)
    np.testing.assert_allclose(apply_rotary(Tensor(k), cos, sin).numpy(), tk.numpy(), atol=1e-12)
    assert gradcheck(lambda x: apply_rotary(x, cos, sin), [Tensor(q, requires_grad=True)])


def test_gqa_attention_gradchecks_in_float64() -> None:
    cfg = LlamaConfig(
        vocab_size=7,
        hidden_size=8,
        intermediate_size=6,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=50.0,
    )
    model = LlamaForCausalLM(cfg, dtype=np.float64, generator=4)
    attn = model.model.layers[0].self_attn
    cos, sin = rotary_tables(np.arange(4), cfg.dim_per_head, cfg.rope_theta, np.float64)
    mask = np.tri(4, 4, dtype=np.bool_)
    x = Tensor(np.random.default_rng(5).standard_normal((2, 4, 8)), requires_grad=True)
    for p in attn.parameters():
        p.requires_grad = False
    attn.k_proj.weight.requires_grad = True
    assert gradcheck(lambda x_, w: attn(x_, cos, sin, mask), [x, attn.k_proj.weight])


def test_config_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="rope_type 'llama3' is not supported"):
        LlamaConfig.from_dict({**TINY, "rope_parameters": {"rope_type": "llama3", "rope_theta": 1.0}})
    with pytest.raises(ValueError, match="must be a multiple of num_key_value_heads 3"):
        LlamaConfig(**{**TINY, "num_key_value_heads": 3})
    with pytest.raises(ValueError, match="model_type 'bert'"):
        LlamaConfig.from_dict({**TINY, "model_type": "bert"})
