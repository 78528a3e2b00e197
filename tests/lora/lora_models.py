"""Small models the LoRA tests adapt: an MLP with Linear layers in attributes, a list and a dict."""

from __future__ import annotations

from typing import Any

import numpy as np
from tiny_bert import TINY_BERT_NO_DROPOUT as TINY_BERT

from entrenar import Tensor
from entrenar.nn import BertConfig, BertForSequenceClassification, Linear, Module


class Block(Module):
    def __init__(self, d: int, rng: np.random.Generator, dtype: Any) -> None:
        super().__init__()
        self.up = Linear(d, 2 * d, dtype=dtype, generator=rng)
        self.down = Linear(2 * d, d, dtype=dtype, generator=rng)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.down(self.up(x).tanh())


class MLP(Module):
    """embed (Linear) -> blocks (a list) -> heads["out"] (a dict); the module names LoRA targets."""

    def __init__(self, d: int = 6, n_out: int = 3, seed: int = 0, dtype: Any = np.float32) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.embed = Linear(5, d, dtype=dtype, generator=rng)
        self.blocks = [Block(d, rng, dtype) for _ in range(2)]
        self.heads = {"out": Linear(d, n_out, bias=False, dtype=dtype, generator=rng)}

    def forward(self, x: Any) -> Tensor:
        h = self.embed(x)
        for b in self.blocks:
            h = b(h)
        return self.heads["out"](h)  # type: ignore[no-any-return]


def bert(seed: int = 0, dtype: Any = np.float32) -> BertForSequenceClassification:
    return BertForSequenceClassification(
        BertConfig(**TINY_BERT), dtype=dtype, generator=np.random.default_rng(seed)
    )


def bert_batch(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """input_ids (3, 9) and an attention mask with right padding."""
    rng = np.random.default_rng(seed)
    mask = (np.arange(9)[None, :] < np.array([9, 6, 2])[:, None]).astype(np.int64)
    return np.where(mask == 1, rng.integers(1, 60, (3, 9)), 0), mask


def x_batch(seed: int = 2, dtype: Any = np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((4, 5)).astype(dtype)


def perturb(model: Module, seed: int = 3, scale: float = 0.1) -> None:
    """Add noise to every trainable parameter (so that B != 0 and the adapter does something)."""
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        if p.requires_grad:
            p.data += (scale * rng.standard_normal(p.shape)).astype(p.dtype)
