"""SmolLM2-135M-Instruct from its GGUF file (Q4_1 / Q8_0) against transformers loading the same file.

transformers dequantizes the GGUF into a float32 LlamaForCausalLM; entrenar keeps the Q4_1 blocks
packed. Next-token logits must agree within 1e-3, greedy continuations token for token, and the
tokenizers (ours from the metadata, transformers' GGUF conversion) must encode alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from smollm2_oracle import transformers_smollm2

from entrenar.assets import AssetError, smollm2_gguf
from entrenar.autograd.tape import no_grad
from entrenar.models.generate import generate
from entrenar.models.gguf import llama_from_gguf, open_gguf
from entrenar.models.gguf_tokenizer import gguf_chat_template, gguf_tokenizer
from entrenar.quant.ggml import GGMLLinear

PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "The quick brown fox jumps over the lazy",
]


@pytest.fixture(scope="module")
def smollm2() -> dict[str, Any]:
    try:
        path = smollm2_gguf()
    except AssetError as exc:
        pytest.skip(f"SmolLM2 GGUF not available: {exc}")
    reader = open_gguf(path)
    return {"path": path, "model": llama_from_gguf(reader), "tok": gguf_tokenizer(reader), "reader": reader}


@pytest.fixture(scope="module")
def oracle(smollm2: dict[str, Any]) -> tuple[Any, Any]:
    return transformers_smollm2(smollm2["path"])


def test_config_and_packed_base(smollm2: dict[str, Any]) -> None:
    model = smollm2["model"]
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.kv_heads) == (30, 576, 9, 3)
    assert (c.intermediate_size, c.vocab_size, c.rope_theta, c.tie_word_embeddings) == (
        1536,
        49152,
        1e5,
        True,
    )
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, GGMLLinear) and q.qweight.kind == "Q4_1"
    assert "<|im_start|>" in (gguf_chat_template(smollm2["reader"]) or "")


def test_tokenizer_equals_transformers_gguf_tokenizer(
    smollm2: dict[str, Any], oracle: tuple[Any, Any]
) -> None:
    ours, theirs = smollm2["tok"], oracle[1]
    texts = [*PROMPTS, "Numbers 12345 and 3.14, naïve café 😀\n\n\ttabs", "  leading spaces"]
    for text in texts:
        ids = ours.tokenizer.encode(text).ids
        assert ids == theirs(text)["input_ids"], text
        assert ours.decode(ids, skip_special_tokens=False) == text


def test_next_token_logits_and_greedy_equal_transformers(
    smollm2: dict[str, Any], oracle: tuple[Any, Any]
) -> None:
    model, tok = smollm2["model"], smollm2["tok"]
    rows = [tok.tokenizer.encode(p).ids for p in PROMPTS]
    n = min(len(r) for r in rows)
    ids = np.array([r[-n:] for r in rows], dtype=np.int64)  # equal lengths: a batch without padding
    with torch.no_grad():
        want = oracle[0](torch.from_numpy(ids)).logits[:, -1].numpy()
    with no_grad():
        got = model(ids).numpy()[:, -1]
    np.testing.assert_allclose(got, want, atol=1e-3, rtol=0)
    with torch.no_grad():
        hf_tokens = (
            oracle[0]
            .generate(
                torch.from_numpy(ids),
                attention_mask=torch.ones_like(torch.from_numpy(ids)),
                max_new_tokens=4,
                do_sample=False,
                pad_token_id=2,
            )
            .numpy()
        )
    np.testing.assert_array_equal(generate(model, ids, 4), hf_tokens)
