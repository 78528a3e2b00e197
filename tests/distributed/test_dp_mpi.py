"""Two MPI ranks (mpiexec from the `mpi` extra, loopback only) against one process on the same global
batches: parameters, losses and metrics after N steps (float64 rtol 1e-10, float32 1e-5), ZeRO-1,
resume across rank counts, the collectives, the sockets the ranks hold, and abort on a failing rank.

One 2-rank job runs every training case (starting MPI and importing entrenar is most of a job's
time on a loaded 2-core machine); the one-process references run in this process.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from dp_worker import run
from mpirun import mpirun, python_script
from sockets import off_loopback

from entrenar.distributed import SingleProcess
from entrenar.train import read_checkpoint

STEPS = 6
RTOL = {"float64": 1e-10, "float32": 1e-5}


def _job(root: Path, name: str, kind: str = "mlp", dtype: str = "float64", **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "dtype": dtype, "out": str(root / name), "steps": STEPS, **extra}


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The 2-rank job (every case) and the one-process runs it is compared with."""
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    single = SingleProcess()
    for job in (
        _job(one, "mlp64"),
        _job(one, "mlp32", dtype="float32"),
        _job(one, "gpt64", kind="gpt"),
        _job(one, "gpt32", kind="gpt", dtype="float32"),
        _job(two, "from-one", stop=3),  # continued by the 2-rank job
        _job(two, "from-one-zero", stop=3),
    ):
        run(job, single)
    jobs = [
        _job(two, "mlp64"),
        _job(two, "mlp32", dtype="float32"),
        _job(two, "gpt64", kind="gpt"),
        _job(two, "gpt32", kind="gpt", dtype="float32"),
        _job(two, "zero64", zero=True),
        _job(two, "zero32", dtype="float32", zero=True),
        _job(two, "to-one", stop=3),  # continued by one process below
        _job(two, "from-one", resume=True),
        _job(two, "from-one-zero", resume=True, zero=True),
        _job(two, "two-two", stop=3),
        _job(two, "two-two", resume=True),  # the same number of ranks
    ]
    done, seconds = mpirun(2, python_script("dp_worker.py", json.dumps(jobs), str(two)))
    assert done.returncode == 0, done.stderr[-4000:]
    run(_job(two, "to-one", resume=True), single)
    reports = [json.loads((two / f"report-rank{r}.json").read_text()) for r in range(2)]
    return {"one": one, "two": two, "reports": reports, "seconds": seconds}


def _weights(out: Path) -> dict[str, np.ndarray]:
    return read_checkpoint(out).model


def _events(out: Path) -> list[dict[str, Any]]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _assert_same_run(a: Path, b: Path, rtol: float) -> None:
    """Same weights (rtol; atol = rtol x the largest weight, because a weight whose gradient is 0 in exact
    arithmetic, as a key bias under softmax, holds rounding noise near 1e-15 that no rtol compares) and
    the same events in metrics.jsonl."""
    wa, wb = _weights(a), _weights(b)
    assert read_checkpoint(a).step == read_checkpoint(b).step == STEPS
    assert sorted(wa) == sorted(wb)
    scale = max(float(np.abs(w).max()) for w in wa.values())
    for name in wa:
        assert wa[name].dtype == wb[name].dtype
        np.testing.assert_allclose(wb[name], wa[name], rtol=rtol, atol=rtol * scale, err_msg=name)
    ea, eb = _events(a), _events(b)
    assert [(e["step"], e["split"]) for e in ea] == [(e["step"], e["split"]) for e in eb]
    for x, y in zip(ea, eb, strict=True):
        for key in ("loss", "accuracy", "perplexity", "lr"):
            if key in x:
                assert y[key] == pytest.approx(x[key], rel=max(rtol, 1e-12)), (x, y)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["mlp", "gpt"])
