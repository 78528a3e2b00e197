"""A tiny Llama GGUF with a byte-level tokenizer and chosen tensor types, and a folder of small texts:
what a causal-LM fine-tuning run needs, built in a test's folder in well under a second."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gguf
import numpy as np
import torch
import transformers
import yaml
from tiny_gguf import CFG, add_hparams, add_weights, finish

MERGES = ["t h", "th e", "Ġ the", "a n", "Ġ an", "o u", "e r"]
WORDS = ["the", "king", "queen", "sword", "crown", "night", "love", "death", "fair", "lord", "and"]


def write_lm_gguf(path: Path, types: dict[str, str] | None = None, seed: int = 0) -> Path:
    """A random tiny LlamaForCausalLM (tied embeddings) with a GPT-2 style tokenizer in its metadata;
    `types` maps a GGUF name part (e.g. 'attn_q', 'ffn_up') to a GGML type, default F32."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = ["<|endoftext|>", *bytes_to_unicode().values(), *(m.replace(" ", "") for m in MERGES)]
    cfg = {**CFG, "vocab_size": len(tokens)}
    torch.manual_seed(seed)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg, tie_word_embeddings=True))
    w = gguf.GGUFWriter(str(path), "llama")
    add_hparams(w, hf.config)
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3] + [1] * (len(tokens) - 1))
    w.add_token_merges(MERGES)
    w.add_eos_token_id(0)
    w.add_bos_token_id(0)
    add_weights(w, hf, types or {})
    return finish(w, path)


def write_texts(folder: Path, works: int = 5, lines: int = 40, seed: int = 0) -> Path:
    """`works` small .txt files of random lines of a few words (a learnable, repetitive language)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(works):
        rows = [
            " ".join(str(x) for x in rng.choice(WORDS, size=int(rng.integers(3, 7)))) for _ in range(lines)
        ]
        (folder / f"work_{i}.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def lm_config(tmp: Path, gguf_path: Path, texts: Path, **over: Any) -> Path:
    """A causal_lm run config for the tiny model and texts; `over` sets section values."""
    raw: dict[str, Any] = {
        "task": "causal_lm",
        "model": {"path": str(gguf_path)},
        "causal_lm": {
            "dataset": None,
            "texts": str(texts),
            "validation_works": 1,
            "max_length": 24,
            "batch_size": 4,
            "eval_batch_size": 8,
            "eval_blocks": 16,
        },
        "lora": {
            "r": 4,
            "alpha": 8,
            "dropout": 0.05,
            "quantize": None,
            "double_quant": False,
            "block_size": 32,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        },
        "optimizer": {"lr": 0.01, "head_lr": None},
        "schedule": {"name": "cosine", "warmup": 0.1},
        "training": {
            "max_steps": 12,
            "epochs": None,
            "eval_every": 6,
            "save_every": 6,
            "log_every": 3,
            "progress": False,
            "probe": {"enabled": False},
        },
        "output": {"dir": str(tmp / "runs"), "name": "tiny-lm", "plot": False},
    }
    for key, value in over.items():
        section, field = key.split("__")
        raw[section][field] = value
    path = tmp / "lm.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path
