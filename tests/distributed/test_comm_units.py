"""In one process: the sharding rule (hypothesis), SingleProcess, DataParallel's reductions over a fake
two-rank communicator, ZeroOptimizer on one rank, the launcher's command and its errors."""

from __future__ import annotations

import io
import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entrenar.cli import main
from entrenar.distributed import (
    Communicator,
    DataParallel,
    MissingMPIError,
    MPIComm,
    SingleProcess,
    ZeroOptimizer,
    chunk_bounds,
    install_abort_hook,
    shard_batch,
    world,
)
from entrenar.distributed.comm import launched_by_mpi
from entrenar.distributed.launch import find_mpiexec, launch, mpiexec_command, ranks_command
from entrenar.nn import Parameter
from entrenar.optim import SGD, Adam, AdamW, Optimizer


# ------------------------------------------------------------------------------ the sharding rule
@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 5000), size=st.integers(1, 64))
def test_chunks_are_disjoint_covering_balanced(n: int, size: int) -> None:
    bounds = [chunk_bounds(n, size, r) for r in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    for (_, hi), (lo, _) in itertools.pairwise(bounds):
        assert hi == lo  # contiguous, in rank order: disjoint and covering
    assert {hi - lo for lo, hi in bounds} <= {n // size, -(-n // size)}


@settings(max_examples=150, deadline=None)
@given(n=st.integers(1, 40), size=st.integers(1, 9), ignored=st.integers(0, 40), seed=st.integers(0, 99))
def test_shards_partition_the_batch_and_weights_sum_to_one(
    n: int, size: int, ignored: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, size=(n, 3))
    labels.ravel()[: min(ignored, labels.size - 1)] = -100  # at least one label counts
    batch = {"input_ids": rng.integers(0, 9, size=(n, 3)), "labels": labels, "note": "kept"}
    parts = [shard_batch(batch, size, r) for r in range(size)]
    again = [shard_batch(batch, size, r) for r in range(size)]
    full = [p for p in parts if p.samples]
    np.testing.assert_array_equal(np.concatenate([p.batch["input_ids"] for p in full]), batch["input_ids"])
    np.testing.assert_array_equal(np.concatenate([p.batch["labels"] for p in full]), labels)
    assert sum(p.samples for p in parts) == n
    assert sum(p.weight for p in parts) == pytest.approx(1.0)
    counted = int((labels != -100).sum())
    for p, q in zip(parts, again, strict=True):  # deterministic
        assert p.weight == q.weight and p.samples == q.samples
        if p.samples:
            assert p.weight == pytest.approx(int((p.batch["labels"] != -100).sum()) / counted)
            assert p.batch["note"] == "kept"
        else:  # fewer items than ranks: a zero-weight stand-in, so every rank runs the same collectives
            assert p.weight == 0.0 and len(p.batch["labels"]) == 1
            assert p.scaled({"examples": 3, "confusion": np.ones((2, 2))})["examples"] == 0


def test_shard_rejects_what_it_cannot_cut() -> None:
    with pytest.raises(ValueError, match=r"'mask' has 3 rows where the batch has 4 items"):
        shard_batch({"labels": np.zeros(4), "mask": np.zeros((3, 2))}, 2, 0)
    with pytest.raises(TypeError, match="batches of NumPy arrays"):
        shard_batch({"labels": [0, 1]}, 2, 0)
    with pytest.raises(ValueError, match="no items"):
        shard_batch(np.zeros((0, 3)), 2, 0)
    with pytest.raises(ValueError, match="0 <= rank < size"):
        chunk_bounds(4, 2, 2)


def test_tuple_batches_are_cut_entry_by_entry() -> None:
    x, y = np.arange(10.0).reshape(5, 2), np.arange(5)
    part = shard_batch((x, y), 2, 1)
    assert isinstance(part.batch, tuple) and part.samples == 3 and part.weight == pytest.approx(3 / 5)
    np.testing.assert_array_equal(part.batch[0], x[2:])


# ------------------------------------------------------------------------------ SingleProcess
def test_single_process_collectives_are_identities() -> None:
    c = SingleProcess()
    a = np.arange(5.0)
    assert isinstance(c, Communicator) and (c.rank, c.size) == (0, 1)
    assert c.allreduce(a) is a and c.allreduce(a, op="mean") is a and c.broadcast(a) is a
    assert c.reduce_scatter(a) is a
    out = np.zeros(5)
    assert c.allgather(a, out=out) is out and np.array_equal(out, a)
    np.testing.assert_array_equal(a, np.arange(5.0))
    assert c.barrier() is None


@pytest.mark.parametrize(
    "bad",
    [np.zeros((2, 2)), np.zeros(4, dtype=np.int64), np.zeros(8)[::2], [1.0, 2.0]],
    ids=["2-d", "int", "strided", "list"],
)
def test_single_process_checks_arrays(bad: Any) -> None:
    with pytest.raises(ValueError, match="1-D contiguous float32/float64 ndarray"):
        SingleProcess().allreduce(bad)


def test_single_process_bad_arguments() -> None:
    c = SingleProcess()
    with pytest.raises(ValueError, match="op must be 'sum' or 'mean'"):
        c.allreduce(np.zeros(2), op="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"root must be a rank in \[0, 1\)"):
        c.broadcast(np.zeros(2), root=1)
    with pytest.raises(ValueError, match="must match out"):
        c.allgather(np.zeros(2), out=np.zeros(3))


# ------------------------------------------------------------------------------ DataParallel
class Twice(SingleProcess):
    """A fake 2-rank communicator whose other rank holds the same values: a sum doubles."""

    size = 2

    def allreduce(self, array: np.ndarray, op: Any = "sum") -> np.ndarray:
        array *= 2 if op == "sum" else 1
        return array

    def broadcast(self, array: np.ndarray, root: int = 0) -> np.ndarray:
        return array


def test_single_process_data_parallel_changes_nothing() -> None:
    dp = DataParallel()
    batch = {"labels": np.arange(3)}
    part = dp.shard(batch)
    assert part.batch is batch and part.weight == 1.0 and part.samples == 3 and dp.is_writer
    sums = {"examples": 3}
    assert dp.reduce_values([0.5], sums, 3) == ([0.5], sums, 3)
    p = Parameter(np.ones(3))
    p.grad = np.full(3, 2.0)
    dp.reduce_gradients([p])
    np.testing.assert_array_equal(p.grad, [2.0, 2.0, 2.0])


def test_reduce_values_keeps_types() -> None:
    dp = DataParallel(Twice())
    conf = np.array([[1, 2], [3, 4]], dtype=np.int64)
    sums_in = {"examples": 3, "loss_sum": 1.5, "confusion": conf}
    losses, sums, samples = dp.reduce_values([0.25, 1.5], sums_in, 7)
    assert losses == [0.5, 3.0] and samples == 14
    assert sums["examples"] == 6 and isinstance(sums["examples"], int)
    assert sums["loss_sum"] == 3.0 and isinstance(sums["loss_sum"], float)
    assert sums["confusion"].dtype == np.int64 and np.array_equal(sums["confusion"], 2 * conf)


def test_reduce_gradients_in_buckets_keeps_absent_ones_none() -> None:
    dp = DataParallel(Twice(), bucket_bytes=40)  # 5 float64 a bucket: several buckets
    params = [Parameter(np.ones(s)) for s in (3, 4, 2)] + [Parameter(np.ones(2, dtype=np.float32))]
    absent = Parameter(np.ones(2))
    for i, p in enumerate(params):
        p.grad = np.full(p.shape, float(i + 1), dtype=p.data.dtype)
    assert [len(b) for b in dp._buckets([*params, absent])] == [1, 1, 2, 1]
    dp.reduce_gradients([*params, absent])
    for i, p in enumerate(params):
        assert p.grad.dtype == p.data.dtype
        np.testing.assert_array_equal(p.grad, np.full(p.shape, 2.0 * (i + 1)))
    assert absent.grad is None


def test_data_parallel_bad_arguments() -> None:
    with pytest.raises(TypeError, match="comm must be a Communicator"):
        DataParallel(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bucket_bytes must be a positive int"):
        DataParallel(bucket_bytes=0)


# ------------------------------------------------------------------------------ ZeRO on one rank
def _params(dtype: Any = np.float64) -> list[Parameter]:
    rng = np.random.default_rng(0)
    return [Parameter(rng.standard_normal(s).astype(dtype)) for s in ((3, 4), (4,), (2, 3))]


@pytest.mark.parametrize("kind", [AdamW, Adam, SGD])
def test_zero_on_one_rank_is_the_wrapped_optimizer(kind: type[Optimizer]) -> None:
    a, b = _params(), _params()
    hyper: dict[str, Any] = {"lr": 0.1, "momentum": 0.9} if kind is SGD else {"lr": 0.1}
    plain, zero = kind(a, **hyper), ZeroOptimizer(kind(b, **hyper), SingleProcess())
    rng = np.random.default_rng(1)
    for _ in range(3):
        for p, q in zip(a, b, strict=True):
            p.grad = rng.standard_normal(p.shape)
            q.grad = p.grad.copy()
        plain.step()
        zero.step()
    for p, q in zip(a, b, strict=True):
        np.testing.assert_array_equal(p.data, q.data)
    saved = zero.state_dict()
    want = plain.state_dict()
    assert saved["param_groups"] == want["param_groups"]
    for i, entries in want["state"].items():
        for name, value in entries.items():
            np.testing.assert_array_equal(saved["state"][i][name], value)
    fresh = ZeroOptimizer(kind(_params(), **hyper), SingleProcess())
    fresh.load_state_dict(saved)
    loaded = fresh.state_dict()["state"]
    assert all(np.array_equal(loaded[i][n], v) for i, e in want["state"].items() for n, v in e.items())
    assert zero.memory()["saved_bytes"] == 0


def test_zero_refusals() -> None:
    class Custom(SGD):
        pass

    with pytest.raises(TypeError, match="wraps SGD, Adam or AdamW"):
        ZeroOptimizer(Custom(_params(), lr=0.1), SingleProcess())
    with pytest.raises(ValueError, match="share one dtype"):
        ZeroOptimizer(SGD([*_params(), *_params(np.float32)], lr=0.1), SingleProcess())
    ps = _params()
    used = AdamW(ps, lr=0.1)
    for p in ps:
        p.grad = np.ones(p.shape)
    used.step()
    with pytest.raises(ValueError, match="fresh optimizer"):
        ZeroOptimizer(used, SingleProcess())


# ------------------------------------------------------------------------------ launch and errors
def test_ranks_command_loopback_flags() -> None:
    hydra = ranks_command(2, ["prog"], mpiexec=Path("/x/mpiexec"))
    loopback = ["-launcher", "fork", "-host", "127.0.0.1", "-iface", "lo"]
    assert hydra == ["/x/mpiexec", "-n", "2", *loopback, "prog"]
    gforker = ranks_command(3, ["p"], mpiexec=Path("/x/mpiexec.gforker"))
    assert gforker == ["/x/mpiexec.gforker", "-n", "3", "p"]
    cmd = mpiexec_command(2, ["train", "a.yaml"], mpiexec=Path("/x/mpiexec.gforker"), python="/py")
    assert cmd[-5:] == ["/py", "-m", "entrenar", "train", "a.yaml"]
    with pytest.raises(ValueError, match="--nproc must be a whole number >= 1, got 0"):
        ranks_command(0, ["p"], mpiexec=Path("/x/mpiexec"))


def test_no_launcher_names_the_mpi_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MissingMPIError, match=r"pip install 'entrenar\[mpi\]'"):
        find_mpiexec(str(tmp_path / "python"))


def test_missing_mpi4py_names_the_mpi_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(MissingMPIError, match=r"entrenar\[mpi\]"):
        MPIComm()
    with pytest.raises(MissingMPIError, match=r"entrenar\[mpi\]"):
        launch(2, ["train", "x.yaml"])
    monkeypatch.setenv("PMI_SIZE", "2")
    with pytest.raises(MissingMPIError, match=r"entrenar\[mpi\]"):
        world()
    monkeypatch.delenv("PMI_SIZE")
    (tmp_path / "c.yaml").write_text("{}\n")
    assert main(["train", str(tmp_path / "c.yaml"), "--nproc", "2"]) == 2


def test_world_without_mpi_is_single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert not launched_by_mpi()
    assert isinstance(world(), SingleProcess)
    assert launched_by_mpi({"OMPI_COMM_WORLD_SIZE": "4"})


def test_nproc_below_one_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(tmp_path / "c.yaml"), "--nproc", "0"])
    assert exit_info.value.code == 2
    assert "--nproc" in capsys.readouterr().err


def test_abort_hook_prints_the_rank_and_aborts(monkeypatch: pytest.MonkeyPatch) -> None:
    codes: list[int] = []

    class Recording(SingleProcess):
        def abort(self, code: int = 1) -> None:
            codes.append(code)

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    out = io.StringIO()
    install_abort_hook(Recording(), stream=out)
    try:
        raise RuntimeError("boom on this rank")
    except RuntimeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    text = out.getvalue()
    assert codes == [1]
    assert "[rank 0/1] RuntimeError: boom on this rank" in text and "[rank 0/1] Traceback" in text


def test_entrenar_nproc_help_mentions_mpi() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "entrenar", "train", "--help"], capture_output=True, text=True, check=True
    )
    assert "--nproc N" in done.stdout and "entrenar[mpi]" in done.stdout