def test_two_ranks_equal_one_process(suite: dict[str, Any], kind: str, dtype: str) -> None:
    name = f"{kind}{dtype[-2:]}"
    _assert_same_run(suite["one"] / name, suite["two"] / name, RTOL[dtype])


def test_parameters_moved(suite: dict[str, Any]) -> None:
    """The comparison means something: training changed the weights from their initial values."""
    ck = read_checkpoint(suite["two"] / "mlp64" / "checkpoints" / "step-2")
    final = _weights(suite["two"] / "mlp64")
    assert any(not np.allclose(ck.model[k], final[k], rtol=1e-3) for k in final)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_zero1_equals_plain_data_parallel(suite: dict[str, Any], dtype: str) -> None:
    name = f"mlp{dtype[-2:]}"
    _assert_same_run(suite["two"] / name, suite["two"] / f"zero{dtype[-2:]}", RTOL[dtype])


def test_zero1_memory_saved_per_rank(suite: dict[str, Any]) -> None:
    """AdamW keeps exp_avg and exp_avg_sq: 2 floats a parameter; each of 2 ranks holds half of them."""
    n = 6 * 32 + 32 + 32 * 3 + 3  # the MLP's parameters
    for dtype, size in (("64", 8), ("32", 4)):
        reports = [
            json.loads((suite["two"] / f"zero{dtype}" / f"memory-rank{r}.json").read_text()) for r in range(2)
        ]
        for r, m in enumerate(reports):
            assert m["full_state_bytes"] == 2 * n * size
            half = (r + 1) * n // 2 - r * n // 2  # rank r's chunk, chunk_bounds' rule
            assert m["local_state_bytes"] == 2 * half * size
            assert m["saved_bytes"] == m["full_state_bytes"] - m["local_state_bytes"]
        assert sum(m["local_state_bytes"] for m in reports) == reports[0]["full_state_bytes"]


def test_resume_on_one_two_or_the_same_ranks(suite: dict[str, Any]) -> None:
    straight = suite["one"] / "mlp64"
    for name in ("to-one", "from-one", "from-one-zero", "two-two"):
        out = suite["two"] / name
        assert (out / "checkpoints" / "step-3").is_dir()
        _assert_same_run(straight, out, RTOL["float64"])


def test_collectives_on_two_ranks(suite: dict[str, Any]) -> None:
    for rank, report in enumerate(suite["reports"]):
        assert report["size"] == 2
        checks = report["comm"]
        assert {k: v for k, v in checks.items() if k != "size_mismatch"} == {
            "allreduce_sum": True,
            "allreduce_mean": True,
            "broadcast": True,
            "reduce_scatter": True,
            "allgather": True,
        }, rank
        assert "different lengths" in checks["size_mismatch"] and "from 4 to 5" in checks["size_mismatch"]


def test_traffic_stays_on_loopback(suite: dict[str, Any]) -> None:
    """Each rank and the launcher hold no inet socket away from 127.0.0.1 (shared memory between ranks)."""
    for report in suite["reports"]:
        assert off_loopback(report["sockets"]) == []
        assert off_loopback(report["launcher_sockets"]) == []


def test_failing_rank_aborts_the_job(tmp_path: Path) -> None:
    job = _job(tmp_path, "fails", fail_rank=1, fail_step=2)
    done, _ = mpirun(2, python_script("dp_worker.py", json.dumps([job]), str(tmp_path)), timeout=120)
    ended = time.time()
    shown = f"exit {done.returncode}; stderr:\n{done.stderr[-3000:]}"
    assert done.returncode != 0, shown
    assert "[rank 1/2]" in done.stderr and "deliberate failure on rank 1 at step 2" in done.stderr, shown
    assert "RuntimeError" in done.stderr, shown
    failed_at = float((tmp_path / "fails" / "failed-at").read_text())
    assert ended - failed_at < 15, f"the job took {ended - failed_at:.1f} s to stop after the failure"
    assert not (tmp_path / "report-rank0.json").exists(), shown  # rank 0 did not finish either
