"""TrainResult (what a run did) and count_samples (examples in a batch of any common shape)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["TrainResult", "count_samples"]


@dataclass(frozen=True)
class TrainResult:
    """What `Trainer.train` did: steps taken, the best eval value of the tracked metric (the early
    stopping metric, else eval loss) and its step, the last train and eval metrics, and the paths."""

    steps: int
    epochs: float
    stopped_early: bool
    best_metric: str | None
    best_value: float | None
    best_step: int | None
    final_metrics: dict[str, dict[str, float]]
    output_dir: Path
    metrics_path: Path
    plot_path: Path | None
    checkpoint: Path | None
    elapsed: float

    def summary(self) -> str:
        """A few lines for people."""
        lines = [
            f"trained {self.steps} steps ({self.epochs:.2f} epochs) in {self.elapsed:.1f} s"
            + (", stopped early" if self.stopped_early else "")
        ]
        for split, metrics in self.final_metrics.items():
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            lines.append(f"  final {split}: {shown}")
        if self.best_metric is not None and self.best_value is not None:
            lines.append(f"  best eval {self.best_metric}: {self.best_value:.4g} at step {self.best_step}")
        lines.append(f"  metrics: {self.metrics_path}")
        if self.plot_path is not None:
            lines.append(f"  plot: {self.plot_path}")
        if self.checkpoint is not None:
            lines.append(f"  checkpoint: {self.checkpoint}")
        return "\n".join(lines)


def count_samples(batch: Any) -> int:
    """Examples in a batch: the length of its "labels" or "input_ids" entry, else of its first entry."""
    first: Any = batch
    if isinstance(batch, Mapping):
        key = next((k for k in ("labels", "input_ids") if k in batch), None)
        first = batch[key] if key is not None else next(iter(batch.values()), None)
    elif isinstance(batch, (tuple, list)) and batch:
        first = batch[0]
    try:
        return len(first)
    except TypeError:
        return 1
