"""The training loop: steps with gradient accumulation and clipping, evaluation, checkpoints, exact resume.

    config = TrainerConfig(output_dir="runs/sst", epochs=1, grad_accumulation_steps=2, max_grad_norm=1.0,
                           eval_every=100, save_every=200)
    steps = config.total_steps(len(train_loader))
    optimizer = AdamW(trainable_parameters, lr=2e-5)
    scheduler = WarmupCosineLR(optimizer, warmup_steps=steps // 16, total_steps=steps)
    trainer = Trainer(model, classification_loss, optimizer, train_loader, scheduler=scheduler,
                      eval_loader=val_loader, config=config)
    result = trainer.train()              # -> TrainResult; metrics.jsonl, plot.png, checkpoints/

One optimizer step (nanoGPT's loop, written out):

    model.train(); optimizer.zero_grad()
    for each of grad_accumulation_steps micro-batches:      # the train loader, epoch after epoch
        loss, sums = loss_fn(model, batch)                  # sums: per-batch metric sums and counts
        (loss / grad_accumulation_steps).backward()         # gradients add up to their mean
    clip_grad_norm_(parameters, max_grad_norm)              # when set
    optimizer.step(); scheduler.step()                      # lr logged is the one this step used

The step's loss is the mean of its micro-batch losses. Every `log_every` steps a train event (mean
loss of the window, lr, metrics of the summed window `sums`, samples/s) goes to metrics.jsonl; every
`eval_every` steps the model is evaluated (eval mode, no grad) on the eval loader and early stopping
is checked; every `save_every` steps a checkpoint is written (see `entrenar.train.checkpoint`). At the
end: the last train event, a final evaluation and checkpoint when that step has none yet, plot.png.

Exact resume: a checkpoint holds everything the next step depends on — the trainable weights,
optimizer and scheduler state, the train loader's (epoch, position), the trainer's generator and every
np.random.Generator the model's modules hold (dropout masks), the counters and the open log window.
`trainer.resume(path)` (or `resume=True` in the config) restores them, and metrics.jsonl is cut back to
the checkpoint's step, so an interrupted and resumed run logs the same losses and ends with the same
weights, bit for bit, as one that ran straight through. The model, optimizer, scheduler and loaders
must be built as for the original run (the checkpoint restores their state, not their construction).
What a checkpoint holds and how a resume restores it is written in `entrenar.train.resume`; this module
is the loop.

Faults (see `entrenar.train.guards`): a run killed at any moment resumes from its last complete
checkpoint with the same result; a step with a non-finite loss or gradient stops the run naming the step
and the first such parameter (or, with nonfinite="skip", makes no update and is counted); Ctrl-C
finishes the step, writes a checkpoint and raises KeyboardInterrupt (a second Ctrl-C raises at once);
a checkpoint that cannot be written (disk full, read-only) raises an OSError naming the intact one.

Data parallel (`comm`, see `entrenar.distributed`): each rank takes its shard of every global batch,
gradients and metric sums are summed over ranks before the step, rank 0 writes files; the result is
the one-process run's on the same global batches (up to float rounding), on any number of ranks.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm  # type: ignore[import-untyped]

from entrenar.autograd.tape import no_grad
from entrenar.distributed import Communicator, DataParallel
from entrenar.nn.module import Module
from entrenar.optim import Optimizer
from entrenar.optim.lr_scheduler import LRScheduler
from entrenar.tensor import Tensor
from entrenar.train.checkpoint import CHECKPOINTS_DIR, LATEST
from entrenar.train.config import EarlyStopping, TrainerConfig
from entrenar.train.guards import Interrupts, first_nonfinite_grad
from entrenar.train.metrics import add_sums, compute_metrics
from entrenar.train.report import MetricsLog, plot_metrics
from entrenar.train.result import TrainResult
from entrenar.train.resume import resume_trainer, save_trainer_checkpoint
from entrenar.train.state import LogWindow, module_generators

__all__ = ["METRICS_FILE", "PLOT_FILE", "LossFn", "MetricsFn", "TrainLoader", "Trainer"]

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "plot.png"
LossFn = Callable[[Module, Any], tuple[Tensor, Mapping[str, Any]]]
MetricsFn = Callable[[Mapping[str, Any]], dict[str, float]]


class TrainLoader(Protocol):
    """What the trainer needs of a train loader: one epoch per iteration, and its length in batches.
    Exact resume also needs `state_dict()` and `load_state_dict(state)` (see `entrenar.data`)."""

    def __iter__(self) -> Iterator[Any]: ...
    def __len__(self) -> int: ...


class Trainer:
    """Trains `model` by `optimizer` on `loss_fn(model, batch) -> (loss, sums)` over `train_loader`.

    train_loader: iterable of batches, one epoch per iteration, with `len()` (batches per epoch) and,
        for checkpoints that resume exactly, `state_dict()` / `load_state_dict()` (as
        `entrenar.data.ClassificationLoader` and `LMLoader`).
    eval_loader: iterable of batches, one full pass per iteration (e.g. a loader with shuffle=False).
    metrics_fn: turns summed `sums` into metrics (default `compute_metrics`).
    `rng` is the trainer's own generator (seeded by config.seed; saved in checkpoints) for loss functions
    or callbacks that need randomness. comm: train data-parallel over its ranks (default: one process).
    """

    def __init__(
        self,
        model: Module,
        loss_fn: LossFn,
        optimizer: Optimizer,
        train_loader: TrainLoader,
        *,
        scheduler: LRScheduler | None = None,
        eval_loader: Iterable[Any] | None = None,
        config: TrainerConfig,
        metrics_fn: MetricsFn = compute_metrics,
        comm: Communicator | None = None,
    ) -> None:
        for name, value, kind in (
            ("model", model, Module),
            ("optimizer", optimizer, Optimizer),
            ("config", config, TrainerConfig),
        ):
            if not isinstance(value, kind):
                raise TypeError(f"Trainer: {name} must be a {kind.__name__}, got {type(value).__name__}")
        if scheduler is not None and not isinstance(scheduler, LRScheduler):
            raise TypeError(
                f"Trainer: scheduler must be an LRScheduler or None, got {type(scheduler).__name__}"
            )
        if not callable(loss_fn) or not callable(metrics_fn):
            raise TypeError("Trainer: loss_fn and metrics_fn must be callables")
        if not hasattr(train_loader, "__iter__") or not hasattr(train_loader, "__len__"):
            raise TypeError(
                f"Trainer: train_loader must be iterable and have len(), got {type(train_loader).__name__}"
            )
        if len(train_loader) < 1:
            raise ValueError("Trainer: train_loader has no batches")
        if config.early_stopping is not None and eval_loader is None:
            raise ValueError("Trainer: early_stopping needs an eval_loader to evaluate on")
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.train_loader, self.eval_loader, self.scheduler = train_loader, eval_loader, scheduler
        self.config, self.metrics_fn, self.dp = config, metrics_fn, DataParallel(comm)
        self.rng = np.random.default_rng(config.seed)
        names = {id(p): n for n, p in model.named_parameters()}
        self._params = [p for g in optimizer.param_groups for p in g["params"]]
        for i, p in enumerate(self._params):
            if id(p) not in names:
                raise ValueError(
                    f"Trainer: optimizer parameter {i} (shape {p.shape}) is not a parameter of the model"
                )
        self._param_names = [names[id(p)] for p in self._params]
        self._generators = module_generators(model)
        self._tracked = config.early_stopping or EarlyStopping("loss", "min")
        self.step = 0
        self.batches_seen = 0
        self.best_value: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0
        self.stopped_early = False
        self.last_eval_step: int | None = None
        self.last_save_step: int | None = None
        self.last_checkpoint: Path | None = None
        self.last_metrics: dict[str, dict[str, float]] = {}
        self.resumed_from: Path | None = None
        self.skipped_steps = 0
        self._interrupts: Interrupts | None = None
        self._window = LogWindow()
        self._elapsed_before = 0.0
        self._session_start: float | None = None

    # ------------------------------------------------------------------------------ bookkeeping
    @property
    def epoch(self) -> float:
        """Passes over the training data so far (batches seen / batches per epoch)."""
        return self.batches_seen / len(self.train_loader)

    @property
    def elapsed(self) -> float:
        """Seconds of training, over every session of the run."""
        running = 0.0 if self._session_start is None else time.perf_counter() - self._session_start
        return self._elapsed_before + running

    # ------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """Write output_dir/checkpoints/step-<step>/ atomically, point `latest` at it, keep the newest
        `keep_last`. Returns the folder (entrenar.train.resume)."""
        return save_trainer_checkpoint(self)

    def resume(self, path: str | os.PathLike[str]) -> Path:
        """Restore the run from a checkpoint: a step-N folder, or an output or checkpoints folder (its
        `latest`). ValueError naming what does not match this trainer's model, optimizer, scheduler or
        loader. Returns the checkpoint folder (entrenar.train.resume)."""
        return resume_trainer(self, path)

    # ------------------------------------------------------------------------------ steps
    def _call_loss(self, batch: Any) -> tuple[Tensor, Mapping[str, Any]]:
        out = self.loss_fn(self.model, batch)
        if not (
            isinstance(out, tuple)
            and len(out) == 2
            and isinstance(out[0], Tensor)
            and isinstance(out[1], Mapping)
        ):
            raise TypeError("loss_fn(model, batch) must return (loss Tensor, dict of metric sums)")
        return out

    def _stream(self) -> Iterator[Any]:
        """Training batches, epoch after epoch."""
        while True:
            empty = True
            for batch in self.train_loader:
                empty = False
                yield batch
            if empty:
                raise ValueError("Trainer: the train loader yielded no batches for an epoch")

    def _train_step(self, stream: Iterator[Any]) -> float:
        """One optimizer step; its loss (the mean of its micro-batch losses)."""
        t0 = time.perf_counter()
        accum = self.config.grad_accumulation_steps
        self.model.train()
        self.optimizer.zero_grad()
        losses: list[float] = []
        step_sums: dict[str, Any] = {}
        samples = 0
        for _ in range(accum):
            part = self.dp.shard(next(stream))  # one process: the batch, weight 1
            loss, sums = self._call_loss(part.batch)
            losses.append(part.weight * float(loss.item()))
            scale = part.weight / accum
            (loss if scale == 1.0 else loss * scale).backward()
            add_sums(step_sums, part.scaled(sums))
            samples += part.samples
            self.batches_seen += 1
        self.dp.reduce_gradients(self._params)
        losses, step_sums, samples = self.dp.reduce_values(losses, step_sums, samples)
        self._window.samples += samples
        step_loss = math.fsum(losses) / accum
        lr = float(self.optimizer.param_groups[0]["lr"])
        w = self._window
        bad = first_nonfinite_grad(self._param_names, [p.grad for p in self._params])
        if bad is not None or not math.isfinite(step_loss):
            self._nonfinite(step_loss, bad)  # raises, unless nonfinite="skip"
            self.skipped_steps += 1
            w.skipped += 1
        else:
            grad_norm = None
            if self.config.max_grad_norm is not None:
                grad_norm = self.dp.clip_grad_norm(self._params, self.config.max_grad_norm)
            self.optimizer.step()
            add_sums(w.sums, step_sums)
            w.loss_sum += step_loss
            w.steps += 1
            w.grad_norm = grad_norm
        if self.scheduler is not None:
            self.scheduler.step()
        self.step += 1
        w.seconds += time.perf_counter() - t0
        w.lr = lr
        return step_loss

    def _nonfinite(self, loss: float, param: str | None) -> None:
        """Stop (the default) with a message naming the step, the loss and the first parameter whose
        gradient is not finite; with nonfinite="skip" return, and the step makes no update."""
        if self.config.nonfinite == "skip":
            self.optimizer.zero_grad()
            return
        grads = "all gradients are finite" if param is None else f"the gradient of {param!r} is not finite"
        kept = (
            f"the last good checkpoint is {self.last_checkpoint}"
            if self.last_checkpoint is not None
            else "no checkpoint was written yet"
        )
        raise FloatingPointError(
            f"step {self.step + 1}: the loss is {loss!r} and {grads} (the first in optimizer order); "
            f"stopping: {kept}. Lower the lr or clip gradients, or set nonfinite='skip' to skip such steps"
        )

    # ------------------------------------------------------------------------------ evaluation
    def evaluate(self, loader: Iterable[Any] | None = None) -> dict[str, float]:
        """Metrics of one pass over `loader` (default the eval loader) in eval mode without gradients:
        `metrics_fn` of the summed `sums`, with "loss" the mean batch loss when that gives none."""
        return self._evaluate(loader)[0]

    def _evaluate(self, loader: Iterable[Any] | None) -> tuple[dict[str, float], int]:
        loader = self.eval_loader if loader is None else loader
        if loader is None:
            raise ValueError("Trainer.evaluate: no loader given and no eval_loader")
        was_training = self.model.training
        self.model.eval()
        sums: dict[str, Any] = {}
        losses = []
        samples = 0
        try:
            with no_grad():
                for batch in loader:
                    part = self.dp.shard(batch)
                    loss, batch_sums = self._call_loss(part.batch)
                    losses.append(part.weight * float(loss.item()))
                    add_sums(sums, part.scaled(batch_sums))
                    samples += part.samples
        finally:
            self.model.train(was_training)
        losses, sums, samples = self.dp.reduce_values(losses, sums, samples)
        if not losses:
            raise ValueError("Trainer.evaluate: the loader yielded no batches")
        return {"loss": math.fsum(losses) / len(losses), **self.metrics_fn(sums)}, samples

    def _event(self, split: str, metrics: Mapping[str, float], **extra: Any) -> dict[str, Any]:
        return {"step": self.step, "epoch": self.epoch, "split": split, **metrics, **extra}

    def _log_train(self, log: MetricsLog) -> None:
        w = self._window
        metrics = {**self.metrics_fn(w.sums), "loss": w.loss_sum / w.steps if w.steps else math.nan}
        metrics = {"loss": metrics.pop("loss"), "lr": w.lr, **metrics}
        extra: dict[str, Any] = {} if w.grad_norm is None else {"grad_norm": w.grad_norm}
        if self.config.nonfinite == "skip":
            extra["skipped_steps"] = self.skipped_steps
        speed = w.samples / w.seconds if w.seconds > 0 else 0.0
        log.append(self._event("train", metrics, **extra, samples_per_s=speed, elapsed=self.elapsed))
        self.last_metrics["train"] = {k: v for k, v in metrics.items() if k != "lr"}
        self._window = LogWindow()

    def _log_eval(self, log: MetricsLog) -> None:
        assert self.eval_loader is not None
        t0 = time.perf_counter()
        metrics, samples = self._evaluate(None)
        speed = samples / max(time.perf_counter() - t0, 1e-12)
        log.append(self._event("eval", metrics, samples_per_s=speed, elapsed=self.elapsed))
        self.last_metrics["eval"] = dict(metrics)
        self.last_eval_step = self.step
        rule = self._tracked
        if rule.metric not in metrics:
            raise KeyError(
                f"the tracked eval metric {rule.metric!r} is not among the eval metrics {sorted(metrics)}"
            )
        if rule.improves(metrics[rule.metric], self.best_value):
            self.best_value, self.best_step, self.bad_evals = float(metrics[rule.metric]), self.step, 0
        else:
            self.bad_evals += 1
            es = self.config.early_stopping
            if es is not None and self.bad_evals >= es.patience:
                self.stopped_early = True

    # ------------------------------------------------------------------------------ the run
    def _open_log(self) -> MetricsLog:
        out = self.config.path
        out.mkdir(parents=True, exist_ok=True)
        resume = self.config.resume
        if resume is not False and self.resumed_from is None:
            self.resume(out if resume is True else resume)
        log = MetricsLog(out / METRICS_FILE)
        if self.resumed_from is not None or self.step > 0:  # a resumed run, or this trainer's own
            if self.dp.is_writer:
                log.truncate_after(self.step)
        elif log.path.exists() or (out / CHECKPOINTS_DIR / LATEST).exists():
            raise FileExistsError(
                f"{out} holds a previous run ({METRICS_FILE} or {CHECKPOINTS_DIR}/{LATEST}): "
                "pass resume=True to continue it, or choose another output_dir"
            )
        return log if self.dp.is_writer else MetricsLog(os.devnull)  # data parallel: rank 0 writes

    def _stop_interrupted(self) -> None:
        """After Ctrl-C: checkpoint this step (the open log window with it), raise KeyboardInterrupt."""
        if self.last_save_step != self.step:
            self.save_checkpoint()
        raise KeyboardInterrupt(
            f"interrupted at step {self.step}; the checkpoint {self.last_checkpoint} holds it: "
            "continue with resume=True (entrenar train CONFIG --resume)"
        )

    def train(self) -> TrainResult:
        """Run to the configured number of steps (or early stop); see the module docstring."""
        cfg = self.config
        log = self._open_log()
        self.dp.start(self.model, self.optimizer, self._generators)
        total = cfg.total_steps(len(self.train_loader))
        stream = self._stream()
        bar = tqdm(
            total=total,
            initial=min(self.step, total),
            disable=not (cfg.progress and self.dp.is_writer),
            file=sys.stderr,
            desc="train",
            unit="step",
            dynamic_ncols=True,
        )
        self._session_start = time.perf_counter()
        try:
            self._interrupts = Interrupts().__enter__()
            while self.step < total and not self.stopped_early:
                loss = self._train_step(stream)
                bar.update(1)
                speed = self._window.samples / max(self._window.seconds, 1e-12)
                bar.set_postfix(
                    loss=f"{loss:.4f}", lr=f"{self._window.lr:.3g}", samples_s=f"{speed:.1f}", refresh=False
                )
                if self.step % cfg.log_every == 0:
                    self._log_train(log)
                if self.eval_loader is not None and cfg.eval_every and self.step % cfg.eval_every == 0:
                    self._log_eval(log)
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.save_checkpoint()
                if self._interrupts.requested:
                    self._stop_interrupted()
            if self._window.steps or self._window.skipped:
                self._log_train(log)
            if self.eval_loader is not None and self.last_eval_step != self.step:
                self._log_eval(log)
            if self.last_save_step != self.step:
                self.save_checkpoint()
        finally:
            if self._interrupts is not None:
                self._interrupts.__exit__(None, None, None)
                self._interrupts = None
            bar.close()
            self._elapsed_before, self._session_start = self.elapsed, None
        plot = plot_metrics(log.path, cfg.path / PLOT_FILE) if cfg.plot and self.dp.is_writer else None
        result = TrainResult(
            steps=self.step,
            epochs=self.epoch,
            stopped_early=self.stopped_early,
            best_metric=self._tracked.metric if self.best_value is not None else None,
            best_value=self.best_value,
            best_step=self.best_step,
            final_metrics={k: dict(v) for k, v in self.last_metrics.items()},
            output_dir=cfg.path,
            metrics_path=log.path,
            plot_path=plot,
            checkpoint=self.last_checkpoint,
            elapsed=self.elapsed,
        )
        if cfg.progress and self.dp.is_writer:
            print(result.summary(), file=sys.stderr)
        return result
