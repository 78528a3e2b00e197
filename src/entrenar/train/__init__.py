"""The training engine: a trainer loop with gradient accumulation, clipping, evaluation, early stopping,
metrics.jsonl, a plot, and atomic checkpoints that resume a run exactly.

    from entrenar.train import Trainer, TrainerConfig, classification_loss

    config = TrainerConfig(output_dir="runs/x", epochs=2, eval_every=100, save_every=200)
    result = Trainer(model, classification_loss, optimizer, train_loader, scheduler=scheduler,
                     eval_loader=val_loader, config=config).train()
    print(result.summary())

Any entrenar Module trains: `loss_fn(model, batch) -> (loss Tensor, dict of metric sums)` is the
whole contract (`classification_loss` and `lm_loss` are ready-made); `entrenar.data` gives loaders
whose position checkpoints can save. Nothing here reads a config file: build a TrainerConfig.
"""

from entrenar.train.checkpoint import (
    Checkpoint,
    list_checkpoints,
    read_checkpoint,
    resolve_checkpoint,
    verify_checkpoint,
)
from entrenar.train.config import EarlyStopping, TrainerConfig
from entrenar.train.losses import classification_loss, lm_loss
from entrenar.train.metrics import (
    accuracy,
    add_sums,
    compute_metrics,
    confusion_matrix,
    f1_binary,
    f1_macro,
    f1_per_class,
    perplexity,
)
from entrenar.train.report import plot_metrics, read_events
from entrenar.train.result import TrainResult, count_samples
from entrenar.train.trainer import METRICS_FILE, PLOT_FILE, LossFn, MetricsFn, Trainer

__all__ = [
    "METRICS_FILE",
    "PLOT_FILE",
    "Checkpoint",
    "EarlyStopping",
    "LossFn",
    "MetricsFn",
    "TrainResult",
    "Trainer",
    "TrainerConfig",
    "accuracy",
    "add_sums",
    "classification_loss",
    "compute_metrics",
    "confusion_matrix",
    "count_samples",
    "f1_binary",
    "f1_macro",
    "f1_per_class",
    "list_checkpoints",
    "lm_loss",
    "perplexity",
    "plot_metrics",
    "read_checkpoint",
    "read_events",
    "resolve_checkpoint",
    "verify_checkpoint",
]
