"""Data parallelism: every rank holds the whole model, takes its shard of each global batch, and all
ranks average their gradients so that they make the same optimizer step.

    dp = DataParallel(world())                        # SingleProcess: every method is the identity
    dp.start(model, params, generators)               # same parameters everywhere (rank 0's)
    part = dp.shard(global_batch)                     # Shard(batch, weight, samples)
    loss, sums = loss_fn(model, part.batch)
    (loss * part.weight).backward()
    dp.reduce_gradients(params)                       # grad <- sum over ranks of the weighted grads
    losses, sums, samples = dp.reduce_values(losses, sums, samples)

The sharding rule. A global batch of n items (its first axis) is cut into `size` contiguous parts:
rank r takes items [r n // size, (r + 1) n // size). The parts are disjoint, cover the batch in rank
order, differ in length by at most one, and depend on (n, size, rank) only, so every rank computes
its part of the batch the loader hands every rank alike, and the loader's (epoch, position) state,
saved by rank 0, resumes a run on any number of ranks. When n < size some parts are empty: such a
rank computes on the batch's first item with weight 0 (its gradient, loss and metric sums count
zero), so every rank runs the same collectives.

Why the result equals one process on the whole batch. A loss function returns the MEAN over what it
counts: the labels that are not -100 (classification: the examples; a language model: the tokens),
or the rows when the batch has no "labels". With c_r counted on rank r and c = sum_r c_r, the mean
over the batch is L = sum_r (c_r / c) L_r, so with weights w_r = c_r / c,

    grad L = sum_r w_r grad L_r

which is one all-reduce (sum) of the weighted gradients; the loss is the same sum of w_r L_r, and
metric sums (counts, confusion matrices) simply add. Only the order of floating-point additions
differs from one process: float64 agrees to ~1e-15 per step.

Gradients travel in flat buckets of about `bucket_bytes` (25 MB, as PyTorch DDP): parameters in
optimizer order, grouped by dtype, concatenated into fresh buffers, all-reduced in place, and each
gradient becomes a view of its bucket. The reduction runs after the whole backward pass: on a machine
whose cores all run the backward pass there is no idle core to progress a non-blocking all-reduce,
and bench/bench_dist.py measures communication at a few percent of a step (see its report).

Dropout: each rank r > 0 jumps the model's generators r times (PCG64 `jumped`), so ranks draw
independent masks; rank 0 keeps the stream a single process would draw, and checkpoints save it.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from entrenar.distributed.comm import Communicator, SingleProcess, chunk_bounds
from entrenar.nn.module import Module
from entrenar.optim import Optimizer, clip_grad_norm_
from entrenar.tensor import Tensor

__all__ = [
    "BUCKET_BYTES",
    "DataParallel",
    "Shard",
    "batch_rows",
    "batch_weight",
    "count_items",
    "shard_batch",
]

BUCKET_BYTES = 25 * 2**20
IGNORE_INDEX = -100


def _first(batch: Any) -> Any:
    """The entry that counts a batch's items: "labels", else "input_ids", else the first one."""
    if isinstance(batch, Mapping):
        key = next((k for k in ("labels", "input_ids") if k in batch), None)
        return batch[key] if key is not None else next(iter(batch.values()), None)
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0]
    return batch


def count_items(batch: Any) -> int:
    """Examples in a batch, as the trainer counts them: len() of `_first`, or 1 without a length."""
    try:
        return len(_first(batch))
    except TypeError:
        return 1


def batch_rows(batch: Any) -> int:
    """Items in a batch of arrays: the first-axis length of its `_first` entry."""
    first = _first(batch)
    if not isinstance(first, np.ndarray) or first.ndim == 0:
        raise TypeError(
            "data-parallel sharding needs batches of NumPy arrays (a dict, tuple or list of them, or one "
            f"array) with the items along the first axis; got {type(first).__name__}"
        )
    return int(first.shape[0])


def batch_weight(batch: Any) -> int:
    """What a mean loss over `batch` divides by: its labels other than -100, or else its rows."""
    if isinstance(batch, Mapping) and "labels" in batch:
        return int(np.count_nonzero(np.asarray(batch["labels"]) != IGNORE_INDEX))
    return batch_rows(batch)


