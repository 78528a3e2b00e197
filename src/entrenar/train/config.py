"""TrainerConfig and EarlyStopping: plain, validated dataclasses (a YAML or CLI layer builds them).

Every field is checked on construction; an error names the field and the expected form. `to_dict`
gives JSON-ready values (it is saved as config.json in every checkpoint) and `from_dict` reads them
back, rejecting unknown keys by name.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = ["EarlyStopping", "TrainerConfig"]


def _check_int(name: str, value: Any, *, low: int, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        what = f"an int >= {low}" + (" or None" if optional else "")
        raise ValueError(f"TrainerConfig: {name} must be {what}, got {value!r}")


@dataclass(frozen=True)
class EarlyStopping:
    """Stop when the eval metric `metric` has not improved for `patience` evaluations in a row.

    An evaluation improves on the best so far when value < best - min_delta (mode "min") or
    value > best + min_delta (mode "max"). `metric` is a key of the evaluation metrics ("loss",
    "accuracy", "f1", "f1_macro", "perplexity", or whatever the metrics function returns).
    """

    metric: str = "loss"
    mode: Literal["min", "max"] = "min"
    patience: int = 3
    min_delta: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.metric, str) or not self.metric:
            raise ValueError(
                f"EarlyStopping: metric must be a metric name such as 'loss', got {self.metric!r}"
            )
        if self.mode not in ("min", "max"):
            raise ValueError(f"EarlyStopping: mode must be 'min' or 'max', got {self.mode!r}")
        if (
            isinstance(self.patience, bool)
            or not isinstance(self.patience, numbers.Integral)
            or self.patience < 1
        ):
            raise ValueError(
                f"EarlyStopping: patience must be an int >= 1 (evaluations), got {self.patience!r}"
            )
        d = self.min_delta
        if isinstance(d, bool) or not isinstance(d, numbers.Real) or not math.isfinite(d) or d < 0:
            raise ValueError(f"EarlyStopping: min_delta must be a finite number >= 0, got {d!r}")

    def improves(self, value: float, best: float | None) -> bool:
        """Whether `value` beats `best` (None: nothing yet) by more than min_delta."""
        if best is None:
            return True
        return value < best - self.min_delta if self.mode == "min" else value > best + self.min_delta


@dataclass(frozen=True)
class TrainerConfig:
    """How long to train and what to write where.

    output_dir      where metrics.jsonl, plot.png and checkpoints/step-N/ go (created if missing)
    max_steps       optimizer steps to take in total, or
    epochs          passes over the training loader: total steps = floor(epochs * batches / accumulation)
                    (at least 1); give exactly one of max_steps and epochs
    grad_accumulation_steps   micro-batches per optimizer step; each micro-batch loss is scaled by
                    1 / grad_accumulation_steps before backward, so gradients are their mean
    max_grad_norm   clip the total 2-norm of the gradients to this (None: no clipping)
    eval_every      evaluate every this many steps (None: only at the end); also at the end
    save_every      checkpoint every this many steps (None: only at the end); also at the end
    keep_last       checkpoints to keep (the newest; None: all)
    log_every       write a train event every this many steps (and one for the last steps)
    seed            seeds the trainer's own np.random.Generator (`Trainer.rng`, saved in checkpoints)
    early_stopping  an EarlyStopping, or None
    progress        show a tqdm bar (stderr) and print the summary at the end
    plot            write plot.png (loss and accuracy against step) at the end
    resume          False; True: continue from output_dir's latest checkpoint; or a checkpoint path
    nonfinite       what a step whose loss or gradients hold NaN or inf does: "stop" (raise
                    FloatingPointError naming the step and the first such parameter; the last checkpoint
                    stays the newest) or "skip" (no optimizer update for that step, as mixed-precision
                    loss scaling does; the schedule still advances; train events count `skipped_steps`)
    extra           free-form JSON-able values saved with the config in every checkpoint (for example
                    the settings of the YAML file the run came from); the trainer does not read them
    """

    output_dir: str | os.PathLike[str]
    max_steps: int | None = None
    epochs: float | None = None
    grad_accumulation_steps: int = 1
    max_grad_norm: float | None = None
    eval_every: int | None = None
    save_every: int | None = None
    keep_last: int | None = 3
    log_every: int = 10
    seed: int = 0
    early_stopping: EarlyStopping | None = None
    progress: bool = True
    plot: bool = True
    resume: bool | str | os.PathLike[str] = False
    nonfinite: Literal["stop", "skip"] = "stop"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.output_dir, (str, os.PathLike)) or not os.fspath(self.output_dir):
            raise ValueError(f"TrainerConfig: output_dir must be a folder path, got {self.output_dir!r}")
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError(
                "TrainerConfig: give exactly one of max_steps (optimizer steps) and epochs (passes over "
                f"the data); got max_steps={self.max_steps!r}, epochs={self.epochs!r}"
            )
        _check_int("max_steps", self.max_steps, low=1, optional=True)
        e = self.epochs
        if e is not None and (
            isinstance(e, bool) or not isinstance(e, numbers.Real) or not math.isfinite(e) or e <= 0
        ):
            raise ValueError(f"TrainerConfig: epochs must be a number > 0, got {e!r}")
        _check_int("grad_accumulation_steps", self.grad_accumulation_steps, low=1)
        g = self.max_grad_norm
        if g is not None and (
            isinstance(g, bool) or not isinstance(g, numbers.Real) or not math.isfinite(g) or g <= 0
        ):
            raise ValueError(f"TrainerConfig: max_grad_norm must be a number > 0 or None, got {g!r}")
        for name in ("eval_every", "save_every", "keep_last"):
            _check_int(name, getattr(self, name), low=1, optional=True)
        _check_int("log_every", self.log_every, low=1)
        _check_int("seed", self.seed, low=0)
        if self.early_stopping is not None and not isinstance(self.early_stopping, EarlyStopping):
            raise TypeError(
                "TrainerConfig: early_stopping must be an EarlyStopping or None, "
                f"got {type(self.early_stopping).__name__}"
            )
        for name in ("progress", "plot"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TrainerConfig: {name} must be True or False, got {getattr(self, name)!r}")
        r = self.resume
        if not isinstance(r, (bool, str, os.PathLike)) or (not isinstance(r, bool) and not os.fspath(r)):
            raise ValueError(f"TrainerConfig: resume must be False, True or a checkpoint path, got {r!r}")
        if self.nonfinite not in ("stop", "skip"):
            raise ValueError(f"TrainerConfig: nonfinite must be 'stop' or 'skip', got {self.nonfinite!r}")
        if not isinstance(self.extra, dict):
            raise ValueError(f"TrainerConfig: extra must be a dict, got {type(self.extra).__name__}")

    @property
    def path(self) -> Path:
        """output_dir as a Path."""
        return Path(self.output_dir)

    def total_steps(self, batches_per_epoch: int) -> int:
        """Optimizer steps of the whole run: max_steps, or floor(epochs * batches_per_epoch /
        grad_accumulation_steps), at least 1 (build a scheduler's total_steps from this)."""
        if self.max_steps is not None:
            return int(self.max_steps)
        assert self.epochs is not None  # one of the two is set: checked on construction
        return max(1, math.floor(self.epochs * batches_per_epoch / self.grad_accumulation_steps + 1e-9))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values: paths as str, early_stopping as a dict or None."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["output_dir"] = os.fspath(self.output_dir)
        if isinstance(self.resume, os.PathLike):
            out["resume"] = os.fspath(self.resume)
        out["early_stopping"] = (
            None if self.early_stopping is None else dataclasses.asdict(self.early_stopping)
        )
        out["extra"] = dict(self.extra)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainerConfig:
        """The config `to_dict` describes; ValueError naming unknown keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"TrainerConfig: unknown keys {unknown} (known: {sorted(known)})")
        kwargs = dict(values)
        es = kwargs.get("early_stopping")
        if isinstance(es, Mapping):
            es_known = {f.name for f in dataclasses.fields(EarlyStopping)}
            if set(es) - es_known:
                raise ValueError(
                    f"EarlyStopping: unknown keys {sorted(set(es) - es_known)} (known: {sorted(es_known)})"
                )
            kwargs["early_stopping"] = EarlyStopping(**es)
        return cls(**kwargs)