# ------------------------------------------------------------------ MPIComm's remembered checks
def _self_comm() -> MPIComm:
    mpi = pytest.importorskip("mpi4py.MPI")
    return MPIComm(mpi.COMM_SELF)


def test_mpicomm_checks_each_array_once_and_still_refuses_bad_ones() -> None:
    comm = _self_comm()
    a = np.arange(4, dtype=np.float32)
    for _ in range(3):  # first call checked and remembered, then the fast path
        assert comm.allreduce(a) is a
    np.testing.assert_array_equal(a, np.arange(4))  # one rank: the sum is the array itself
    np.testing.assert_array_equal(comm.allreduce(a, "mean"), np.arange(4))  # other ops: the full path
    with pytest.raises(ValueError, match="op must be 'sum' or 'mean'"):
        comm.allreduce(a, "max")  # type: ignore[arg-type]
    a.flags.writeable = False  # remembered, then made read-only: mpi4py refuses to write into it
    with pytest.raises((BufferError, ValueError)):
        comm.allreduce(a)
    for bad in (np.zeros((2, 2), np.float32), np.zeros(3, np.int64), np.zeros(8, np.float32)[::2]):
        with pytest.raises(ValueError, match="expected a writeable 1-D contiguous float32/float64"):
            comm.allreduce(bad)


def test_mpicomm_a_recycled_id_is_checked_again() -> None:
    """The memory is by weak reference: another array at a remembered id (the first one freed) is new."""
    comm = _self_comm()
    other = np.zeros(3, np.float32)
    bad = np.zeros((2, 2), np.float32)
    comm._checked[id(bad)] = __import__("weakref").ref(other)  # as if `bad` reused a freed array's id
    with pytest.raises(ValueError, match="expected a writeable 1-D contiguous"):
        comm.allreduce(bad)
    gone = np.zeros(5, np.float32)
    comm.allreduce(gone)
    ref = comm._checked[id(gone)]
    del gone
    assert ref() is None  # nothing kept alive by the memory
