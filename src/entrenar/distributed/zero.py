"""ZeRO stage 1: each rank keeps the optimizer state of its shard of the parameters only.

    optimizer = ZeroOptimizer(AdamW(params, lr=1e-3), comm)     # wraps a built SGD / Adam / AdamW
    Trainer(model, loss_fn, optimizer, loader, config=config, comm=comm)
    optimizer.memory()      # {'full_state_bytes', 'local_state_bytes', 'saved_bytes'} on this rank

Partition. The trainable parameters, in optimizer order, form one flat vector of n elements (one
dtype); rank r owns the elements [r n // size, (r + 1) n // size) (`chunk_bounds`), which may cut a
parameter in two. One step, with the Trainer's data parallelism:

    grads:  reduce-scatter of the weighted local gradients     rank r receives the sum of its chunk
    clip:   ||g||^2 = all-reduce of each rank's chunk ||g_r||^2
    update: the wrapped optimizer's rule on the chunk only     (state: 1 / size of the full state)
    params: all-gather of the updated chunks                    every rank has every new parameter

SGD, Adam and AdamW update each element from its own gradient and state alone, so updating chunks
computes what the wrapped optimizer computes on whole tensors; other optimizers are refused.
Communication per step equals plain data parallelism (a reduce-scatter plus an all-gather moves what
one all-reduce does); the saving is memory: Adam keeps 2 floats per parameter, so a rank saves
2 n (1 - 1 / size) floats. `state_dict()` gathers the full state in the wrapped optimizer's format
(a collective: every rank calls it), so a checkpoint resumes on any number of ranks, with or without
ZeRO; `load_state_dict` keeps this rank's chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from entrenar.distributed.comm import Communicator, chunk_bounds
from entrenar.nn.module import Parameter
from entrenar.optim import SGD, Adam, AdamW, Optimizer
from entrenar.tensor import Tensor

__all__ = ["ZeroOptimizer"]


class ZeroOptimizer(Optimizer):
    """`optimizer` (SGD, Adam or AdamW, built on the model's parameters) with its state sharded over
    the ranks of `comm` (see the module docstring). `param_groups` are the wrapped optimizer's, so
    schedulers set their lr as usual."""

    def __init__(self, optimizer: Optimizer, comm: Communicator) -> None:
        if type(optimizer) not in (SGD, Adam, AdamW):
            raise TypeError(
                "ZeroOptimizer: wraps SGD, Adam or AdamW (element-wise updates), "
                f"got {type(optimizer).__name__}"
            )
        if optimizer.state:
            raise ValueError("ZeroOptimizer: wrap a fresh optimizer (it has state already); load state after")
        self.full, self.comm = optimizer, comm
        self.defaults, self.param_groups, self.state = optimizer.defaults, optimizer.param_groups, {}
        self.params: list[Tensor] = [p for g in self.param_groups for p in g["params"]]
        dtypes = sorted({str(p.data.dtype) for p in self.params})
        if len(dtypes) != 1:
            raise ValueError(f"ZeroOptimizer: the parameters must share one dtype, got {dtypes}")
        self.dtype = self.params[0].data.dtype
        self.offsets = np.cumsum([0, *(p.data.size for p in self.params)])  # (P + 1,) flat starts
        self.numel = int(self.offsets[-1])
        self.lo, self.hi = chunk_bounds(self.numel, comm.size, comm.rank)
        # pieces: (parameter index, start, stop within the parameter, its local Parameter)
        self.pieces: list[tuple[int, int, int, Parameter]] = []
        groups: list[dict[str, Any]] = []
        self._group_of: list[int] = []  # local group -> full group index
        index = 0
        for gi, group in enumerate(self.param_groups):
            local = []
            for p in group["params"]:
                start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
                a, b = max(start, self.lo) - start, min(stop, self.hi) - start
                if a < b:
                    piece = Parameter(p.data.reshape(-1)[a:b].copy())
                    self.pieces.append((index, a, b, piece))
                    local.append(piece)
                index += 1
            if local:
                groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": local})
                self._group_of.append(gi)
        kind: Any = type(optimizer)  # SGD, Adam or AdamW: built from groups carrying every hyper-parameter
        self.local: Optimizer | None = kind(groups) if groups else None

    @property
    def zero_chunk(self) -> tuple[int, int]:
        """[lo, hi): this rank's elements of the flat parameter vector."""
        return self.lo, self.hi

    # ------------------------------------------------------------------ step
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update this rank's chunk from its gradients (only the chunk's gradient is read), then
        all-gather the parameters."""
        if closure is not None:
            raise ValueError("ZeroOptimizer.step: closures are not supported (the step is collective)")
        if self.local is not None:
            for li, gi in enumerate(self._group_of):  # the schedule's lr, and any other change
                hyper = {k: v for k, v in self.param_groups[gi].items() if k != "params"}
                self.local.param_groups[li].update(hyper)
            for i, a, b, piece in self.pieces:
                p = self.params[i]
                piece.data[...] = p.data.reshape(-1)[a:b]
                piece.grad = None if p.grad is None else np.ravel(p.grad)[a:b]
            self.local.step()
        flat = np.empty(self.numel, dtype=self.dtype)
        mine = np.empty(self.hi - self.lo, dtype=self.dtype)
        for i, a, b, piece in self.pieces:
            start = int(self.offsets[i]) + a - self.lo
            mine[start : start + b - a] = piece.data
        self.comm.allgather(mine, out=flat)
        for i, p in enumerate(self.params):
            p.data[...] = flat[self.offsets[i] : self.offsets[i + 1]].reshape(p.shape)
        return None

    # ------------------------------------------------------------------ state
    def _local_state(self) -> dict[Tensor, dict[str, Any]]:
        return {} if self.local is None else self.local.state

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's full state dict, gathered from every rank's chunk (collective)."""
        local = self._local_state()
        names = [*self.full._array_state, *self.full._counter_state]
        P = len(self.params)
        # (P, names) presence counts and counter sums over ranks, then every array state, flat
        have = np.zeros((P, len(names)), dtype=np.float64)
        counters = np.zeros(P, dtype=np.float64)
        holders = np.zeros(P, dtype=np.float64)
        for i, _, _, piece in self.pieces:
            holders[i] += 1
            for j, name in enumerate(names):
                if name in local.get(piece, {}):
                    have[i, j] = 1
            if self.full._counter_state and self.full._counter_state[0] in local.get(piece, {}):
                counters[i] = float(local[piece][self.full._counter_state[0]])
        small = np.concatenate([have.ravel(), counters, holders])
        self.comm.allreduce(small)
        present = small[: have.size].reshape(have.shape) > 0
        counters, holders = small[have.size : have.size + P], small[have.size + P :]
        full_state: dict[Tensor, dict[str, Any]] = {}
        for j, name in enumerate(names):
            if not present[:, j].any():
                continue
            if name in self.full._counter_state:
                for i in map(int, np.flatnonzero(present[:, j])):
                    full_state.setdefault(self.params[i], {})[name] = np.array(
                        round(counters[i] / holders[i]), dtype=np.int64
                    )
                continue
            flat, mine = np.zeros(self.numel, dtype=self.dtype), np.zeros(self.hi - self.lo, dtype=self.dtype)
            for i, a, b, piece in self.pieces:
                if name in local.get(piece, {}):
                    start = int(self.offsets[i]) + a - self.lo
                    mine[start : start + b - a] = local[piece][name]
            self.comm.allgather(mine, out=flat)
            for i in map(int, np.flatnonzero(present[:, j])):
                p = self.params[i]
                part = flat[self.offsets[i] : self.offsets[i + 1]]
                full_state.setdefault(p, {})[name] = part.reshape(p.shape)
        self.full.state = full_state
        try:
            return self.full.state_dict()
        finally:
            self.full.state = {}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a full state dict (the wrapped optimizer's format, checked by it); keep this rank's chunk."""
        self.full.load_state_dict(state_dict)
        self.param_groups = self.full.param_groups
        if self.local is not None:
            self.local.state = {}
            for i, a, b, piece in self.pieces:
                saved = self.full.state.get(self.params[i])
                if saved:
                    self.local.state[piece] = {
                        k: (np.array(v, copy=True) if v.ndim == 0 else v.reshape(-1)[a:b].copy())
                        for k, v in saved.items()
                    }
        self.full.state = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.full.zero_grad(set_to_none)

    def memory(self) -> dict[str, int]:
        """Optimizer-state bytes on this rank: what the unsharded optimizer holds (each array state
        this rank has, for all n elements), what this rank holds, and the difference."""
        arrays = [v for s in self._local_state().values() for v in s.values() if v.ndim > 0]
        names = {k for s in self._local_state().values() for k, v in s.items() if v.ndim > 0}
        full = len(names) * self.dtype.itemsize * self.numel
        mine = sum(v.nbytes for v in arrays)
        return {"full_state_bytes": full, "local_state_bytes": mine, "saved_bytes": full - mine}

    def _check_hyperparameters(self, group: dict[str, Any], where: str) -> None:
        self.full._check_hyperparameters(group, where)
