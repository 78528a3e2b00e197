"""The fine-tuning job: config -> model and data -> linear probe (BEFORE) -> Trainer -> AFTER, files.

    result = run_job(load_config(None))          # what `entrenar finetune` runs
    result.before["accuracy"]["test"], result.after["test"]["accuracy"], result.run_dir

Order of work, so that bad input fails before anything is written or removed: resolve and check the
model folder, the run directory (exists? --resume / --overwrite), the data (labels, classes) and the
tokenizer; only then is an old run removed (--overwrite) and the new one started. The run directory
layout is in `entrenar.finetune.rundir`.

Parameters and rates: the adapters' A and B matrices train with optimizer.lr, the head with
optimizer.head_lr, both with weight_decay; everything else is frozen (a 4-bit base has no float
weights at all). The rate follows linear warmup from 0 over schedule.warmup of the steps, then the
schedule's decay. A resumed run rebuilds the same model, loaders, optimizer and scheduler from the
run's saved config and lets the Trainer restore their state from the latest checkpoint.

Data parallel (`execute_job(..., comm=world())`, as `mpiexec -n 2 entrenar train` does): every rank
prepares the same job and trains on its shard of each batch (see `entrenar.distributed`); rank 0
alone writes the run directory, and the others wait for it before they read it.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from entrenar.config import MINILM, RunConfig, config_diff, dump_config
from entrenar.distributed import Communicator, SingleProcess
from entrenar.finetune.data import BucketedLoader, Splits, count_truncated, load_splits
from entrenar.finetune.model import HEAD_FILE, SequenceClassifier, build_classifier, write_head
from entrenar.finetune.probe import ProbeResult, run_probe
from entrenar.finetune.rundir import (
    ADAPTER_DIR,
    CONFIG_FILE,
    PROBE_FILE,
    RESULTS_FILE,
    RunError,
    effective_max_length,
    read_json_file,
    resolve_model_dir,
    run_config,
    write_json_file,
)
from entrenar.io import atomic_write_text
from entrenar.lora import PeftModel
from entrenar.models import load_tokenizer
from entrenar.optim import SGD, Adam, AdamW, LambdaLR, Optimizer, WarmupCosineLR
from entrenar.optim.lr_scheduler import LRScheduler
from entrenar.train import EarlyStopping, Trainer, TrainerConfig, TrainResult, classification_loss
from entrenar.train.checkpoint import CHECKPOINTS_DIR, LATEST
from entrenar.train.trainer import METRICS_FILE

if TYPE_CHECKING:
    from entrenar.finetune.causal import PreparedCausalJob

__all__ = [
    "JobResult",
    "PreparedJob",
    "build_optimizer",
    "build_scheduler",
    "execute_job",
    "peak_memory_bytes",
    "prepare_job",
    "resolve_paths",
    "run_job",
    "trainer_config",
]

Log = Callable[[str], None]
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"  # the adapter's base_model_name_or_path
# keys a resumed run may change: they alter what is shown, not what is computed
RESUME_MAY_CHANGE = ("training.progress", "output.plot")


@dataclass(frozen=True)
class JobResult:
    """What a run did: the probe's accuracies (None when off), the final validation and test metrics,
    the Trainer's result, wall time of the job and peak resident memory (VmHWM; None off Linux)."""

    run_dir: Path
    before: dict[str, Any] | None
    after: dict[str, dict[str, float]]
    train: TrainResult
    seconds: dict[str, float]
    peak_memory_bytes: int | None


