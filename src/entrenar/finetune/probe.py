"""Accuracy before fine-tuning, by a linear probe, and evaluation of a classifier on a loader.

The probe measures what the frozen encoder already knows: one forward pass (eval mode, no
gradients, shortest sentences first to cut padding) gives every sentence's pooled vector z (C,);
then only the head, logits = W z + b, is trained on those cached vectors by full-batch AdamW on the
mean cross-entropy

    L(W, b) = -(1/N) sum_i log softmax(W z_i + b)[y_i]

for a fixed number of steps, with an L2 penalty l2 ||W||^2 that keeps the head small (a head with
large weights would start fine-tuning overconfident). Training the head this way costs a few
milliseconds a step instead of a pass through the encoder, so the probe's cost is the one forward
pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from entrenar import functional as F
from entrenar.autograd.tape import no_grad
from entrenar.finetune.model import SequenceClassifier
from entrenar.nn.layers import Linear
from entrenar.optim import AdamW
from entrenar.tensor import Tensor
from entrenar.train import add_sums, classification_loss, compute_metrics

__all__ = ["ProbeResult", "encode", "evaluate", "head_accuracy", "train_head"]


@dataclass(frozen=True)
class ProbeResult:
    """The probe's accuracy on its training vectors and on each evaluated split, and its time."""

    train_accuracy: float
    accuracy: dict[str, float]
    encode_seconds: float
    fit_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "accuracy": dict(self.accuracy)}


def encode(
    model: SequenceClassifier, batches: Iterable[Mapping[str, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """(pooled vectors (N, C) float32, labels (N,) int64) of every batch, in the batches' order."""
    was_training = model.training
    model.eval()
    feats, labels = [], []
    try:
        with no_grad():
            for batch in batches:
                feats.append(model.pool(batch["input_ids"], batch["attention_mask"]).data)
                labels.append(np.asarray(batch["labels"], dtype=np.int64))
    finally:
        model.train(was_training)
    if not feats:
        raise ValueError("encode: no batches")
    return np.concatenate(feats).astype(np.float32, copy=False), np.concatenate(labels)


def train_head(
    head: Linear, features: np.ndarray, labels: np.ndarray, *, steps: int, lr: float, l2: float
) -> float:
    """Fit `head` in place on (features (N, C), labels (N,)) by full-batch AdamW on
    mean cross-entropy + l2 * ||W||^2 (the bias is not penalized); the last loss."""
    opt = AdamW(head.parameters(), lr=lr, weight_decay=0.0)
    x = Tensor(features)
    loss_value = math.nan
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(head(x), labels)  # (N, C) -> (N, K) -> ()
        if l2 > 0:
            loss = loss + (head.weight * head.weight).sum() * l2
        loss.backward()
        opt.step()
        loss_value = float(loss.item())
    return loss_value


def head_accuracy(head: Linear, features: np.ndarray, labels: np.ndarray) -> float:
    """The fraction of rows whose arg-max logit is the label."""
    with no_grad():
        predicted = head(Tensor(features)).data.argmax(axis=1)  # (N, K) -> (N,)
    return float((predicted == labels).mean())


def run_probe(
    model: SequenceClassifier,
    train: Iterable[Mapping[str, np.ndarray]],
    evaluate_on: Mapping[str, Iterable[Mapping[str, np.ndarray]]],
    *,
    steps: int,
    lr: float,
    l2: float,
) -> ProbeResult:
    """Encode the training batches and each split of `evaluate_on` once, fit `model.classifier` on
    the training vectors, and report its accuracy on each split."""
    t0 = time.perf_counter()
    x_train, y_train = encode(model, train)
    encoded = {name: encode(model, batches) for name, batches in evaluate_on.items()}
    t1 = time.perf_counter()
    train_head(model.classifier, x_train, y_train, steps=steps, lr=lr, l2=l2)
    t2 = time.perf_counter()
    return ProbeResult(
        train_accuracy=head_accuracy(model.classifier, x_train, y_train),
        accuracy={name: head_accuracy(model.classifier, *xy) for name, xy in encoded.items()},
        encode_seconds=t1 - t0,
        fit_seconds=t2 - t1,
    )


def evaluate(model: SequenceClassifier, batches: Iterable[Mapping[str, np.ndarray]]) -> dict[str, float]:
    """loss, accuracy, f1, f1_macro of `model` over the batches (eval mode, no gradients)."""
    was_training = model.training
    model.eval()
    sums: dict[str, Any] = {}
    try:
        with no_grad():
            for batch in batches:
                add_sums(sums, classification_loss(model, batch)[1])
    finally:
        model.train(was_training)
    if not sums:
        raise ValueError("evaluate: no batches")
    return compute_metrics(sums)
