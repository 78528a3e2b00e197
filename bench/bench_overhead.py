"""Per-op overhead: `y = (a * b).sum(); y.backward()` on 3-element tensors, entrenar vs PyTorch.

On tensors this small the arithmetic is nothing; what is timed is the framework: building two tape
nodes, the backward walk and the gradient buffers. Goal: entrenar at most 0.5x PyTorch's time.
"""

from __future__ import annotations

import argparse

import numpy as np
from common import label, measure, numpy_blas_threads, print_header, require_torch, write_results

import entrenar

GOAL = 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=200, help="timed samples")
    parser.add_argument("--inner", type=int, default=100, help="calls per sample")
    parser.add_argument("--label", default=None, help="results name suffix (default: asis/unset)")
    args = parser.parse_args()
    torch = require_torch()
    threads = numpy_blas_threads()
    torch.set_num_threads(threads)
    info = print_header("overhead: y = (a * b).sum(); y.backward(), 3 float32 elements")

    rng = np.random.default_rng(0)
    a_np = rng.standard_normal(3).astype(np.float32)
    b_np = rng.standard_normal(3).astype(np.float32)

    ea = entrenar.tensor(a_np, requires_grad=True)
    eb = entrenar.tensor(b_np, requires_grad=True)

    def step_entrenar() -> None:
        ea.grad = None
        eb.grad = None
        y = (ea * eb).sum()
        y.backward()

    ta = torch.tensor(a_np, requires_grad=True)
    tb = torch.tensor(b_np, requires_grad=True)

    def step_torch() -> None:
        ta.grad = None
        tb.grad = None
        y = (ta * tb).sum()
        y.backward()

    # Same numbers before timing anything: a fast wrong answer is no result.
    step_entrenar()
    step_torch()
    assert ea.grad is not None and eb.grad is not None
    assert ta.grad is not None and tb.grad is not None
    np.testing.assert_allclose(ea.grad, ta.grad.numpy(), rtol=1e-6)
    np.testing.assert_allclose(eb.grad, tb.grad.numpy(), rtol=1e-6)

    # Interleave the two so that a slow stretch of the machine hits both alike.
    t_e, t_t = [], []
    rounds = 4
    for _ in range(rounds):
        t_e.append(measure(step_entrenar, repeats=args.repeats // rounds, inner=args.inner, warmup=50))
        t_t.append(measure(step_torch, repeats=args.repeats // rounds, inner=args.inner, warmup=50))
    e_us = float(np.median([t.median_us for t in t_e]))
    t_us = float(np.median([t.median_us for t in t_t]))
    ratio = e_us / t_us
    print(f"   torch {torch.__version__}, torch threads {torch.get_num_threads()}")
    print(f"   entrenar {e_us:8.2f} us")
    print(f"   torch    {t_us:8.2f} us")
    verdict = "meets" if ratio <= GOAL else "misses"
    print(f"   ratio entrenar/torch {ratio:.2f}x ({verdict} the goal <= {GOAL}x)")
    name = f"overhead.{args.label or label()}"
    write_results(
        name,
        {
            "benchmark": "overhead",
            "workload": "y = (a * b).sum(); y.backward(), 3 float32 elements",
            "entrenar_us": e_us,
            "torch_us": t_us,
            "ratio": ratio,
            "goal_ratio": GOAL,
            "torch_version": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "blas": info,
            "timings": {"entrenar": t_e, "torch": t_t},
        },
    )


if __name__ == "__main__":
    main()