def peak_memory_bytes() -> int | None:
    """The process's peak resident set size (VmHWM of /proc/self/status), or None where unavailable."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        return None
    return None


def _absolute(path: str | None) -> str | None:
    return None if path is None else os.path.abspath(os.path.expanduser(path))


def resolve_paths(config: RunConfig) -> RunConfig:
    """`config` with model.path (unless "minilm"), the data files and output.dir made absolute, so
    that the saved config means the same from any working directory."""
    model = config.model.model_copy(
        update={"path": config.model.path if config.model.path == MINILM else _absolute(config.model.path)}
    )
    d = config.data
    data = d.model_copy(
        update={"train": _absolute(d.train), "validation": _absolute(d.validation), "test": _absolute(d.test)}
    )
    output = config.output.model_copy(update={"dir": _absolute(config.output.dir)})
    return config.model_copy(update={"model": model, "data": data, "output": output})


def _is_run_dir(path: Path) -> bool:
    return any((path / name).exists() for name in (CONFIG_FILE, METRICS_FILE, CHECKPOINTS_DIR))


def _check_run_dir(config: RunConfig, *, overwrite: bool, resume: bool) -> tuple[Path, RunConfig]:
    """(run directory, the config to run); RunError when the directory's state does not allow it."""
    run_dir = Path(config.output.dir) / config.output.name
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"the run directory {run_dir} is a file; choose another output.name or output.dir")
    present = run_dir.is_dir() and any(run_dir.iterdir())
    if resume:
        if not present:
            raise RunError(f"nothing to resume: the run directory {run_dir} does not exist or is empty")
        saved = run_config(run_dir)
        differ = [k for k in config_diff(saved, config) if k not in RESUME_MAY_CHANGE]
        if differ:
            raise RunError(
                f"--resume continues {run_dir} as it was configured; the config given differs from its "
                f"{CONFIG_FILE} in: {', '.join(differ)}. Drop those changes, or start a new run "
                "(another output.name, or --overwrite)"
            )
        if not (run_dir / CHECKPOINTS_DIR / LATEST).is_file():
            raise RunError(
                f"{run_dir} has no checkpoint to resume from (it stopped before its first one); "
                "start it again with --overwrite"
            )
        training = saved.training.model_copy(update={"progress": config.training.progress})
        output = saved.output.model_copy(update={"plot": config.output.plot})
        return run_dir, saved.model_copy(update={"training": training, "output": output})
    if present and not overwrite:
        raise RunError(
            f"the run directory {run_dir} already exists: pass --resume to continue that run, --overwrite "
            "to replace it, or choose another name (output.name=NEW)"
        )
    if present and not _is_run_dir(run_dir):
        raise RunError(
            f"{run_dir} exists and is not a run directory (no {CONFIG_FILE}, {METRICS_FILE} or "
            f"{CHECKPOINTS_DIR}/): --overwrite does not remove it; choose another output.name"
        )
    return run_dir, config