def _cut(batch: Any, n: int, lo: int, hi: int) -> Any:
    def part(name: str, value: Any) -> Any:
        if isinstance(value, np.ndarray) and value.ndim >= 1:
            if value.shape[0] != n:
                raise ValueError(
                    f"data-parallel sharding cuts every array of a batch along its first axis; {name} has "
                    f"{value.shape[0]} rows where the batch has {n} items"
                )
            return value[lo:hi]
        return value

    if isinstance(batch, Mapping):
        return {k: part(repr(k), v) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(part(f"entry {i}", v) for i, v in enumerate(batch))
    return part("the batch", batch)


@dataclass(frozen=True)
class Shard:
    """This rank's part of a global batch: `batch` (the batch's first item when the part is empty),
    `weight` = c_r / c (0 when empty), `samples` = its items (0 when empty)."""

    batch: Any
    weight: float
    samples: int

    def scaled(self, sums: Mapping[str, Any]) -> Mapping[str, Any]:
        """Metric sums as this part contributes them: as they are, or zeros of their shape when empty."""
        if self.samples:
            return sums
        return {k: v * 0 for k, v in sums.items()}


def shard_batch(batch: Any, size: int, rank: int) -> Shard:
    """Rank `rank`'s part of `batch` over `size` ranks (the rule in the module docstring)."""
    n = batch_rows(batch)
    if n < 1:
        raise ValueError("data-parallel sharding: the batch has no items")
    lo, hi = chunk_bounds(n, size, rank)
    if lo == hi:
        return Shard(_cut(batch, n, 0, 1), 0.0, 0)
    part = _cut(batch, n, lo, hi)
    total, mine = batch_weight(batch), batch_weight(part)
    if total == 0:  # nothing counted anywhere: weigh by rows so that the weights still sum to 1
        total, mine = n, hi - lo
    return Shard(part, mine / total, hi - lo)


def _signature(items: Sequence[Any]) -> float:
    """A number that equals on two ranks when their `items` (reprs) do (CRC-32, kept exact in float64)."""
    return float(zlib.crc32(repr(list(items)).encode()) % 2**20)


class DataParallel:
    """The data-parallel steps of a training loop over `comm` (see the module docstring)."""

    def __init__(self, comm: Communicator | None = None, *, bucket_bytes: int = BUCKET_BYTES) -> None:
        self.comm: Communicator = SingleProcess() if comm is None else comm
        if not isinstance(self.comm, Communicator):
            raise TypeError(f"DataParallel: comm must be a Communicator, got {type(comm).__name__}")
        if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, int) or bucket_bytes < 1:
            raise ValueError(f"DataParallel: bucket_bytes must be a positive int, got {bucket_bytes!r}")
        self.bucket_bytes = bucket_bytes
        self.active = self.comm.size > 1
        self.zero_chunk: tuple[int, int] | None = None  # set by start() for a ZeroOptimizer
        self.comm_seconds = 0.0  # time spent in collectives (read by benchmarks)

    @property
    def is_writer(self) -> bool:
        """Whether this rank writes files (checkpoints, logs, plots): rank 0."""
        return self.comm.rank == 0

    # ------------------------------------------------------------------------------ start
    def agree(self, what: str, items: Sequence[Any]) -> None:
        """ValueError on every rank unless all ranks pass equal `items` (compared by a checksum)."""
        if not self.active:
            return
        s = _signature(items)
        got = self.comm.allreduce(np.array([s, s * s], dtype=np.float64))
        n = self.comm.size
        if got[0] != n * s or got[1] != n * s * s:  # equal sums of s and s^2: no spread, all equal
            raise ValueError(
                f"data parallel: the ranks differ in {what}; rank {self.comm.rank} has {list(items)[:8]}"
                f"{' ...' if len(items) > 8 else ''}. Every rank must build the same model and optimizer"
            )

    def start(
        self, model: Module, optimizer: Optimizer, generators: Mapping[str, np.random.Generator]
    ) -> None:
        """Check that every rank has the same parameters (names, shapes, dtypes, optimizer order), copy
        rank 0's float parameter values to all, and give each rank its own dropout streams. With a
        `ZeroOptimizer`, gradients are reduce-scattered to its chunks instead of all-reduced."""
        if not self.active:
            return
        params = [p for g in optimizer.param_groups for p in g["params"]]
        self.zero_chunk = getattr(optimizer, "zero_chunk", None)
        named = [(n, p) for n, p in model.named_parameters() if p.data.dtype.kind == "f"]
        self.agree("the model's parameters", [(n, p.shape, str(p.dtype)) for n, p in named])
        self.agree("the optimizer's parameters", [(p.shape, str(p.dtype)) for p in params])
        for group in self._buckets([p for _, p in named]):
            dtype = group[0].data.dtype
            flat = np.concatenate([p.data.ravel() for p in group]).astype(dtype, copy=False)
            self.comm.broadcast(flat, root=0)
            offset = 0
            for p in group:
                p.data[...] = flat[offset : offset + p.data.size].reshape(p.shape)
                offset += p.data.size
        for g in generators.values():
            bits: Any = g.bit_generator  # PCG64 (default_rng) and the other jumpable generators
            if not hasattr(bits, "jumped"):
                raise TypeError(
                    f"data parallel: a model generator uses {type(bits).__name__}, which cannot jump to an "
                    "independent stream per rank; use np.random.default_rng (PCG64)"
                )
            bits.state = bits.jumped(self.comm.rank).state

    # ------------------------------------------------------------------------------ steps
    def shard(self, batch: Any) -> Shard:
        """This rank's part of a global batch; in one process the batch itself with weight 1."""
        if not self.active:
            return Shard(batch, 1.0, count_items(batch))
        return shard_batch(batch, self.comm.size, self.comm.rank)

    def _buckets(self, params: Sequence[Tensor]) -> list[list[Tensor]]:
        """Parameters in order, grouped by dtype, cut into runs of at most `bucket_bytes` (a larger
        parameter gets a bucket of its own)."""
        buckets: list[list[Tensor]] = []
        by_dtype: dict[np.dtype[Any], tuple[list[Tensor], int]] = {}
        for p in params:
            current, nbytes = by_dtype.get(p.data.dtype, ([], 0))
            if current and nbytes + p.data.nbytes > self.bucket_bytes:
                buckets.append(current)
                current, nbytes = [], 0
            current.append(p)
            by_dtype[p.data.dtype] = (current, nbytes + p.data.nbytes)
        buckets.extend(group for group, _ in by_dtype.values() if group)
        return buckets

    def reduce_gradients(self, params: Sequence[Tensor]) -> None:
        """grad <- sum over ranks of grad (the weighted local gradients); a parameter that has no
        gradient on any rank keeps None, one that has it on some ranks counts zeros on the others."""
        if not self.active:
            return
        t0 = time.perf_counter()
        if self.zero_chunk is not None:
            self._reduce_scatter_gradients(params, *self.zero_chunk)
            self.comm_seconds += time.perf_counter() - t0
            return
        present = np.array([p.grad is not None for p in params], dtype=np.float64)
        self.comm.allreduce(present)
        for bucket in self._buckets([p for p, k in zip(params, present, strict=True) if k > 0]):
            dtype = bucket[0].data.dtype
            flat = np.zeros(sum(p.data.size for p in bucket), dtype=dtype)
            offset = 0
            for p in bucket:
                if p.grad is not None:
                    flat[offset : offset + p.data.size] = np.ravel(p.grad)
                offset += p.data.size
            self.comm.allreduce(flat)
            offset = 0
            for p in bucket:  # a fresh buffer per step: each gradient is a view no other array shares
                p.grad = flat[offset : offset + p.data.size].reshape(p.shape)
                offset += p.data.size
        self.comm_seconds += time.perf_counter() - t0

    def _reduce_scatter_gradients(self, params: Sequence[Tensor], lo: int, hi: int) -> None:
        """ZeRO: grads as one flat vector, reduce-scattered; this rank's chunk [lo, hi) holds the sum,
        the rest is zero. A non-finite value in any rank's chunk makes every gradient NaN on every
        rank, so that all ranks take the same decision on the step."""
        flat = np.zeros(sum(p.data.size for p in params), dtype=params[0].data.dtype)
        offset = 0
        for p in params:
            if p.grad is not None:
                flat[offset : offset + p.data.size] = np.ravel(p.grad)
            offset += p.data.size
        self.comm.reduce_scatter(flat)
        flat[:lo] = 0
        flat[hi:] = 0
        bad = np.array([0.0 if np.isfinite(flat[lo:hi]).all() else 1.0])
        if self.comm.allreduce(bad)[0] > 0:
            flat[...] = np.nan
        offset = 0
        for p in params:
            p.grad = flat[offset : offset + p.data.size].reshape(p.shape)
            offset += p.data.size

    def clip_grad_norm(self, params: Sequence[Tensor], max_norm: float) -> float:
        """`clip_grad_norm_` over the gradients of all ranks; with ZeRO each rank holds its chunk
        only, and the squared norms of the chunks add up (one all-reduce)."""
        if self.zero_chunk is None:
            return clip_grad_norm_(list(params), max_norm)
        grads = [p.grad for p in params if p.grad is not None]
        sq = np.array([math.fsum(float(np.dot(g.ravel(), g.ravel())) for g in grads)], dtype=np.float64)
        total = math.sqrt(self.comm.allreduce(sq)[0])
        scale = min(1.0, max_norm / (total + 1e-6))
        if scale < 1.0:
            for g in grads:
                g *= g.dtype.type(scale)
        return total

    def reduce_values(
        self, losses: Sequence[float], sums: Mapping[str, Any], samples: int
    ) -> tuple[list[float], dict[str, Any], int]:
        """Sum weighted losses (elementwise), metric sums (key by key) and sample counts over ranks, in
        one all-reduce of a float64 vector (integer sums stay exact below 2**53)."""
        if not self.active:
            return list(losses), dict(sums), samples
        keys = sorted(sums)
        arrays = [np.asarray(sums[k]) for k in keys]
        layout = [len(losses), *((k, a.shape) for k, a in zip(keys, arrays, strict=True))]
        self.agree("the metric sums of a step", layout)
        flat = np.concatenate(
            [np.array([samples, *losses], dtype=np.float64), *(a.astype(np.float64).ravel() for a in arrays)]
        )
        self.comm.allreduce(flat)
        total_samples, out_losses = round(float(flat[0])), [float(v) for v in flat[1 : 1 + len(losses)]]
        out: dict[str, Any] = {}
        offset = 1 + len(losses)
        for k, a in zip(keys, arrays, strict=True):
            part = flat[offset : offset + a.size]
            offset += a.size
            value = sums[k]
            if isinstance(value, np.ndarray):
                out[k] = (np.rint(part) if a.dtype.kind in "iub" else part).astype(a.dtype).reshape(a.shape)
            elif isinstance(value, (int, np.integer)):
                out[k] = type(value)(round(float(part[0])))
            else:
                out[k] = type(value)(float(part[0]))
        return out_losses, out, total_samples
