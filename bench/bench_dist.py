"""Data parallelism on this machine: the all-reduce of `entrenar.distributed.MPIComm` against raw
mpi4py, and GPT-style LM training throughput on 1 and 2 ranks with the time spent communicating.

1. All-reduce (sum, in place, float32) on 2 ranks at 4 B .. 64 MB: `MPIComm.allreduce` against
   `comm.Allreduce(MPI.IN_PLACE, buf)`, interleaved round by round; median latency and bandwidth
   (bytes of the buffer / time). Goal: the communicator within 10% of raw mpi4py (ratio <= 1.10 at
   every size; `ratio` in the results is the worst size).
2. Training: the GPT of bench_gpt.py (2 layers, d 256, T 128, vocab 1000, AdamW), global batch 8 of
   128 tokens; one process with the BLAS threads as they are, against 2 ranks (each 4 sequences) with
   1 BLAS thread each (threadpoolctl, so 2 ranks use the 2 cores) and with the threads as they are.
   Per step: forward, backward, gradient all-reduce (DataParallel, 25 MB buckets), AdamW. Reports
   tokens/s, speedup over one process, per-core scaling efficiency (2-rank tokens/s over twice the
   1-rank 1-thread tokens/s), and the all-reduce's ms per step: the most overlapping it with the
   backward pass could save.

The parent process runs the 1-rank parts itself and starts the 2-rank parts with the venv's
mpiexec over loopback (shared memory), as `entrenar train --nproc 2` does. Usage:
    .venv/bin/python bench/bench_dist.py [--label asis|unset] [--steps 12] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import label, measure, print_header, write_results

GOAL = 1.10
SIZES = [1, 256, 16 * 1024, 256 * 1024, 4 * 2**20, 16 * 2**20]  # float32 elements: 4 B .. 64 MB
BATCH, SEQ = 8, 128


def allreduce_rank(rounds: int) -> dict[str, Any]:
    """On each of 2 ranks: interleaved timings of MPIComm.allreduce and raw Allreduce per size."""
    from mpi4py import MPI

    from entrenar.distributed import MPIComm

    comm = MPIComm()
    raw = MPI.COMM_WORLD
    out: dict[str, Any] = {}
    for n in SIZES:
        buf = np.ones(n, dtype=np.float32)
        inner = max(1, min(200, 2**22 // max(n, 1)))
        repeats = 7 if n >= 2**20 else 15

        def ours(buf: np.ndarray = buf) -> None:
            comm.allreduce(buf)

        def theirs(buf: np.ndarray = buf) -> None:
            raw.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)

        samples: dict[str, list[float]] = {"entrenar": [], "mpi4py": []}
        for _ in range(rounds):
            for name, fn in (("entrenar", ours), ("mpi4py", theirs)):
                raw.Barrier()
                samples[name].append(measure(fn, repeats=repeats, inner=inner, warmup=2).median_s)
            buf[...] = 1.0  # keep the values finite (each sum doubles them)
        med = {k: float(np.median(v)) for k, v in samples.items()}
        out[str(n)] = {
            "bytes": 4 * n,
            "entrenar_us": med["entrenar"] * 1e6,
            "mpi4py_us": med["mpi4py"] * 1e6,
            "ratio": med["entrenar"] / med["mpi4py"],
            "entrenar_GBps": 4 * n / med["entrenar"] / 1e9,
            "mpi4py_GBps": 4 * n / med["mpi4py"] / 1e9,
        }
    # The wrapper's own cost per call, without waiting for a partner: both on MPI.COMM_SELF (rank 0)
    if raw.Get_rank() == 0:
        alone, raw_alone = MPIComm(MPI.COMM_SELF), MPI.COMM_SELF
        one = np.ones(1, dtype=np.float32)
        solo: dict[str, list[float]] = {"entrenar": [], "mpi4py": []}
        calls = {
            "entrenar": lambda: alone.allreduce(one),
            "mpi4py": lambda: raw_alone.Allreduce(MPI.IN_PLACE, one, op=MPI.SUM),
        }
        for _ in range(rounds):
            for name, fn in calls.items():
                solo[name].append(measure(fn, repeats=15, inner=2000).median_s)
        out["self"] = {k: float(np.median(v)) * 1e6 for k, v in solo.items()}
    raw.Barrier()
    return out


def train_rank(steps: int, threads: int | None) -> dict[str, Any]:
    """ms per step (median after 3 warm-up steps), comm ms per step, on this rank (1 or 2 ranks)."""
    from threadpoolctl import threadpool_limits

    from entrenar.distributed import DataParallel, world
    from entrenar.nn.gpt import GPT, GPTConfig
    from entrenar.optim import AdamW
    from entrenar.train import lm_loss

    limits = threadpool_limits(threads) if threads else None
    comm = world()
    config = GPTConfig(vocab_size=1000, block_size=SEQ, n_layer=2, n_head=4, n_embd=256, d_ff=1024)
    model = GPT(config, dtype=np.float32, generator=np.random.default_rng(1))
    opt = AdamW(list(model.parameters()), lr=3e-4, weight_decay=0.01)
    dp = DataParallel(comm)
    dp.start(model, opt, {})
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, (BATCH, SEQ + 1))
    batch = {"input_ids": tokens[:, :-1].copy(), "labels": tokens[:, 1:].copy()}
    params = [p for g in opt.param_groups for p in g["params"]]
    times, comm_ms, losses = [], [], []
    for _ in range(steps + 3):
        t0, c0 = time.perf_counter(), dp.comm_seconds
        opt.zero_grad()
        part = dp.shard(batch)
        loss, sums = lm_loss(model, part.batch)
        (loss * part.weight).backward()
        dp.reduce_gradients(params)
        step_losses, _, _ = dp.reduce_values([part.weight * float(loss.item())], sums, part.samples)
        opt.step()
        times.append(time.perf_counter() - t0)
        comm_ms.append((dp.comm_seconds - c0) * 1e3)
        losses.append(step_losses[0])
    if limits is not None:
        limits.restore_original_limits()
    ms = float(np.median(times[3:])) * 1e3
    return {
        "ranks": comm.size,
        "blas_threads": threads,
        "ms_per_step": ms,
        "tokens_per_s": BATCH * SEQ / (ms / 1e3),
        "comm_ms_per_step": float(np.median(comm_ms[3:])),
        "losses": losses,
        "params": int(sum(p.data.size for p in params)),
    }


def _ranks(args: list[str]) -> dict[str, Any]:
    """Run this script as 2 MPI ranks with `args`; rank 0's JSON answer."""
    from entrenar.distributed.launch import LOOPBACK_ENV, find_mpiexec, ranks_command

    with tempfile.TemporaryDirectory() as tmp:
        answer = Path(tmp) / "answer.json"
        program = [sys.executable, __file__, *args, "--answer", str(answer)]
        command = ranks_command(2, program, mpiexec=find_mpiexec())
        subprocess.run(command, env={**os.environ, **LOOPBACK_ENV}, check=True, timeout=900)
        result: dict[str, Any] = json.loads(answer.read_text())
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--label", default=None, help="results name suffix (default: from the OpenBLAS env)")
    p.add_argument("--steps", type=int, default=12, help="timed training steps per configuration")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per all-reduce size")
    p.add_argument("--rank-part", choices=("allreduce", "train"), help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--answer", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.rank_part is not None:  # inside mpiexec: one rank
        from mpi4py import MPI

        if args.rank_part == "allreduce":
            result = allreduce_rank(args.rounds)
        else:
            result = train_rank(args.steps, args.threads or None)
        if MPI.COMM_WORLD.Get_rank() == 0:
            args.answer.write_text(json.dumps(result))
        return

    info = print_header("data parallel over MPI: all-reduce vs raw mpi4py; GPT LM on 1 and 2 ranks")
    load = os.getloadavg()
    print(f"   load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (other processes share these cores)")
    ar = _ranks(["--rank-part", "allreduce", "--rounds", str(args.rounds)])
    print(f"\n   all-reduce, 2 ranks, float32 sum in place (median of {args.rounds} interleaved rounds)")
    print(f"   {'bytes':>10} {'MPIComm':>11} {'mpi4py':>11} {'ratio':>6} {'GB/s':>7}")
    solo = ar.pop("self")
    for r in ar.values():
        print(f"   {r['bytes']:>10,d} {r['entrenar_us']:>8.1f} us {r['mpi4py_us']:>8.1f} us "
              f"{r['ratio']:>5.2f}x {r['entrenar_GBps']:>7.2f}")
    print(f"   per call on one rank (MPI.COMM_SELF, 4 B: the wrapper's own cost): "
          f"MPIComm {solo['entrenar']:.2f} us, mpi4py {solo['mpi4py']:.2f} us")
    worst = max(r["ratio"] for r in ar.values())
    print(f"   worst ratio {worst:.2f}x ({'meets' if worst <= GOAL else 'misses'} the goal <= {GOAL}x)")

    steps = ["--steps", str(args.steps)]
    one = train_rank(args.steps, None)
    one_1t = train_rank(args.steps, 1)
    two_1t = _ranks(["--rank-part", "train", *steps, "--threads", "1"])
    two = _ranks(["--rank-part", "train", *steps])
    np.testing.assert_allclose(two_1t["losses"], one["losses"], rtol=1e-4, err_msg="2 ranks vs 1: losses")
    print(f"\n   GPT LM training, {one['params']:,d} parameters, global batch {BATCH} x {SEQ} tokens, AdamW")
    rows = [("1 rank, BLAS threads as set", one), ("1 rank, 1 BLAS thread", one_1t),
            ("2 ranks, 1 BLAS thread each", two_1t), ("2 ranks, BLAS threads as set", two)]  # fmt: skip
    for name, r in rows:
        print(f"   {name:<30} {r['ms_per_step']:8.1f} ms/step {r['tokens_per_s']:9.0f} tokens/s  "
              f"all-reduce {r['comm_ms_per_step']:6.2f} ms/step")
    speedup = two_1t["tokens_per_s"] / one["tokens_per_s"]
    efficiency = two_1t["tokens_per_s"] / (2 * one_1t["tokens_per_s"])
    comm_share = two_1t["comm_ms_per_step"] / two_1t["ms_per_step"]
    print(f"   speedup of 2 ranks over 1 process: {speedup:.2f}x; per-core scaling efficiency "
          f"{100 * efficiency:.0f}%; the all-reduce is {100 * comm_share:.1f}% of a 2-rank step "
          "(the most that overlapping it with the backward pass could save)")
    largest = ar[str(SIZES[-1])]
    write_results(
        f"dist.{args.label or label()}",
        {
            "benchmark": "dist",
            "workload": f"all-reduce float32 on 2 ranks, {SIZES[0] * 4} B .. {SIZES[-1] * 4} B; GPT LM step",
            "entrenar_ms": largest["entrenar_us"] / 1e3,
            "numpy_ms": largest["mpi4py_us"] / 1e3,  # raw mpi4py, in the table's third column
            "ratio": worst,
            "goal_ratio": GOAL,
            "allreduce": ar,
            "allreduce_self_us": solo,
            "train": {
                "one_rank": one,
                "one_rank_1_thread": one_1t,
                "two_ranks_1_thread": two_1t,
                "two_ranks": two,
            },
            "speedup_2_ranks": speedup,
            "scaling_efficiency_per_core": efficiency,
            "comm_share_of_step": comm_share,
            "load_average": load,
            "blas": info,
        },
    )


if __name__ == "__main__":
    main()
