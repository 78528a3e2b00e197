"""One training run of a small MLP or GPT, built identically on every call: in-process (one process) or
as each rank of `mpiexec -n N python dp_worker.py ...` (data parallel over `world()`).

    python dp_worker.py '[{"kind": "mlp", "dtype": "float64", "out": OUT, "steps": 6}, ...]' REPORT_DIR

Each job is a Trainer run; rank 0 writes OUT/metrics.jsonl and OUT/checkpoints/, every rank checks
at the end that its parameters equal rank 0's bit for bit (and with "zero" writes its optimizer
memory). Each rank writes REPORT_DIR/report-rank<r>.json: its collective checks and its sockets.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from sockets import inet_sockets

from entrenar import functional as F
from entrenar.data.loaders import EpochLoader, LMLoader
from entrenar.distributed import Communicator, MPIComm, ZeroOptimizer, chunk_bounds, world
from entrenar.nn import Linear, Module
from entrenar.nn.gpt import GPT, GPTConfig
from entrenar.optim import AdamW, Optimizer, WarmupCosineLR
from entrenar.tensor import Tensor
from entrenar.train import Trainer, TrainerConfig, classification_loss, lm_loss

BATCH = 9  # odd: two ranks take 4 and 5 items; the epoch's last batch (7 of 61) 3 and 4


class PointsLoader(EpochLoader):
    """Batches {x (B, 6), labels (B,)} of fixed random points with 3 classes."""

    def __init__(self, n: int, dtype: Any, batch_size: int, shuffle: bool = True) -> None:
        rng = np.random.default_rng(5)
        self.x = rng.standard_normal((n, 6)).astype(dtype)
        self.y = (self.x[:, 0] + self.x[:, 1] * self.x[:, 2] > 0).astype(np.int64) + (self.x[:, 3] > 1)
        super().__init__("PointsLoader", n, batch_size, shuffle, 3, False)

    def _batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {"x": self.x[indices], "labels": self.y[indices]}


class MLP(Module):
    """x (B, 6) -> Linear -> tanh -> Linear -> logits (B, 3)."""

    def __init__(self, dtype: Any, seed: int) -> None:
        super().__init__()
        rng = np.random.default_rng(seed)
        self.hidden = Linear(6, 32, dtype=dtype, generator=rng)
        self.out = Linear(32, 3, dtype=dtype, generator=rng)

    def forward(self, x: Any) -> Tensor:
        return self.out(F.tanh(self.hidden(Tensor(x))))


def build(job: dict[str, Any], comm: Communicator, seed: int) -> Trainer:
    """The model, loaders, optimizer (sharded with "zero"), schedule and Trainer of a job; the schedule
    spans "steps", the run stops at "stop" (default "steps"). `seed` differs per rank in the 2-rank
    runs, so only the broadcast from rank 0 can make the ranks' models equal."""
    kind, dtype, steps = job["kind"], job["dtype"], job["steps"]
    dt = np.dtype(dtype)
    cfg = TrainerConfig(
        output_dir=job["out"], max_steps=job.get("stop", steps), grad_accumulation_steps=2, max_grad_norm=1.0,
        eval_every=3, save_every=2, log_every=1, progress=False, plot=False, resume=job.get("resume", False),
        keep_last=10,
    )  # fmt: skip
    model: Module
    if kind == "mlp":
        model = MLP(dt, seed)
        train: Any = PointsLoader(61, dt, BATCH)
        val: Any = PointsLoader(23, dt, 10, shuffle=False)
        loss_fn = classification_loss
    else:
        config = GPTConfig(vocab_size=17, block_size=8, n_layer=1, n_head=2, n_embd=16, d_ff=32)
        model = GPT(config, dtype=dt, generator=np.random.default_rng(seed))
        tokens = np.random.default_rng(9).integers(0, 17, size=8 * 40 + 1)
        train, val = LMLoader(tokens, 8, BATCH, seed=1), LMLoader(tokens[:97], 8, 5, shuffle=False)
        loss_fn = lm_loss
    opt: Optimizer = AdamW(list(model.parameters()), lr=2e-2, weight_decay=0.01)
    if job.get("zero"):
        opt = ZeroOptimizer(opt, comm)
    sched = WarmupCosineLR(opt, warmup_steps=2, total_steps=steps)
    return Trainer(model, loss_fn, opt, train, scheduler=sched, eval_loader=val, config=cfg, comm=comm)


