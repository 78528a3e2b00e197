"""A byte-level BPE tokenizer built from a GGUF file's `tokenizer.ggml.*` metadata.

GGUF stores the vocabulary (`tokens`, in GPT-2's byte-to-unicode spelling), the `merges` ("a b"
strings, by rank), per-token types (3 = control, 4 = user defined) and the pre-tokenizer name
(`tokenizer.ggml.pre`). The result is a `tokenizers` BPE with a ByteLevel pre-tokenizer and decoder;
control tokens become special added tokens and user-defined ones plain added tokens, so that both
stay whole. The split regex follows llama.cpp for the names in `_PRE_SPLITS`: "smollm" (SmolLM2)
splits every digit apart before GPT-2's regex, as SmolLM2's own tokenizer.json does (a `Digits`
pre-tokenizer with individual_digits). Only `tokenizer.ggml.model == "gpt2"` is supported.
"""

from __future__ import annotations

import os
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from entrenar.models.tokenizer import PretrainedTokenizer

__all__ = ["gguf_chat_template", "gguf_tokenizer"]

_CONTROL, _USER_DEFINED = 3, 4
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_PRE_SPLITS = {"smollm": (r"\p{N}", _GPT2_SPLIT), "gpt2": (_GPT2_SPLIT,), "default": (_GPT2_SPLIT,)}


def _reader_of(source: Any) -> Any:
    if isinstance(source, (str, os.PathLike)):
        from entrenar.models.gguf import open_gguf

        return open_gguf(source)
    return source


def gguf_tokenizer(source: str | os.PathLike[str] | Any) -> PretrainedTokenizer:
    """The tokenizer of a GGUF file (path or an open `gguf.GGUFReader`); pad id from the metadata."""
    reader = _reader_of(source)

    def field(key: str, default: Any = None) -> Any:
        f = reader.fields.get(key)
        return default if f is None else f.contents()

    kind = field("tokenizer.ggml.model")
    if kind != "gpt2":
        raise ValueError(f"GGUF tokenizer.ggml.model {kind!r} is not supported (only 'gpt2' byte-level BPE)")
    pre = field("tokenizer.ggml.pre", "default")
    if pre not in _PRE_SPLITS:
        raise ValueError(
            f"GGUF tokenizer.ggml.pre {pre!r} is not supported (supported: {sorted(_PRE_SPLITS)})"
        )
    tokens: list[str] = field("tokenizer.ggml.tokens")
    merges_raw: list[str] | None = field("tokenizer.ggml.merges")
    if not tokens or merges_raw is None:
        raise ValueError("GGUF metadata lacks tokenizer.ggml.tokens or tokenizer.ggml.merges")
    types: list[int] = field("tokenizer.ggml.token_type", [1] * len(tokens))
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in merges_raw]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))  # type: ignore[arg-type]
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in _PRE_SPLITS[pre]]
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    control = [t for t, ty in zip(tokens, types, strict=True) if ty == _CONTROL]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    user = [t for t, ty in zip(tokens, types, strict=True) if ty == _USER_DEFINED]
    if user:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in user])
    pad = field("tokenizer.ggml.padding_token_id", field("tokenizer.ggml.eos_token_id", 0))
    return PretrainedTokenizer(tok, int(pad))


def gguf_chat_template(source: str | os.PathLike[str] | Any) -> str | None:
    """The Jinja chat template stored as `tokenizer.chat_template`, or None."""
    f = _reader_of(source).fields.get("tokenizer.chat_template")
    return None if f is None else str(f.contents())
