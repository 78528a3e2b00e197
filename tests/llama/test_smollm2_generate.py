"""SmolLM2-135M-Instruct: batched left-padded greedy generation and the chat template, against transformers
loading the same GGUF file (slow: both load the 135M model)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from smollm2_oracle import transformers_smollm2

from entrenar.assets import AssetError, smollm2_gguf
from entrenar.models.chat import apply_chat_template
from entrenar.models.generate import generate, left_pad
from entrenar.models.gguf import llama_from_gguf, open_gguf
from entrenar.models.gguf_tokenizer import gguf_chat_template, gguf_tokenizer

CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def both() -> dict[str, Any]:
    try:
        path = smollm2_gguf()
    except AssetError as exc:
        pytest.skip(f"SmolLM2 GGUF not available: {exc}")
    reader = open_gguf(path)
    hf, hf_tok = transformers_smollm2(path)
    return {
        "model": llama_from_gguf(reader),
        "tok": gguf_tokenizer(reader),
        "template": gguf_chat_template(reader),
        "hf": hf,
        "hf_tok": hf_tok,
    }


def test_chat_template_equals_transformers(both: dict[str, Any]) -> None:
    tok, hf_tok = both["tok"].tokenizer, both["hf_tok"]
    for gen in (True, False):
        want = hf_tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=gen)
        got = apply_chat_template(
            CHAT,
            both["template"],
            add_generation_prompt=gen,
            bos_token=hf_tok.bos_token,
            eos_token=hf_tok.eos_token,
        )
        assert got == want
        ids = hf_tok.apply_chat_template(CHAT, tokenize=True, add_generation_prompt=gen, return_dict=False)
        assert tok.encode(got, add_special_tokens=False).ids == list(ids)


def test_left_padded_batch_equals_transformers_greedy(both: dict[str, Any]) -> None:
    tok = both["tok"].tokenizer
    chat = apply_chat_template(CHAT, both["template"])
    prompts = [tok.encode(chat).ids, tok.encode("The quick brown fox jumps over the lazy").ids]
    assert len(prompts[0]) != len(prompts[1])
    ids, mask = left_pad(prompts, 2)
    with torch.no_grad():
        want = (
            both["hf"]
            .generate(
                torch.from_numpy(ids),
                attention_mask=torch.from_numpy(mask),
                max_new_tokens=5,
                min_new_tokens=5,
                do_sample=False,
                pad_token_id=2,
            )
            .numpy()
        )
    got = generate(both["model"], prompts, 5, pad_token_id=2)
    np.testing.assert_array_equal(got, want)
    for row, p in zip(got, prompts, strict=True):  # and each row as it generates alone
        np.testing.assert_array_equal(row[ids.shape[1] - len(p) :], generate(both["model"], [p], 5)[0])
