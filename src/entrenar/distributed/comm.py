"""Communicators: the few collectives data-parallel training needs, in one process or over MPI.

    comm = world()                  # MPIComm under mpiexec / srun with more than one rank, else SingleProcess
    comm.rank, comm.size
    comm.allreduce(grads)           # in place: grads <- sum over ranks (op="mean": divided by size)
    comm.broadcast(weights)         # in place: every rank gets rank 0's values
    mine = comm.reduce_scatter(g)   # this rank's chunk of the sum (chunks as `chunk_bounds`)
    comm.allgather(mine, out=g)     # every rank's chunk, concatenated in rank order

Arrays are flat: 1-D, C-contiguous, float32 or float64, the same length (and dtype) on every rank.
`MPIComm` hands them to mpi4py's buffer API (`Allreduce` on the NumPy buffer with `MPI.IN_PLACE`),
never pickles them. Chunks of a length-n array over `size` ranks follow one rule (`chunk_bounds`):
rank r owns [r n // size, (r + 1) n // size), so chunk lengths differ by at most one.

A mismatch across ranks (one rank passes 1,000 elements, another 999) is undefined behaviour in MPI
(truncation errors or a hang); `MPIComm(check_sizes=True)` first agrees on the length and dtype with
a tiny all-reduce and raises ValueError on every rank instead. It costs one small-message latency per
call, so it is off by default; data-parallel training builds its buckets from parameter lists it has
checked to be identical on all ranks once, at start.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
import weakref
from types import TracebackType
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

__all__ = [
    "MPI_ENV_VARS",
    "Communicator",
    "MPIComm",
    "MissingMPIError",
    "SingleProcess",
    "chunk_bounds",
    "install_abort_hook",
    "launched_by_mpi",
    "world",
]

ReduceOp = Literal["sum", "mean"]
# Set by the process managers that start ranks: MPICH hydra / gforker and Intel MPI (PMI_*), Open MPI
# (OMPI_*), PMIx launchers such as `srun --mpi=pmix` (PMIX_RANK).
MPI_ENV_VARS = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
ABORT_GRACE_S = 0.25


class MissingMPIError(ImportError):
    """mpi4py (or an MPI library under it) is not installed."""


def chunk_bounds(n: int, size: int, rank: int) -> tuple[int, int]:
    """[start, stop) of rank `rank`'s chunk of n items over `size` ranks: [rank n // size,
    (rank + 1) n // size). Disjoint, covering [0, n) in rank order, of lengths floor or ceil of n / size."""
    if size < 1 or not 0 <= rank < size or n < 0:
        raise ValueError(
            f"chunk_bounds: need n >= 0, size >= 1 and 0 <= rank < size; got n={n}, size={size}, rank={rank}"
        )
    return rank * n // size, (rank + 1) * n // size


_NEVER = np.empty(0)  # an array no caller holds: the first target of MPIComm's last-array reference


def _flat(where: str, array: Any) -> np.ndarray:
    # the checks of every collective: kept to a few attribute reads, as they run per all-reduce
    if type(array) is np.ndarray and array.ndim == 1 and array.dtype.char in "fd":
        flags = array.flags
        if flags.c_contiguous and flags.writeable:
            return array
    if (
        not isinstance(array, np.ndarray)
        or array.ndim != 1
        or array.dtype not in _FLOATS
        or not array.flags.c_contiguous
        or not array.flags.writeable
    ):
        got = (
            f"{array.dtype} array of shape {array.shape}{'' if array.flags.c_contiguous else ', strided'}"
            if isinstance(array, np.ndarray)
            else type(array).__name__
        )
        raise ValueError(f"{where}: expected a writeable 1-D contiguous float32/float64 ndarray, got {got}")
    return array


def _op(where: str, op: str) -> ReduceOp:
    if op not in ("sum", "mean"):
        raise ValueError(f"{where}: op must be 'sum' or 'mean', got {op!r}")
    return op  # type: ignore[return-value]


@runtime_checkable
class Communicator(Protocol):
    """What data-parallel training needs of a group of `size` processes; this one is number `rank`."""

    @property
    def rank(self) -> int: ...
    @property
    def size(self) -> int: ...
    def broadcast(self, array: np.ndarray, root: int = 0) -> np.ndarray: ...
    def allreduce(self, array: np.ndarray, op: ReduceOp = "sum") -> np.ndarray: ...
    def reduce_scatter(self, array: np.ndarray, op: ReduceOp = "sum") -> np.ndarray: ...
    def allgather(self, chunk: np.ndarray, out: np.ndarray) -> np.ndarray: ...
    def barrier(self) -> None: ...
    def abort(self, code: int = 1) -> None: ...


