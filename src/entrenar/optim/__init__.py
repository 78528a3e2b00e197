"""Optimizers, gradient clipping and learning-rate schedules, named and behaving as torch.optim's.

    opt = AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    sched = WarmupCosineLR(opt, warmup_steps=100, total_steps=10_000)
    for batch in batches:
        opt.zero_grad()
        loss(model, batch).backward()
        clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()

The per-array updates live in `entrenar.kernels` (plain NumPy references, swappable for fused kernels).
"""

from entrenar.optim import lr_scheduler, schedules
from entrenar.optim.adam import Adam, AdamW
from entrenar.optim.clip import clip_grad_norm_, clip_grad_value_
from entrenar.optim.lr_scheduler import (
    CosineAnnealingLR,
    ExponentialLR,
    LambdaLR,
    LRScheduler,
    OneCycleLR,
    StepLR,
    WarmupCosineLR,
)
from entrenar.optim.optimizer import Optimizer
from entrenar.optim.sgd import SGD

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "CosineAnnealingLR",
    "ExponentialLR",
    "LRScheduler",
    "LambdaLR",
    "OneCycleLR",
    "Optimizer",
    "StepLR",
    "WarmupCosineLR",
    "clip_grad_norm_",
    "clip_grad_value_",
    "lr_scheduler",
    "schedules",
]
