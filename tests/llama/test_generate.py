"""generate(): the KV cache against the uncached path, greedy against transformers, sampling laws, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

from entrenar.autograd.tape import no_grad
from entrenar.models.generate import generate, sample_next
from entrenar.models.llama import LlamaConfig, LlamaForCausalLM

CFG = {
    "vocab_size": 53,
    "hidden_size": 24,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32,
    "tie_word_embeddings": True,
}


def _pair() -> tuple[transformers.LlamaForCausalLM, LlamaForCausalLM]:
    torch.manual_seed(1)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CFG, rope_theta=300.0)).eval()
    ours = LlamaForCausalLM(LlamaConfig.from_dict(hf.config.to_dict()))
    ours.load_state_dict({k: v.detach().numpy() for k, v in hf.state_dict().items()})
    return hf, ours


def test_cached_logits_equal_uncached() -> None:
    _, model = _pair()
    ids = np.random.default_rng(0).integers(0, 53, size=(2, 9))
    with no_grad():
        full = model(ids).numpy()
        cache = model.new_cache()
        parts = [model(ids[:, :5], cache=cache).numpy()]
        for t in range(5, 9):
            parts.append(model(ids[:, t : t + 1], cache=cache).numpy())
    assert cache.length == 9
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, atol=1e-5, rtol=0)


def test_greedy_equals_transformers_and_uncached() -> None:
    hf, model = _pair()
    ids = np.random.default_rng(1).integers(0, 53, size=(2, 4))
    with torch.no_grad():
        want = hf.generate(
            torch.from_numpy(ids),
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=0,
            attention_mask=torch.ones(2, 4, dtype=torch.long),
        ).numpy()
    got = generate(model, ids, 8)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(generate(model, ids, 8, use_cache=False), got)


def test_sampling_is_reproducible_and_top_k_1_is_greedy() -> None:
    _, model = _pair()
    ids = np.array([[3, 4, 5]])
    a = generate(model, ids, 6, temperature=1.0, generator=np.random.default_rng(7))
    b = generate(model, ids, 6, temperature=1.0, generator=np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    greedy = generate(model, ids, 6)
    k1 = generate(model, ids, 6, temperature=0.8, top_k=1, generator=np.random.default_rng(8))
    np.testing.assert_array_equal(k1, greedy)


def test_stop_tokens_end_rows() -> None:
    _, model = _pair()
    ids = np.array([[3, 4, 5]])
    greedy = generate(model, ids, 6)
    stop = int(greedy[0, 4])  # the second generated token
    out = generate(model, ids, 6, stop_tokens=[stop])
    first = int(np.flatnonzero(greedy[0, 3:] == stop)[0]) + 3
    np.testing.assert_array_equal(out[0, : first + 1], greedy[0, : first + 1])
    assert out.shape[1] == first + 1


def test_prompt_longer_than_context_is_refused() -> None:
    _, model = _pair()
    with pytest.raises(ValueError, match="exceeds the model's context of 32 tokens"):
        generate(model, np.zeros((1, 30), dtype=np.int64), 5)
    with pytest.raises(ValueError, match="exceed the context of max_position_embeddings = 32"), no_grad():
        model(np.zeros((1, 33), dtype=np.int64))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    k=st.integers(1, 10),
    p=st.floats(0.05, 1.0),
    temp=st.floats(0.1, 3.0),
)
def test_samples_stay_in_top_k_and_top_p_set(seed: int, k: int, p: float, temp: float) -> None:
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((4, 10)) * 3
    tok = sample_next(logits, temp, top_k=k, top_p=p, generator=rng)
    for row, t in zip(logits, tok, strict=True):
        order = np.argsort(-row, kind="stable")
        assert t in order[:k]
        probs = np.exp((row - row.max()) / temp)
        probs /= probs.sum()
        rank = int(np.flatnonzero(order == t)[0])
        assert rank == 0 or probs[order[:rank]].sum() < p + 1e-12  # mass above t was below top_p