class SingleProcess:
    """The communicator of one process: every collective is the identity (after the same checks)."""

    rank = 0
    size = 1

    def broadcast(self, array: np.ndarray, root: int = 0) -> np.ndarray:
        if root != 0:
            raise ValueError(f"broadcast: root must be a rank in [0, 1), got {root}")
        return _flat("broadcast", array)

    def allreduce(self, array: np.ndarray, op: ReduceOp = "sum") -> np.ndarray:
        _op("allreduce", op)
        return _flat("allreduce", array)

    def reduce_scatter(self, array: np.ndarray, op: ReduceOp = "sum") -> np.ndarray:
        _op("reduce_scatter", op)
        return _flat("reduce_scatter", array)

    def allgather(self, chunk: np.ndarray, out: np.ndarray) -> np.ndarray:
        _flat("allgather", out)
        if chunk.shape != out.shape or chunk.dtype != out.dtype:
            raise ValueError(
                f"allgather: the chunk ({chunk.dtype} {chunk.shape}) must match out ({out.dtype} {out.shape})"
            )
        if chunk is not out:
            out[...] = chunk
        return out

    def barrier(self) -> None:
        return None

    def abort(self, code: int = 1) -> None:
        os._exit(code)


def _import_mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise MissingMPIError(
            "data-parallel training needs mpi4py and an MPI library: pip install 'entrenar[mpi]' "
            f"(mpi4py and the mpich wheel; a system MPI works too). Import failed: {exc}"
        ) from exc
    return MPI


