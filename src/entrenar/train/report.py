"""What a run writes for people: metrics.jsonl (one JSON object per event), plot.png, a summary.

metrics.jsonl has one line per log or evaluation event:

    {"step": 20, "epoch": 0.47, "split": "train", "loss": 0.61, "lr": 4.9e-05, "grad_norm": 1.3,
     "accuracy": 0.69, "f1": 0.70, "f1_macro": 0.69, "samples_per_s": 212.4, "elapsed": 3.1}
    {"step": 20, "epoch": 0.47, "split": "eval", "loss": 0.55, "accuracy": 0.74, ...}

(train events carry the mean over the steps since the previous train event). The plot shows loss and
accuracy (or perplexity, for language models) against step, train and eval, drawn with matplotlib's
Agg canvas (no display needed).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from entrenar.io import FormatError, atomic_path, atomic_write_text

__all__ = ["MetricsLog", "plot_metrics", "read_events"]


def _finite(event: Mapping[str, Any]) -> dict[str, Any]:
    """JSON has no NaN or infinity: such values are written as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in event.items()}


def read_events(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The events of a metrics.jsonl. A last line cut short (a crash mid-write) is dropped; any other
    malformed line is a FormatError naming the line."""
    p = Path(path)
    if not p.is_file():
        return []
    lines = p.read_text(encoding="utf-8").split("\n")
    events = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError as exc:
            if n == len(lines):  # the unterminated last line
                break
            raise FormatError(p, f"line {n}: not JSON ({exc.msg})") from None
        except RecursionError:
            raise FormatError(p, f"line {n}: JSON nested too deeply to read") from None
        if not isinstance(event, dict) or not isinstance(event.get("step"), int):
            raise FormatError(p, f"line {n}: expected an object with an integer 'step'")
        events.append(event)
    return events


class MetricsLog:
    """Appends events to metrics.jsonl, one flushed line each."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def truncate_after(self, step: int) -> None:
        """Keep only the events up to `step` (a run resumed from the checkpoint of that step rewrites the
        rest exactly as it was), rewriting the file atomically."""
        if not self.path.exists():
            return
        kept = [e for e in read_events(self.path) if e["step"] <= step]
        atomic_write_text(self.path, "".join(json.dumps(e, allow_nan=False) + "\n" for e in kept))

    def append(self, event: Mapping[str, Any]) -> None:
        line = json.dumps(_finite(event), allow_nan=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()


def _series(events: Iterable[Mapping[str, Any]], split: str, key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for e in events:
        if e.get("split") == split and isinstance(e.get(key), (int, float)):
            xs.append(int(e["step"]))
            ys.append(float(e[key]))
    return xs, ys


def plot_metrics(metrics_path: str | os.PathLike[str], plot_path: str | os.PathLike[str]) -> Path:
    """Draw loss and accuracy (perplexity when there is no accuracy) against step into a PNG, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    events = read_events(metrics_path)
    second = "accuracy" if any("accuracy" in e for e in events) else "perplexity"
    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, ("loss", second), strict=True):
        for split, style in (("train", "-"), ("eval", "o-")):
            xs, ys = _series(events, split, key)
            if xs:
                ax.plot(xs, ys, style, label=split, markersize=3)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.set_title(key)
        ax.grid(True, alpha=0.3)
        if ax.has_data():
            ax.legend()
    fig.tight_layout()
    target = Path(plot_path)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    return target
