"""A checkpoint's tokenizer.json, through the `tokenizers` library, offline, batched into arrays.

    tok = load_tokenizer(checkpoint_folder)
    input_ids, attention_mask = tok.encode_batch(["a sentence", "another one"], max_length=64)
    # both int64 (B, T): T the longest row (padding=True) or max_length (padding="max_length")

Special tokens are added as the file's post-processor says ([CLS] ... [SEP] for BERT); truncation keeps
the first tokens so that a row, special tokens included, is at most max_length long. Padding is on
the right with the pad id the files name: tokenizer.json's padding settings, else tokenizer_config's
pad_token, else config.json's pad_token_id. The padding and truncation stored in tokenizer.json are
replaced by these arguments.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tokenizers import Tokenizer

from entrenar.io import FormatError
from entrenar.models.checkpoint import read_json

__all__ = ["PretrainedTokenizer", "load_tokenizer"]

TOKENIZER_NAME = "tokenizer.json"


class PretrainedTokenizer:
    """A `tokenizers.Tokenizer` with the pad id it needs; encode_batch returns NumPy arrays."""

    def __init__(self, tokenizer: Tokenizer, pad_id: int) -> None:
        if not isinstance(tokenizer, Tokenizer):
            raise TypeError(
                f"PretrainedTokenizer: expected a tokenizers.Tokenizer, got {type(tokenizer).__name__}"
            )
        vocab = tokenizer.get_vocab_size(with_added_tokens=True)
        if isinstance(pad_id, bool) or not isinstance(pad_id, int) or not 0 <= pad_id < vocab:
            raise ValueError(f"PretrainedTokenizer: pad_id must be an int in [0, {vocab}), got {pad_id!r}")
        tokenizer.no_padding()
        tokenizer.no_truncation()
        self.tokenizer = tokenizer
        self.pad_id = pad_id
        processor = tokenizer.post_processor
        self.num_special_tokens = 0 if processor is None else processor.num_special_tokens_to_add(False)

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.get_vocab_size(with_added_tokens=True))

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = True) -> str:
        return str(self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens))

    def encode_batch(
        self,
        texts: Sequence[str],
        max_length: int,
        padding: bool | Literal["longest", "max_length"] = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), both int64 (B, T); mask 1 for tokens, 0 for padding.

        Each row is truncated to max_length tokens (special tokens included). padding=True or
        "longest": T is the longest row; "max_length": T = max_length; False: no padding, so every row
        must come out the same length.
        """
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise TypeError(
                "encode_batch: texts must be a sequence of str (a list of sentences, not one str)"
            )
        if (
            isinstance(max_length, bool)
            or not isinstance(max_length, int)
            or max_length <= self.num_special_tokens
        ):
            raise ValueError(
                f"encode_batch: max_length must be an int above the {self.num_special_tokens} special "
                f"tokens each row gets, got {max_length!r}"
            )
        if padding not in (True, False, "longest", "max_length"):
            raise ValueError(
                f"encode_batch: padding must be True, False, 'longest' or 'max_length', got {padding!r}"
            )
        self.tokenizer.enable_truncation(max_length=max_length)
        rows = [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=True)]
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        if padding == "max_length":
            T = max_length
        elif padding is False:
            if len(set(lengths.tolist())) > 1:
                got = sorted(set(lengths.tolist()))
                raise ValueError(f"encode_batch: padding=False needs rows of one length, got lengths {got}")
            T = int(lengths[0]) if len(rows) else 0
        else:
            T = int(lengths.max(initial=0))
        ids = np.full((len(rows), T), self.pad_id, dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
        mask = (np.arange(T, dtype=np.int64)[None, :] < lengths[:, None]).astype(np.int64)  # (B,) -> (B, T)
        return ids, mask


def _pad_id(folder: Path, tokenizer: Tokenizer, file: Path) -> int:
    """The pad id: tokenizer.json's padding, else tokenizer_config.json's pad_token, else config.json's."""
    padding: dict[str, Any] | None = tokenizer.padding
    if padding is not None:
        return int(padding["pad_id"])
    tried = [f"{file.name} has no padding settings"]
    tc = folder / "tokenizer_config.json"
    if tc.is_file():
        token = read_json(tc, "tokenizer_config.json").get("pad_token")
        if isinstance(token, dict):  # older files store an AddedToken as {"content": ...}
            token = token.get("content")
        if isinstance(token, str):
            found = tokenizer.token_to_id(token)
            if found is not None:
                return int(found)
            tried.append(f"its pad_token {token!r} is not in the vocabulary")
        else:
            tried.append("tokenizer_config.json names no pad_token")
    cfg = folder / "config.json"
    if cfg.is_file():
        pad = read_json(cfg, "config.json").get("pad_token_id")
        if isinstance(pad, int) and not isinstance(pad, bool):
            return pad
        tried.append("config.json has no integer pad_token_id")
    raise FormatError(file, "cannot tell the pad id: " + "; ".join(tried))


def load_tokenizer(path: str | os.PathLike[str]) -> PretrainedTokenizer:
    """The tokenizer of a checkpoint folder (its tokenizer.json), or of a tokenizer.json file itself.

    FileNotFoundError naming the path when it is absent; FormatError naming the file when it is not
    UTF-8 JSON or `tokenizers` rejects it.
    """
    p = Path(path)
    file = p / TOKENIZER_NAME if p.is_dir() else p
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no {TOKENIZER_NAME} there (a checkpoint folder or the file itself)")
    read_json(file, TOKENIZER_NAME)  # not JSON / not an object: FormatError with line and column
    try:
        tokenizer = Tokenizer.from_str(file.read_text(encoding="utf-8"))
    except Exception as exc:  # tokenizers raises a bare Exception for every malformed file
        raise FormatError(file, f"tokenizers could not read it: {exc}") from None
    return PretrainedTokenizer(tokenizer, _pad_id(file.parent, tokenizer, file))