class MPIComm:
    """A communicator over an mpi4py intracommunicator (default MPI.COMM_WORLD), through its buffer API."""

    def __init__(self, comm: Any = None, *, check_sizes: bool = False) -> None:
        self.MPI = _import_mpi()
        self.comm = self.MPI.COMM_WORLD if comm is None else comm
        self.check_sizes = bool(check_sizes)
        self._rank = int(self.comm.Get_rank())
        self._size = int(self.comm.Get_size())
        self._in_place, self._sum = self.MPI.IN_PLACE, self.MPI.SUM
        self._allreduce = self.comm.Allreduce
        # id -> weak reference of the arrays that passed _flat: the gradient buckets of data-parallel
        # training are the same arrays every step, and the checks cost about as much as mpi4py's own
        # call for a small message. A weak reference keeps nothing alive; a recycled id fails `r() is a`.
        self._checked: dict[int, weakref.ref[np.ndarray]] = {}
        self.allreduce = self._fast_allreduce()  # type: ignore[method-assign]

    def _fast_allreduce(self) -> Any:
        """`allreduce` as a closure over the communicator's fields, set on the instance.

        For a small message the wrapper's own cost is what separates it from a raw mpi4py call (about
        1 us of mpi4py's 5 us for 4 bytes between 2 ranks here): a closure reads its fields from cells
        instead of attributes of self, and the call binds no method. Arrays not yet checked, and any op
        but "sum", take `MPIComm.allreduce`.
        """
        checked_get, raw, in_place, total = self._checked.get, self._allreduce, self._in_place, self._sum
        slow = MPIComm.allreduce.__get__(self)
        last = [weakref.ref(_NEVER)]  # the array of the previous call: one weak reference, no dict look-up

        def allreduce(array: np.ndarray, op: ReduceOp = "sum") -> np.ndarray:
            if op == "sum":
                if last[0]() is array:
                    raw(in_place, array, total)
                    return array
                known = checked_get(id(array))
                if known is not None and known() is array:
                    last[0] = known
                    raw(in_place, array, total)
                    return array
            return slow(array, op)

        return allreduce

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def size(self) -> int:
        return self._size

    def _agree(self, where: str, array: np.ndarray) -> None:
        """ValueError on every rank unless all pass arrays of one length and dtype."""
        mine = np.array([array.size, -array.size, array.itemsize, -array.itemsize], dtype=np.int64)
        top = np.empty_like(mine)
        self.comm.Allreduce(mine, top, op=self.MPI.MAX)
        sizes = (int(-top[1]), int(top[0]))
        if sizes[0] != sizes[1] or top[2] != -top[3]:
            raise ValueError(
                f"{where}: the ranks pass arrays of different lengths or dtypes (lengths from {sizes[0]} to "
                f"{sizes[1]}, this rank {self._rank}: {array.size} x {array.dtype}); every rank must pass "
                "the same length and dtype"
            )

    def broadcast(self, array: np.ndarray, root: int = 0) -> np.ndarray:
        a = _flat("broadcast", array)
        if not 0 <= root < self._size:
            raise ValueError(f"broadcast: root must be a rank in [0, {self._size}), got {root}")
        if self.check_sizes:
            self._agree("broadcast", a)
        self.comm.Bcast(a, root=root)
        return a

    def allreduce(self, array: np.ndarray, op: ReduceOp = "sum") -> np.ndarray:
        a = _flat("allreduce", array)
        _op("allreduce", op)
        if self.check_sizes:
            self._agree("allreduce", a)
        else:  # with check_sizes every call must agree on the sizes first: nothing to remember
            self._remember(a)
        self._allreduce(self._in_place, a, self._sum)
        if op == "mean":
            a *= 1.0 / self._size
        return a

    def _remember(self, array: np.ndarray) -> None:
        """Skip _flat's checks for this array from now on (its shape and dtype do not change in place;
        made read-only later, mpi4py refuses it with a BufferError)."""
        if len(self._checked) >= 1024:  # ids of arrays long gone: start again
            self._checked.clear()
        self._checked[id(array)] = weakref.ref(array)

    def reduce_scatter(self, array: np.ndarray, op: ReduceOp = "sum") -> np.ndarray:
        """This rank's chunk (a view of `array`, see `chunk_bounds`) holds the reduction over ranks; the
        rest of `array` is scratch afterwards."""
        a = _flat("reduce_scatter", array)
        mean = _op("reduce_scatter", op) == "mean"
        if self.check_sizes:
            self._agree("reduce_scatter", a)
        counts = [chunk_bounds(a.size, self._size, r) for r in range(self._size)]
        lo, hi = counts[self._rank]
        out = np.empty(hi - lo, dtype=a.dtype)
        self.comm.Reduce_scatter(a, out, recvcounts=[b - s for s, b in counts], op=self.MPI.SUM)
        mine = a[lo:hi]
        mine[...] = out
        if mean:
            mine *= 1.0 / self._size
        return mine

    def allgather(self, chunk: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out <- every rank's chunk in rank order; chunk r has the length `chunk_bounds(out.size, ...)`."""
        o = _flat("allgather", out)
        if self.check_sizes:
            self._agree("allgather", o)
        bounds = [chunk_bounds(o.size, self._size, r) for r in range(self._size)]
        lo, hi = bounds[self._rank]
        if chunk.ndim != 1 or chunk.size != hi - lo or chunk.dtype != o.dtype:
            raise ValueError(
                f"allgather: rank {self._rank}'s chunk must be 1-D {o.dtype} of length {hi - lo} for out of "
                f"length {o.size}, got {chunk.dtype} {chunk.shape}"
            )
        counts = [b - s for s, b in bounds]
        displs = [s for s, _ in bounds]
        mtype = self.MPI.DOUBLE if o.dtype == np.float64 else self.MPI.FLOAT
        send = np.ascontiguousarray(chunk)
        if np.shares_memory(send, o):
            send = send.copy()
        self.comm.Allgatherv(send, [o, counts, displs, mtype])
        return o

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(code)


def launched_by_mpi(environ: dict[str, str] | None = None) -> bool:
    """Whether a process manager (mpiexec, srun) started this process as an MPI rank."""
    env = os.environ if environ is None else environ
    return any(k in env for k in MPI_ENV_VARS)


def world(*, check_sizes: bool = False) -> Communicator:
    """MPIComm over COMM_WORLD when this process is an MPI rank of a job with more than one rank (and
    then an abort hook, see `install_abort_hook`), else SingleProcess. MissingMPIError when launched
    by MPI but mpi4py is not installed."""
    if not launched_by_mpi():
        return SingleProcess()
    comm = MPIComm(check_sizes=check_sizes)
    if comm.size == 1:
        return SingleProcess()
    install_abort_hook(comm)
    return comm


def install_abort_hook(comm: Communicator, stream: Any = None) -> None:
    """On an uncaught exception: print its traceback prefixed with the rank, then `comm.abort(1)`, so
    the other ranks stop within seconds instead of waiting forever in their next collective."""

    def hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        out = sys.stderr if stream is None else stream
        text = "".join(traceback.format_exception(kind, value, tb))
        prefix = f"[rank {comm.rank}/{comm.size}] "
        out.write("".join(prefix + line + "\n" for line in text.rstrip("\n").split("\n")))
        out.write(f"[rank {comm.rank}/{comm.size}] aborting the MPI job\n")
        out.flush()
        time.sleep(ABORT_GRACE_S)  # the launcher forwards our output before it tears the job down
        comm.abort(130 if issubclass(kind, KeyboardInterrupt) else 1)

    sys.excepthook = hook
