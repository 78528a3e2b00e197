"""Tiny models, a word-level tokenizer and synthetic sentiment data for the trainer tests."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from entrenar import functional as F
from entrenar.data import ClassificationLoader, Example
from entrenar.nn import Dropout, Embedding, Linear, Module
from entrenar.optim import AdamW, WarmupCosineLR
from entrenar.tensor import Tensor
from entrenar.train import Trainer, TrainerConfig, classification_loss

GOOD = ["good", "great", "fine", "fun", "superb", "lovely"]
BAD = ["bad", "dull", "awful", "boring", "weak", "poor"]
NEUTRAL = ["the", "movie", "plot", "was", "a", "film", "and", "its", "cast"]


class WordTokenizer:
    """Whitespace words -> ids ([PAD] 0, [UNK] 1, [CLS] 2, then the vocabulary), padded to the longest row."""

    def __init__(self, words: Sequence[str] = (*GOOD, *BAD, *NEUTRAL)) -> None:
        self.vocab = {w: i + 3 for i, w in enumerate(words)}
        self.vocab_size = len(self.vocab) + 3

    def encode_batch(self, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        rows = [[2, *(self.vocab.get(w, 1) for w in t.lower().split())][:max_length] for t in texts]
        T = max((len(r) for r in rows), default=0)
        ids = np.zeros((len(rows), T), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r
        mask = (np.arange(T)[None, :] < np.array([len(r) for r in rows])[:, None]).astype(np.int64)
        return ids, mask


def sentiment_examples(n: int, seed: int = 0) -> list[Example]:
    """Sentences of 2..9 words; label 1 when they hold more GOOD than BAD words (ties: 0)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = list(rng.choice(GOOD + BAD + NEUTRAL, size=int(rng.integers(2, 10))))
        good = sum(w in GOOD for w in words)
        bad = sum(w in BAD for w in words)
        out.append(Example(" ".join(words), int(good > bad)))
    return out


class BagClassifier(Module):
    """Mean of token embeddings over the mask -> Linear -> tanh -> Dropout -> Linear: (B, T) -> (B, C)."""

    def __init__(self, vocab: int, dim: int = 16, classes: int = 2, p: float = 0.2, seed: int = 0) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.embed = Embedding(vocab, dim, generator=rng)
        self.hidden = Linear(dim, dim, generator=rng)
        self.dropout = Dropout(p, generator=rng)
        self.head = Linear(dim, classes, generator=rng)

    def forward(self, input_ids: Any, attention_mask: Any) -> Tensor:
        mask = np.asarray(attention_mask, dtype=np.float32)[:, :, None]  # (B, T) -> (B, T, 1)
        pooled = (self.embed(input_ids) * mask).sum(dim=1) / mask.sum(axis=1)  # (B, T, C) -> (B, C)
        return self.head(self.dropout(F.tanh(self.hidden(pooled))))


def make_trainer(
    out: Path,
    *,
    n: int = 96,
    batch_size: int = 8,
    lr: float = 3e-2,
    warmup: int = 3,
    schedule_steps: int | None = None,
    eval_n: int | None = 32,
    seed: int = 0,
    **config: Any,
) -> Trainer:
    """A fresh model, optimizer, warmup schedule and loaders, built the same way every call."""
    tok = WordTokenizer()
    model = BagClassifier(tok.vocab_size, seed=seed)
    train = ClassificationLoader(sentiment_examples(n, seed=1), tok, batch_size, max_length=8, seed=seed)
    val = None
    if eval_n:
        val = ClassificationLoader(sentiment_examples(eval_n, seed=2), tok, 16, max_length=8, shuffle=False)
    cfg = TrainerConfig(output_dir=out, **{"progress": False, "plot": False, "log_every": 1, **config})
    opt = AdamW(list(model.parameters()), lr=lr, weight_decay=0.01)
    total = schedule_steps or cfg.total_steps(len(train))
    sched = WarmupCosineLR(opt, warmup_steps=min(warmup, total - 1), total_steps=total)
    return Trainer(model, classification_loss, opt, train, scheduler=sched, eval_loader=val, config=cfg)
