"""Small BERT checkpoint folders and tokenizers built in a test's tmp_path (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from entrenar.models import save_pretrained
from entrenar.nn.bert import BertConfig, BertForSequenceClassification, BertModel

TINY = {
    "vocab_size": 40,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 24,
    "max_position_embeddings": 20,
    "type_vocab_size": 2,
}

WORDS = ["the", "movie", "was", "good", "bad", "not", "a", "plot", "fun", "##s", "##ly", ".", "!", ","]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_model(seed: int = 0, num_labels: int | None = None, **config: Any) -> Any:
    c = BertConfig(**{**TINY, **config, **({"num_labels": num_labels} if num_labels else {})})
    rng = np.random.default_rng(seed)
    if num_labels:
        return BertForSequenceClassification(c, generator=rng).eval()
    return BertModel(c, generator=rng).eval()


def saved(folder: Path, seed: int = 0, **kwargs: Any) -> dict[str, np.ndarray]:
    """Save a tiny random model into `folder`; its state dict (our keys)."""
    model = tiny_model(seed, **kwargs)
    save_pretrained(model, folder)
    return {k: v.copy() for k, v in model.state_dict().items()}


def edit_config(folder: Path, **changes: Any) -> None:
    path = folder / "config.json"
    raw = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            raw.pop(k, None)
        else:
            raw[k] = v
    path.write_text(json.dumps(raw))


def batch(seed: int = 1, B: int = 3, T: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = np.array([T, T - 2, 3])[:B]
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)
    return np.where(mask == 1, rng.integers(1, TINY["vocab_size"], (B, T)), 0), mask


def tiny_tokenizer(folder: Path, *, padding: bool = True) -> Tokenizer:
    """A BERT-style WordPiece tokenizer ([CLS] ... [SEP], lower-cased) saved as folder/tokenizer.json."""
    vocab = {t: i for i, t in enumerate([*SPECIALS, *WORDS])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(SPECIALS)
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    if padding:
        tok.enable_padding(pad_id=0, pad_token="[PAD]", length=16)  # replaced by encode_batch's own
        tok.enable_truncation(max_length=16)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return tok
