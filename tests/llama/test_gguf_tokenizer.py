"""The GGUF-metadata tokenizer against transformers' GGUF tokenizer conversion, on a tiny vocabulary."""

from __future__ import annotations

from pathlib import Path

import pytest
import transformers
from tiny_gguf import tiny_hf, write_tiny_gguf, write_tiny_tokenizer_gguf

from entrenar.models.gguf_tokenizer import gguf_chat_template, gguf_tokenizer

TEXTS = ["hello world", "<|end|>hell wor", " ünï\n\n\tx  y", "hello<|end|> 12 wor"]


@pytest.mark.parametrize("pre", ["gpt2", "smollm"])
def test_encodings_equal_transformers(tmp_path: Path, pre: str) -> None:
    path = write_tiny_tokenizer_gguf(tmp_path / "tok.gguf", pre=pre)
    ours = gguf_tokenizer(path)
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in TEXTS:
        ids = ours.tokenizer.encode(text).ids
        assert ours.decode(ids, skip_special_tokens=False) == text
        if pre == "gpt2" or "12" not in text:
            assert ids == theirs(text)["input_ids"], text
    twelve = [ours.tokenizer.id_to_token(i) for i in ours.tokenizer.encode("12").ids]
    # llama.cpp's "smollm" splits every digit (as SmolLM2's tokenizer.json does); transformers' GGUF
    # conversion knows no "smollm" split and would apply the "1 2" merge
    assert twelve == (["1", "2"] if pre == "smollm" else ["12"])
    hello = ours.tokenizer.encode("hello").ids
    assert ours.tokenizer.id_to_token(hello[0]) == "hell"  # the merges ran: he + ll
    assert ours.tokenizer.encode("<|end|>").ids == [0]  # the control token stays whole
    assert ours.pad_id == 0
    assert gguf_chat_template(path) is None


def test_unsupported_tokenizers_are_named(tmp_path: Path) -> None:
    path = write_tiny_tokenizer_gguf(tmp_path / "pre.gguf", pre="qwen2")
    with pytest.raises(ValueError, match=r"tokenizer\.ggml\.pre 'qwen2' is not supported"):
        gguf_tokenizer(path)
    bare = write_tiny_gguf(tmp_path / "bare.gguf", tiny_hf(), {})
    with pytest.raises(ValueError, match=r"tokenizer\.ggml\.model None is not supported"):
        gguf_tokenizer(bare)