def run(job: dict[str, Any], comm: Communicator) -> Trainer:
    """Train one job {kind, dtype, out, steps, resume?, zero?, fail_rank?, fail_step?}; the trainer."""
    out = Path(job["out"])
    trainer = build(job, comm, comm.rank)
    if job.get("fail_rank") == comm.rank:
        inner = trainer.loss_fn

        def failing(model: Module, batch: Any) -> Any:
            if trainer.step == job["fail_step"]:
                (out / "failed-at").write_text(repr(time.time()))
                raise RuntimeError(f"deliberate failure on rank {comm.rank} at step {trainer.step}")
            return inner(model, batch)

        trainer.loss_fn = failing
    trainer.train()
    if comm.size > 1:  # every rank ends with rank 0's parameters, bit for bit
        for n, p in trainer.model.named_parameters():
            theirs = p.data.ravel().copy()
            comm.broadcast(theirs, root=0)
            if not np.array_equal(theirs, p.data.ravel()):
                raise AssertionError(f"rank {comm.rank}: {n} differs from rank 0's")
    if job.get("zero"):
        memory = trainer.optimizer.memory()  # type: ignore[attr-defined]
        (out / f"memory-rank{comm.rank}.json").write_text(json.dumps(memory))
    return trainer


def check_comm(comm: Communicator) -> dict[str, Any]:
    """Each collective against what it must give on `comm.size` ranks; a report of pass/fail."""
    r, n = comm.rank, comm.size
    report: dict[str, Any] = {}
    a = np.arange(7, dtype=np.float64) * (r + 1)
    comm.allreduce(a)
    report["allreduce_sum"] = bool(np.array_equal(a, np.arange(7) * sum(range(1, n + 1))))
    b = np.full(5, float(r + 1), dtype=np.float32)
    comm.allreduce(b, op="mean")
    report["allreduce_mean"] = bool(np.allclose(b, sum(range(1, n + 1)) / n))
    c = np.full(3, float(r), dtype=np.float64) + 10
    comm.broadcast(c, root=n - 1)
    report["broadcast"] = bool(np.array_equal(c, np.full(3, n - 1 + 10.0)))
    d = np.arange(11, dtype=np.float64) + r
    mine = comm.reduce_scatter(d)
    lo, hi = chunk_bounds(11, n, r)
    report["reduce_scatter"] = bool(np.array_equal(mine, n * np.arange(lo, hi) + sum(range(n))))
    full = np.empty(11, dtype=np.float64)
    comm.allgather(mine.copy(), out=full)
    report["allgather"] = bool(np.array_equal(full, n * np.arange(11) + sum(range(n))))
    checked = MPIComm(check_sizes=True)
    try:
        checked.allreduce(np.zeros(4 + r, dtype=np.float64))
        report["size_mismatch"] = "no error"
    except ValueError as exc:
        report["size_mismatch"] = str(exc)
    comm.barrier()
    return report


def main(jobs: list[dict[str, Any]], report_dir: Path) -> None:
    comm = world()
    report: dict[str, Any] = {"size": comm.size, "comm": check_comm(comm) if comm.size > 1 else {}}
    for job in jobs:
        run(job, comm)
    report["sockets"] = inet_sockets()
    report["launcher_sockets"] = inet_sockets(os.getppid())
    (report_dir / f"report-rank{comm.rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(json.loads(sys.argv[1]), Path(sys.argv[2]))
