"""Ready-made loss functions with the Trainer's signature: loss_fn(model, batch) -> (loss, sums).

`sums` are the per-batch sums and counts that `entrenar.train.metrics.compute_metrics` turns into
metrics once added over many batches. Write your own for other models; these two cover

    classification_loss   logits = model(**inputs) (B, C); mean cross-entropy against batch["labels"]
    lm_loss               logits = model(batch["input_ids"]) (B, T, V); mean token cross-entropy
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from entrenar import functional as F
from entrenar.nn.module import Module
from entrenar.tensor import Tensor
from entrenar.train.metrics import confusion_matrix

__all__ = ["classification_loss", "lm_loss"]


def _logits(out: Any, where: str) -> Tensor:
    if isinstance(out, tuple):  # (logits, loss) from models that also take labels
        out = out[0]
    if not isinstance(out, Tensor):
        raise TypeError(f"{where}: the model must return logits as a Tensor, got {type(out).__name__}")
    return out


def classification_loss(model: Module, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Any]]:
    """Mean cross-entropy of `model(**inputs)` (every batch entry but "labels") against batch["labels"].

    Sums: loss_sum (mean loss x B), examples (B) and confusion ((C, C) counts of arg-max predictions).
    """
    if "labels" not in batch:
        raise KeyError(f"classification_loss: the batch has no 'labels' (keys: {', '.join(batch)})")
    labels = np.asarray(batch["labels"])
    logits = _logits(model(**{k: v for k, v in batch.items() if k != "labels"}), "classification_loss")
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0] or labels.ndim != 1:
        raise ValueError(
            "classification_loss: logits must be (B, C) for labels (B,); "
            f"got {logits.shape} and {labels.shape}"
        )
    loss = F.cross_entropy(logits, labels.astype(np.int64, copy=False))
    n = int(labels.shape[0])
    predictions = logits.data.argmax(axis=1)  # (B, C) -> (B,)
    return loss, {
        "loss_sum": float(loss.item()) * n,
        "examples": n,
        "confusion": confusion_matrix(labels, predictions, int(logits.shape[1])),
    }


def lm_loss(model: Module, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Any]]:
    """Mean next-token cross-entropy of `model(batch["input_ids"])` (B, T, V) against batch["labels"]
    (B, T); label -100 is ignored. Sums: loss_sum (mean x counted tokens) and tokens."""
    labels = np.asarray(batch["labels"])
    logits = _logits(model(batch["input_ids"]), "lm_loss")
    if logits.ndim != 3 or logits.shape[:2] != labels.shape:
        raise ValueError(
            f"lm_loss: logits must be (B, T, V) for labels (B, T); got {logits.shape}, {labels.shape}"
        )
    B, T, V = logits.shape
    # (B, T, V) -> (B * T, V) against (B * T,)
    loss = F.cross_entropy(logits.reshape(B * T, V), labels.reshape(B * T).astype(np.int64, copy=False))
    tokens = int((labels != -100).sum())
    return loss, {"loss_sum": float(loss.item()) * tokens, "tokens": tokens}
