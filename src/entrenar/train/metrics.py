"""Metrics computed from accumulated sums and counts, so that batches (and resumed runs) add up exactly.

A loss function returns, with its loss, a dict of per-batch sums; the trainer adds them over a log
window or an evaluation (`add_sums`) and turns the totals into metrics (`compute_metrics`). The keys
it knows:

    loss_sum    sum of per-item losses            with examples -> loss = loss_sum / examples
    examples    number of examples                   or tokens  -> loss = loss_sum / tokens,
    tokens      number of predicted tokens (LM)                    perplexity = exp(loss)
    confusion   (C, C) int64 counts, row = true class, column = predicted class
                -> accuracy, f1 (binary F1 of class 1 when C == 2, else macro F1), f1_macro

The definitions, as scikit-learn's (and with its zero_division=0 convention):
    accuracy  = trace(M) / sum(M)
    F1_c      = 2 tp_c / (2 tp_c + fp_c + fn_c), 0 when the denominator is 0
    macro F1  = mean of F1_c over the classes that occur among the true or the predicted labels
    perplexity = exp(mean token cross-entropy in nats)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "accuracy",
    "add_sums",
    "compute_metrics",
    "confusion_matrix",
    "f1_binary",
    "f1_macro",
    "f1_per_class",
    "perplexity",
]


def confusion_matrix(labels: Any, predictions: Any, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts M[true, predicted] over paired 1-D integer labels and predictions in [0, C)."""
    y = np.asarray(labels)
    p = np.asarray(predictions)
    if y.shape != p.shape or y.ndim != 1:
        raise ValueError(
            f"confusion_matrix: labels and predictions must be 1-D of one length, got {y.shape}, {p.shape}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"confusion_matrix: num_classes must be a positive int, got {num_classes!r}")
    for name, a in (("labels", y), ("predictions", p)):
        if a.size and (a.dtype.kind not in "iu" or a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"confusion_matrix: {name} must be integer class ids in [0, {num_classes})")
    flat = np.bincount(
        y.astype(np.int64) * num_classes + p.astype(np.int64), minlength=num_classes * num_classes
    )
    return flat.reshape(num_classes, num_classes).astype(np.int64)  # (C * C,) -> (C, C)


def _square(confusion: Any) -> np.ndarray:
    m = np.asarray(confusion)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 1:
        raise ValueError(f"a confusion matrix must be square (C, C), got shape {m.shape}")
    return m


def accuracy(confusion: Any) -> float:
    """trace / total (0.0 for an empty matrix)."""
    m = _square(confusion)
    total = m.sum()
    return float(np.trace(m) / total) if total else 0.0


def f1_per_class(confusion: Any) -> np.ndarray:
    """(C,) F1 of each class: 2 tp / (2 tp + fp + fn), 0 where that is 0 / 0."""
    m = _square(confusion).astype(np.float64)
    tp = np.diag(m)
    fp = m.sum(axis=0) - tp  # predicted c, truly another
    fn = m.sum(axis=1) - tp  # truly c, predicted another
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def f1_binary(confusion: Any, positive: int = 1) -> float:
    """F1 of class `positive` (scikit-learn's average='binary')."""
    m = _square(confusion)
    if not 0 <= positive < m.shape[0]:
        raise ValueError(f"f1_binary: positive class {positive} is not in [0, {m.shape[0]})")
    return float(f1_per_class(m)[positive])


def f1_macro(confusion: Any) -> float:
    """Mean F1 over the classes present among true or predicted labels (0.0 when there are none)."""
    m = _square(confusion)
    present = (m.sum(axis=0) + m.sum(axis=1)) > 0
    return float(f1_per_class(m)[present].mean()) if present.any() else 0.0


def perplexity(loss_sum: float, tokens: float) -> float:
    """exp(loss_sum / tokens), the perplexity of a mean cross-entropy in nats (inf when it overflows)."""
    if tokens <= 0:
        raise ValueError(f"perplexity: tokens must be > 0, got {tokens!r}")
    mean = loss_sum / tokens
    return math.exp(mean) if mean < 709.0 else math.inf


def add_sums(total: dict[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Add `new`'s values into `total` key by key (numbers, or arrays of one shape); returns total."""
    for key, value in new.items():
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number, np.ndarray)):
            raise TypeError(f"metric sums must be numbers or arrays; {key!r} is {type(value).__name__}")
        if key not in total:
            total[key] = np.array(value, copy=True) if isinstance(value, np.ndarray) else value
        elif isinstance(value, np.ndarray):
            if np.shape(total[key]) != value.shape:
                raise ValueError(
                    f"metric sums: {key!r} has shape {value.shape}, earlier {np.shape(total[key])}"
                )
            total[key] = total[key] + value
        else:
            total[key] = total[key] + value
    return total


def compute_metrics(sums: Mapping[str, Any]) -> dict[str, float]:
    """The metrics the known keys of `sums` give (see the module docstring); other keys are ignored."""
    out: dict[str, float] = {}
    count = sums.get("tokens", sums.get("examples"))
    if "loss_sum" in sums and count:
        out["loss"] = float(sums["loss_sum"]) / float(count)
        if "tokens" in sums:
            out["perplexity"] = perplexity(float(sums["loss_sum"]), float(sums["tokens"]))
    if "confusion" in sums:
        m = _square(sums["confusion"])
        out["accuracy"] = accuracy(m)
        out["f1"] = f1_binary(m) if m.shape[0] == 2 else f1_macro(m)
        out["f1_macro"] = f1_macro(m)
    return out
