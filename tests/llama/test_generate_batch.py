"""Batched generation with left padding: each row as if alone, transformers' left-padded greedy, stops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

from entrenar.autograd.tape import no_grad
from entrenar.models.generate import generate, left_pad
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
PROMPTS = [[5, 9, 2], [7, 1, 8, 30, 4, 11, 3], [40, 12, 6, 6, 19]]


def _pair() -> tuple[transformers.LlamaForCausalLM, LlamaForCausalLM]:
    torch.manual_seed(3)
    # a wide initialisation, so that greedy continuations vary instead of repeating one token
    hf_config = transformers.LlamaConfig(**CFG, rope_theta=300.0, initializer_range=0.5, eos_token_id=2)
    hf = transformers.LlamaForCausalLM(hf_config).double().eval()
    ours = LlamaForCausalLM(LlamaConfig.from_dict(hf.config.to_dict()), dtype=np.float64)
    ours.load_state_dict({k: v.detach().numpy() for k, v in hf.state_dict().items()})
    return hf, ours


def test_left_pad() -> None:
    ids, mask = left_pad([[1, 2], [3, 4, 5], [6]], pad_token_id=9)
    np.testing.assert_array_equal(ids, [[9, 1, 2], [3, 4, 5], [9, 9, 6]])
    np.testing.assert_array_equal(mask, [[0, 1, 1], [1, 1, 1], [0, 0, 1]])
    assert ids.dtype == mask.dtype == np.int64
    with pytest.raises(ValueError, match="prompt 1 must be a non-empty list of int token ids"):
        left_pad([[1], []], 0)
    with pytest.raises(ValueError, match="non-empty list of token-id lists"):
        left_pad([], 0)


def test_each_row_generates_what_it_generates_alone() -> None:
    _, model = _pair()
    out = generate(model, PROMPTS, 8, pad_token_id=0)
    width = max(map(len, PROMPTS))
    assert out.shape == (3, width + 8)
    for row, p in zip(out, PROMPTS, strict=True):
        alone = generate(model, np.array([p]), 8)[0]
        np.testing.assert_array_equal(row[width - len(p) :], alone)
        assert (row[: width - len(p)] == 0).all()  # the padding stays as it was
    ids, mask = left_pad(PROMPTS, 0)
    np.testing.assert_array_equal(generate(model, ids, 8, attention_mask=mask, use_cache=False), out)


def test_padded_logits_equal_the_rows_alone() -> None:
    _, model = _pair()
    ids, mask = left_pad(PROMPTS, 0)
    with no_grad():
        batched = model(ids, attention_mask=mask).numpy()[:, -1]  # (B, V)
        for i, p in enumerate(PROMPTS):
            alone = model(np.array([p])).numpy()[0, -1]
            np.testing.assert_allclose(batched[i], alone, rtol=0, atol=1e-12)


def test_equals_transformers_left_padded_greedy() -> None:
    hf, model = _pair()
    ids, mask = left_pad(PROMPTS, 0)
    with torch.no_grad():
        want = hf.generate(
            torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=0,
        ).numpy()  # transformers stops a row at its eos_token_id 2
    np.testing.assert_array_equal(generate(model, PROMPTS, 8, stop_tokens=[2], pad_token_id=0), want)


def test_stop_tokens_end_each_row_and_finished_rows_keep_padding() -> None:
    hf, model = _pair()
    free = generate(model, PROMPTS, 8, pad_token_id=0)
    width = max(map(len, PROMPTS))
    stop = int(free[0, width + 1])  # row 0's second new token
    steps: list[np.ndarray] = []
    out = generate(model, PROMPTS, 8, stop_tokens=[stop], pad_token_id=50, on_step=steps.append)
    np.testing.assert_array_equal(np.stack(steps, axis=1), out[:, width:])
    for row, full in zip(out, free, strict=True):
        new, ref = row[width:], full[width : width + row.size - width]
        hits = np.flatnonzero(ref == stop)
        if hits.size:  # up to and including the stop token as without stops, then padding only
            k = int(hits[0])
            np.testing.assert_array_equal(new[: k + 1], ref[: k + 1])
            assert (new[k + 1 :] == 50).all()
        else:
            np.testing.assert_array_equal(new, ref)
    assert (out[:, -1] == 50).all() or (out[:, -1] == stop).all() or out.shape[1] == width + 8
    with torch.no_grad():
        ids, mask = left_pad(PROMPTS, 50)
        want = hf.generate(
            torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=50,
            eos_token_id=stop,
        ).numpy()
    np.testing.assert_array_equal(out, want[:, : out.shape[1]])


def test_sampling_in_a_batch_is_reproducible() -> None:
    _, model = _pair()
    a = generate(model, PROMPTS, 5, temperature=0.9, top_p=0.9, generator=np.random.default_rng(4))
    b = generate(model, PROMPTS, 5, temperature=0.9, top_p=0.9, generator=np.random.default_rng(4))
    np.testing.assert_array_equal(a, b)


def test_bad_batches_are_refused() -> None:
    _, model = _pair()
    ids, mask = left_pad(PROMPTS, 0)
    right = np.ascontiguousarray(mask[:, ::-1])
    with pytest.raises(ValueError, match="attention_mask must pad on the LEFT"):
        generate(model, ids, 2, attention_mask=right)
    with pytest.raises(ValueError, match="attention_mask must be 0/1 of the prompt's shape"):
        generate(model, ids, 2, attention_mask=mask[:, 1:])
    with pytest.raises(ValueError, match="either token lists"):
        generate(model, PROMPTS, 2, attention_mask=mask)
    with pytest.raises(ValueError, match="prompt 0 must be a non-empty list"):
        generate(model, [[], [1]], 2)
    long = [[1] * 30, [2]]
    with pytest.raises(
        ValueError, match="prompt of 30 tokens plus max_new_tokens 3 exceeds the model's context of 32"
    ):
        generate(model, long, 3)
