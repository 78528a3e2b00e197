"""Optimizer steps over 10M float32 parameters in 20 tensors: AdamW, Adam, SGD with momentum.

entrenar's fused kernels (`entrenar.kernels.optim_fused`, one numba pass over each tensor) and its
plain-NumPy reference (`optim_reference`, called on the 20 tensors one by one), against torch.optim's three
implementations measured in the same process: the default (a for-loop of single-tensor ops on CPU),
foreach=True and fused=True. `entrenar.optim` is the optimizer class as wired today (it calls
`entrenar.kernels`, the reference unless a fast path is swapped in). The update is memory-bound:
AdamW moves 28 bytes per parameter, so 280 MB a step. Goal: entrenar fused at most 1.0x torch fused.

"entrenar fused" is the kernels' group call (`optim_fused.adam_steps` / `sgd_steps` on all 20 tensors at
once, as `entrenar.optim` makes it per parameter group) with its default policy: an update of at least
`optim_fused.PARALLEL_MIN_SIZE` elements in all (4M; this one has 10M) is split over threads, each tensor
cut into one part per thread, in one hand-off for the step. "entrenar fused, one thread" is the same
call on the calling thread, which is what a training step smaller than 4M elements gets (there the update
follows the backward pass's GEMMs, whose OpenBLAS threads keep spinning on the cores: see optim_fused).

Use `--sizes` to also time one Adam call per array size on one thread and split over threads (the
measurement behind `optim_fused.PARALLEL_MIN_SIZE`).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from common import label, measure, numpy_blas_threads, print_header, require_torch, write_results

import entrenar
import entrenar.optim
from entrenar.kernels import optim_fused, optim_reference

GOAL = 1.0
TENSORS = 20
SHAPE = (1000, 500)  # 20 x 500k = 10M parameters
LR = {"adamw": 1e-3, "adam": 1e-3, "sgd": 1e-2}
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-2  # AdamW's default; Adam and SGD run without weight decay, as their defaults
CHECK_STEPS = 3


def step_kernel(name: str, kernel: Any, params: list[np.ndarray],
                grads: list[np.ndarray]) -> Callable[[], None]:
    """One optimizer step with state arrays owned here: one group call (`adam_steps` / `sgd_steps`)
    where the module has it (optim_fused), else a loop of per-array calls (optim_reference)."""
    state = [[np.zeros_like(p) for _ in range(2)] for p in params]
    count = [0]
    group = hasattr(kernel, "adam_steps")

    if name == "sgd":
        sgd_hyper = {"lr": LR["sgd"], "momentum": MOMENTUM, "dampening": 0.0, "nesterov": False,
                     "weight_decay": 0.0, "maximize": False}  # fmt: skip

        def sgd() -> None:
            count[0] += 1
            first = count[0] == 1
            if group:
                rows = zip(params, grads, state, strict=True)
                kernel.sgd_steps([(p, g, buf, first) for p, g, (buf, _) in rows], **sgd_hyper)
                return
            for p, g, (buf, _) in zip(params, grads, state, strict=True):
                kernel.sgd_step(p, g, buf, first_step=first, **sgd_hyper)

        return sgd

    decoupled = name == "adamw"
    hyper = {"lr": LR[name], "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
             "weight_decay": WEIGHT_DECAY if decoupled else 0.0, "decoupled": decoupled, "amsgrad": False,
             "maximize": False}  # fmt: skip

    def adam() -> None:
        count[0] += 1
        if group:
            kernel.adam_steps([(p, g, m, v, None, count[0]) for p, g, (m, v) in zip(params, grads, state,
                                                                                    strict=True)], **hyper)
            return
        for p, g, (m, v) in zip(params, grads, state, strict=True):
            kernel.adam_step(p, g, m, v, None, step=count[0], **hyper)

    return adam


def step_entrenar_optim(name: str, params: list[np.ndarray], grads: list[np.ndarray]) -> Callable[[], None]:
    tensors = [entrenar.Tensor(p, requires_grad=True) for p in params]  # wraps, no copy
    for t, g in zip(tensors, grads, strict=True):
        t.grad = g
    opt: entrenar.optim.Optimizer
    if name == "sgd":
        opt = entrenar.optim.SGD(tensors, lr=LR["sgd"], momentum=MOMENTUM)
    elif name == "adam":
        opt = entrenar.optim.Adam(tensors, lr=LR["adam"])
    else:
        opt = entrenar.optim.AdamW(tensors, lr=LR["adamw"], weight_decay=WEIGHT_DECAY)
    return opt.step


def step_torch(torch: Any, name: str, params: list[np.ndarray], grads: list[np.ndarray],
               **impl: bool) -> Callable[[], Any]:
    tensors = [torch.nn.Parameter(torch.from_numpy(p)) for p in params]  # shares memory with `params`
    for t, g in zip(tensors, grads, strict=True):
        t.grad = torch.from_numpy(g)
    if name == "sgd":
        return torch.optim.SGD(tensors, lr=LR["sgd"], momentum=MOMENTUM, **impl).step
    if name == "adam":
        return torch.optim.Adam(tensors, lr=LR["adam"], **impl).step
    return torch.optim.AdamW(tensors, lr=LR["adamw"], weight_decay=WEIGHT_DECAY, **impl).step


def one_thread(step: Callable[[], None]) -> Callable[[], None]:
    """`step` on the calling thread (optim_fused.PARALLEL_MIN_SIZE out of reach for the call)."""

    def run() -> None:
        saved = optim_fused.PARALLEL_MIN_SIZE
        optim_fused.PARALLEL_MIN_SIZE = 1 << 62
        try:
            step()
        finally:
            optim_fused.PARALLEL_MIN_SIZE = saved

    return run


def run_optimizer(torch: Any, name: str, init: list[np.ndarray], grads: list[np.ndarray],
                  rounds: int, repeats: int) -> dict[str, Any]:
    """Build every implementation on its own copy of `init`, check they agree, time them interleaved."""
    params: dict[str, list[np.ndarray]] = {}
    steps: dict[str, Callable[[], Any]] = {}

    def fresh(key: str) -> list[np.ndarray]:
        params[key] = [p.copy() for p in init]
        return params[key]

    steps["entrenar fused"] = step_kernel(name, optim_fused, fresh("entrenar fused"), grads)
    serial = step_kernel(name, optim_fused, fresh("entrenar fused, one thread"), grads)
    steps["entrenar fused, one thread"] = one_thread(serial)
    steps["entrenar reference"] = step_kernel(name, optim_reference, fresh("entrenar reference"), grads)
    steps["entrenar.optim"] = step_entrenar_optim(name, fresh("entrenar.optim"), grads)
    steps["torch default"] = step_torch(torch, name, fresh("torch default"), grads)
    steps["torch foreach"] = step_torch(torch, name, fresh("torch foreach"), grads, foreach=True)
    steps["torch fused"] = step_torch(torch, name, fresh("torch fused"), grads, fused=True)

    # The same trajectory before anything is timed: a fast wrong answer is no result. The fused kernel
    # must equal the reference bit for bit; torch's kernels round differently (fused multiply-adds).
    for step in steps.values():
        for _ in range(CHECK_STEPS):
            step()
    ref = params["entrenar reference"]
    for key, ps in params.items():
        for i, (p, r) in enumerate(zip(ps, ref, strict=True)):
            if key in ("entrenar fused", "entrenar fused, one thread", "entrenar.optim"):
                np.testing.assert_array_equal(p, r, err_msg=f"{name}: {key} vs reference, tensor {i}")
            else:
                np.testing.assert_allclose(p, r, rtol=1e-5, atol=1e-6, err_msg=f"{name}: {key}, tensor {i}")

    # Rounds interleave the implementations so that a slow stretch of the machine hits all alike; each
    # round starts with untimed steps (pages the others' arrays pushed out come back first).
    samples: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            samples[key].append(measure(step, repeats=repeats, warmup=2).median_ms)
    ms = {k: float(np.median(v)) for k, v in samples.items()}
    base = ms["torch fused"]
    print(f"-- {name}: ms per step over {TENSORS} tensors of {SHAPE} float32 (median of {rounds} rounds)")
    for key in steps:
        print(f"   {key:<23} {ms[key]:9.3f} ms  ({ms[key] / base:5.2f}x torch fused)")
    ratios = {k: v / base for k, v in ms.items()}
    return {"ms": ms, "ratio_vs_torch_fused": ratios, "round_medians_ms": samples}


def time_sizes(repeats: int) -> dict[str, dict[str, float]]:
    """Microseconds for one AdamW call per array size, on one thread and split over the threads."""
    out: dict[str, dict[str, float]] = {}
    saved = optim_fused.PARALLEL_MIN_SIZE
    print(f"-- one adam_step call (float32, decoupled): one thread vs split over {numba_threads()} threads")
    try:
        for n in (1 << 10, 1 << 12, 1 << 13, 1 << 14, 1 << 15, 1 << 16, 1 << 18, 1 << 20):
            arrays = [np.full(n, 0.5, dtype=np.float32) for _ in range(4)]
            row = {}
            for how, threshold in (("serial", n + 1), ("parallel", 0)):
                optim_fused.PARALLEL_MIN_SIZE = threshold

                def call(a: list[np.ndarray] = arrays) -> None:
                    optim_fused.adam_step(a[0], a[1], a[2], a[3], None, step=1, lr=1e-3, beta1=0.9,
                                          beta2=0.999, eps=1e-8, weight_decay=1e-2, decoupled=True,
                                          amsgrad=False, maximize=False)

                row[how] = measure(call, repeats=repeats, inner=max(1, (1 << 16) // n), warmup=3).median_us
            out[str(n)] = row
            print(f"   n={n:>8}: serial {row['serial']:9.2f} us   parallel {row['parallel']:9.2f} us")
    finally:
        optim_fused.PARALLEL_MIN_SIZE = saved
    return out


def numba_threads() -> int:
    import numba

    return int(numba.get_num_threads())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per implementation")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps per round")
    parser.add_argument("--optimizers", default="adamw,adam,sgd", help="comma-separated subset")
    parser.add_argument("--sizes", action="store_true", help="also time one call per array size")
    parser.add_argument("--label", default=None, help="results name suffix (default: asis/unset)")
    args = parser.parse_args()
    torch = require_torch()
    if not optim_fused.available():
        raise SystemExit(f"entrenar's fused kernels are unavailable: {optim_fused.unavailable_reason()}")
    import numba

    threads = numpy_blas_threads()
    torch.set_num_threads(threads)
    numba.set_num_threads(min(threads, numba.get_num_threads()))  # at most NUMBA_NUM_THREADS
    info = print_header(f"optimizer step, {TENSORS * SHAPE[0] * SHAPE[1] / 1e6:.0f}M float32 parameters "
                        f"in {TENSORS} tensors")

    rng = np.random.default_rng(0)
    init = [rng.standard_normal(SHAPE, dtype=np.float32) for _ in range(TENSORS)]
    grads = [rng.standard_normal(SHAPE, dtype=np.float32) for _ in range(TENSORS)]
    # Compile (or load from numba's cache) outside the timed region.
    step_kernel("adamw", optim_fused, [p.copy() for p in init[:1]], grads[:1])()
    step_kernel("sgd", optim_fused, [p.copy() for p in init[:1]], grads[:1])()
    print(f"   torch {torch.__version__}, {torch.get_num_threads()} threads; numba {numba.__version__}, "
          f"{numba.get_num_threads()} threads")

    # Parallel kernels (numba's and torch's alike) slow down many times over when another process holds a
    # core, so the load is part of the result.
    load_before = os.getloadavg()
    results = {}
    for name in args.optimizers.split(","):
        results[name] = run_optimizer(torch, name, init, grads, args.rounds, args.repeats)
    sizes = time_sizes(repeats=20) if args.sizes else None
    load_after = os.getloadavg()
    print(f"   load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after, on "
          f"{os.cpu_count()} CPUs")

    payload: dict[str, Any] = {
        "benchmark": "optim",
        "workload": f"optimizer step over {TENSORS} float32 tensors of {SHAPE}",
        "goal_ratio": GOAL,
        "optimizers": results,
        "sizes_us": sizes,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numba_version": numba.__version__,
        "numba_threads": numba.get_num_threads(),
        "blas": info,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }
    if "adamw" in results:  # the headline, in the keys bench/table.py reads
        ms = results["adamw"]["ms"]
        payload |= {
            "entrenar_ms": ms["entrenar fused"],
            "torch_ms": ms["torch fused"],
            "numpy_ms": ms["entrenar reference"],
            "ratio": ms["entrenar fused"] / ms["torch fused"],
            "ratio_one_thread": ms["entrenar fused, one thread"] / ms["torch fused"],
            "ratio_entrenar_optim": ms["entrenar.optim"] / ms["torch fused"],
        }
        verdict = "meets" if payload["ratio_entrenar_optim"] <= GOAL else "misses"
        print(f"   AdamW: entrenar.optim / torch fused {payload['ratio_entrenar_optim']:.2f}x ({verdict} the "
              f"goal <= {GOAL}x); the kernels' group call {payload['ratio']:.2f}x, on one thread (a training "
              f"step under 4M elements) {payload['ratio_one_thread']:.2f}x")
    write_results(f"optim.{args.label or label()}", payload)


if __name__ == "__main__":
    main()