# ----------------------------------------------------------------------------------- optimization
def build_optimizer(config: RunConfig, model: SequenceClassifier) -> Optimizer:
    """Two parameter groups: the adapters (optimizer.lr) and the head (optimizer.head_lr or lr)."""
    o = config.optimizer
    head_ids = {id(p) for p in model.classifier.parameters()}
    adapters = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    head = [p for p in model.classifier.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [
        {"params": adapters, "lr": o.lr},
        {"params": head, "lr": o.head_lr if o.head_lr is not None else o.lr},
    ]
    groups = [g for g in groups if g["params"]]
    if o.name == "sgd":
        return SGD(groups, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    kind = AdamW if o.name == "adamw" else Adam
    return kind(groups, lr=o.lr, betas=(o.betas[0], o.betas[1]), eps=o.eps, weight_decay=o.weight_decay)


def build_scheduler(config: RunConfig, optimizer: Optimizer, total_steps: int) -> LRScheduler:
    """Linear warmup from 0 over the warmup steps, then linear / cosine decay to 0, or constant."""
    s = config.schedule
    warmup = s.warmup_steps if s.warmup_steps is not None else round(s.warmup * total_steps)
    warmup = min(warmup, total_steps)
    if s.name == "constant":
        return LambdaLR(optimizer, lambda t: 1.0 if warmup == 0 else min(1.0, t / warmup))
    return WarmupCosineLR(
        optimizer, warmup, max(total_steps, warmup), anneal_strategy="linear" if s.name == "linear" else "cos"
    )


def trainer_config(config: RunConfig, run_dir: Path, resume: bool) -> TrainerConfig:
    """The Trainer's settings from the `training` and `output` sections (max_steps wins over epochs)."""
    t = config.training
    es = t.early_stopping
    return TrainerConfig(
        output_dir=run_dir,
        max_steps=t.max_steps,
        epochs=None if t.max_steps is not None else t.epochs,
        grad_accumulation_steps=t.grad_accumulation_steps,
        max_grad_norm=t.max_grad_norm,
        eval_every=t.eval_every,
        save_every=t.save_every,
        keep_last=t.keep_last,
        log_every=t.log_every,
        seed=t.seed,
        early_stopping=None if es is None else EarlyStopping(es.metric, es.mode, es.patience, es.min_delta),
        progress=t.progress,
        plot=config.output.plot,
        resume=resume,
        extra={"run_config": config.model_dump(mode="json")},
    )


# ----------------------------------------------------------------------------------- the job
@dataclass
class PreparedJob:
    """A run with every input checked and loaded (`prepare_job`), ready for `execute_job`."""

    run_dir: Path
    config: RunConfig
    model_dir: Path
    splits: Splits
    max_length: int
    tokenizer: Any
    model: SequenceClassifier
    train_loader: BucketedLoader
    val_loader: BucketedLoader | None
    test_loader: BucketedLoader | None
    overwrite: bool
    resume: bool
    seconds: dict[str, float]


def _loader(
    config: RunConfig, tokenizer: Any, examples: list[Any], max_length: int, *, train: bool
) -> BucketedLoader | None:
    if not examples:
        return None
    d = config.data
    return BucketedLoader(
        examples,
        tokenizer,
        batch_size=d.batch_size if train else d.eval_batch_size,
        max_length=max_length,
        shuffle=train,
        seed=d.seed,
        bucket_batches=d.bucket_batches,
    )


def prepare_job(
    config: RunConfig, *, overwrite: bool = False, resume: bool = False, log: Log = print
) -> PreparedJob | PreparedCausalJob:
    """Check and load everything a run needs, writing nothing: the model folder, the run directory
    (see `_check_run_dir`), the data and its tokenization, the model. Errors here are bad input.
    task "causal_lm" is the decoder language-model job of `entrenar.finetune.causal`."""
    if config.task == "causal_lm":
        from entrenar.finetune.causal import prepare_causal_job

        return prepare_causal_job(config, overwrite=overwrite, resume=resume, log=log)
    t0 = time.perf_counter()
    config = resolve_paths(config)
    model_dir = resolve_model_dir(config.model.path)
    run_dir, config = _check_run_dir(config, overwrite=overwrite, resume=resume)
    splits = load_splits(config.data)
    max_length, note = effective_max_length(config, model_dir)
    if note:
        log(note)
    tokenizer = load_tokenizer(model_dir)
    for name in ("train", "validation", "test"):
        texts = [e.text for e in splits.split(name)]
        cut, longest = count_truncated(tokenizer, texts, max_length)
        if cut:
            log(
                f"note: {cut:,d} of {len(texts):,d} {name} sentences are longer than {max_length} tokens "
                f"(the longest has {longest}) and are truncated to {max_length}"
            )
    loaders = [
        _loader(config, tokenizer, splits.split(name), max_length, train=name == "train")
        for name in ("train", "validation", "test")
    ]
    train_loader = loaders[0]
    assert train_loader is not None  # load_splits guarantees training examples
    log(
        f"data: {splits.source}: {len(splits.train):,d} train / {len(splits.validation):,d} validation / "
        f"{len(splits.test):,d} test sentences, {len(splits.label_names)} labels "
        f"({', '.join(splits.label_names)})"
    )
    t1 = time.perf_counter()
    base_name = MINILM_HUB_ID if config.model.path == MINILM else config.model.path
    model = build_classifier(config, model_dir, len(splits.label_names), base_name=base_name)
    trainable = sum(q.data.size for q in model.parameters() if q.requires_grad)
    s = config.lora
    log(
        f"model: {config.model.path} ({model_dir}), LoRA r={s.r} on {', '.join(s.target_modules)}, "
        f"base {s.quantize or 'float32'}{' + double quant' if s.quantize and s.double_quant else ''}, "
        f"{config.model.pooling} pooling; {trainable:,d} trainable parameters"
    )
    seconds = {"prepare": t1 - t0, "build_model": time.perf_counter() - t1}
    return PreparedJob(
        run_dir, config, model_dir, splits, max_length, tokenizer, model, train_loader, loaders[1],
        loaders[2], overwrite, resume, seconds,
    )  # fmt: skip


def _probe(p: PreparedJob, log: Log, writer: bool = True) -> dict[str, Any] | None:
    """The linear probe (BEFORE), or its saved result on resume; the head keeps the probe's weights
    when probe.init_head, else its fresh ones."""
    pr = p.config.training.probe
    if not pr.enabled:
        return None
    path = p.run_dir / PROBE_FILE
    if p.resume and path.is_file():
        saved: dict[str, Any] = read_json_file(path)
        return saved
    model = p.model
    fresh = {k: v.copy() for k, v in model.classifier.state_dict().items()}
    train = p.splits.train[: pr.max_train] if pr.max_train is not None else p.splits.train
    train_loader = _loader(p.config, p.tokenizer, train, p.max_length, train=False)
    assert train_loader is not None
    split, eval_loader = ("test", p.test_loader) if p.test_loader else ("validation", p.val_loader)
    evaluate_on = {} if eval_loader is None else {split: eval_loader.epoch_batches(0)}
    encoded = len(train) + (0 if eval_loader is None else eval_loader.num_items)
    log(f"linear probe: encoding {encoded:,d} sentences ({len(train):,d} train, {split})")
    result: ProbeResult = run_probe(
        model, train_loader.epoch_batches(0), evaluate_on, steps=pr.steps, lr=pr.lr, l2=pr.l2
    )
    if not pr.init_head:
        model.classifier.load_state_dict(fresh)
    before = {**result.to_dict(), "train_examples": len(train)}
    if writer:
        write_json_file(path, before)
    return before


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"



def open_run_dir(
    config: RunConfig, run_dir: Path, *, overwrite: bool, resume: bool, log: Log, comm: Communicator
) -> bool:
    """Prepare the run directory on rank 0 (remove the previous run under --overwrite, create it,
    write the config unless resuming) while the other ranks wait; True on the rank that writes."""
    writer = comm.rank == 0
    if writer and overwrite and not resume and run_dir.is_dir() and any(run_dir.iterdir()):
        shutil.rmtree(run_dir)
        log(f"removed the previous run in {run_dir} (--overwrite)")
    if writer:
        run_dir.mkdir(parents=True, exist_ok=True)
    if writer and not resume:
        atomic_write_text(run_dir / CONFIG_FILE, dump_config(config))
    comm.barrier()  # the others look at the run directory only once rank 0 has prepared it
    return writer

def execute_job(
    p: PreparedJob | PreparedCausalJob, log: Log = print, comm: Communicator | None = None
) -> JobResult:
    """Run a prepared job: remove the old run (--overwrite), probe, train, evaluate, write the files
    (`comm`: data parallel over its ranks, rank 0 writing)."""
    if not isinstance(p, PreparedJob):
        from entrenar.finetune.causal import execute_causal_job

        return execute_causal_job(p, log, comm)
    t_start = time.perf_counter()
    config, run_dir, model = p.config, p.run_dir, p.model
    seconds = dict(p.seconds)
    comm = SingleProcess() if comm is None else comm
    writer = open_run_dir(config, run_dir, overwrite=p.overwrite, resume=p.resume, log=log, comm=comm)

    t0 = time.perf_counter()
    before = _probe(p, log, writer)
    seconds["probe"] = time.perf_counter() - t0
    if before is not None:
        shown = ", ".join(f"{k} {_pct(v)}" for k, v in before["accuracy"].items()) or "no split to measure"
        log(f"accuracy BEFORE fine-tuning (linear probe on the frozen encoder): {shown}")

    optimizer = build_optimizer(config, model)
    tc = trainer_config(config, run_dir, p.resume)
    scheduler = build_scheduler(config, optimizer, tc.total_steps(len(p.train_loader)))
    trainer = Trainer(
        model,
        classification_loss,
        optimizer,
        p.train_loader,
        scheduler=scheduler,
        eval_loader=p.val_loader,
        config=tc,
        comm=comm,
    )
    t0 = time.perf_counter()
    result = trainer.train()
    seconds["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    after: dict[str, dict[str, float]] = {}
    if p.val_loader is not None:
        after["validation"] = dict(result.final_metrics.get("eval") or trainer.evaluate(p.val_loader))
    if p.test_loader is not None:
        after["test"] = trainer.evaluate(p.test_loader)
    seconds["evaluate"] = time.perf_counter() - t0
    encoder = model.encoder
    assert isinstance(encoder, PeftModel)  # build_classifier wraps the encoder
    seconds["total"] = time.perf_counter() - t_start + p.seconds["prepare"] + p.seconds["build_model"]
    peak = peak_memory_bytes()
    if not writer:
        return JobResult(run_dir, before, after, result, seconds, peak)
    encoder.save_pretrained(run_dir / ADAPTER_DIR)
    write_head(model, run_dir / HEAD_FILE, p.splits.label_names)
    write_json_file(
        run_dir / RESULTS_FILE,
        {
            "before": before,
            "after": after,
            "steps": result.steps,
            "epochs": result.epochs,
            "stopped_early": result.stopped_early,
            "seconds": seconds,
            "peak_memory_bytes": peak,
            "ranks": comm.size,  # data-parallel processes (peak memory is rank 0's)
        },
    )
    log(
        f"accuracy AFTER fine-tuning: validation {_pct(after.get('validation', {}).get('accuracy'))}, "
        f"test {_pct(after.get('test', {}).get('accuracy'))}"
    )
    mem = "n/a" if peak is None else f"{peak / 2**20:,.0f} MiB"
    log(f"time: {seconds['total']:.1f} s (training {seconds['train']:.1f} s); peak memory (VmHWM) {mem}")
    files = f"{ADAPTER_DIR}/, {HEAD_FILE}, {METRICS_FILE}" + (", plot.png" if config.output.plot else "")
    log(f"run directory: {run_dir} ({files})")
    return JobResult(run_dir, before, after, result, seconds, peak)


def run_job(
    config: RunConfig, *, overwrite: bool = False, resume: bool = False, log: Log = print
) -> JobResult:
    """`prepare_job` then `execute_job`: run (or resume) the fine-tuning `config` describes."""
    return execute_job(prepare_job(config, overwrite=overwrite, resume=resume, log=log), log)
