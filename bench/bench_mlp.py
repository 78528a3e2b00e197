"""One SGD training step of an MLP 784-512-512-10 (ReLU), batch 128, float32, cross-entropy.

entrenar, PyTorch and a hand-written NumPy version each run forward + backward + update from the
same initial weights (PyTorch's nn.Linear init drawn from one np.random.Generator). The NumPy line is
the floor a NumPy autograd can hope for. Goal: entrenar at most 0.7x PyTorch's time.
"""

from __future__ import annotations

import argparse
import itertools
import math
from typing import Any

import numpy as np
from common import label, measure, numpy_blas_threads, print_header, require_torch, write_results

import entrenar
import entrenar.functional as F

GOAL = 0.7
SIZES = (784, 512, 512, 10)
BATCH = 128
LR = 0.01


def init_params(rng: np.random.Generator) -> list[np.ndarray]:
    """[W1, b1, W2, b2, W3, b3], W (out, in), as torch.nn.Linear: U(-1/sqrt(in), 1/sqrt(in))."""
    params = []
    for fan_in, fan_out in itertools.pairwise(SIZES):
        bound = 1.0 / math.sqrt(fan_in)
        params.append(rng.uniform(-bound, bound, (fan_out, fan_in)).astype(np.float32))
        params.append(rng.uniform(-bound, bound, (fan_out,)).astype(np.float32))
    return params


class EntrenarMLP:
    def __init__(self, init: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> None:
        self.params = [entrenar.tensor(p, requires_grad=True) for p in init]
        self.x = entrenar.Tensor(x)
        self.y = entrenar.Tensor(y)

    def step(self) -> float:
        h = self.x
        for i in range(3):
            h = F.linear(h, self.params[2 * i], self.params[2 * i + 1])
            if i < 2:
                h = F.relu(h)
        loss = F.cross_entropy(h, self.y)
        loss.backward()
        lr = np.float32(LR)
        for p in self.params:
            assert p.grad is not None
            p.data -= lr * p.grad
            p.grad = None
        return float(loss.item())


class TorchMLP:
    def __init__(self, torch: Any, init: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> None:
        self.torch = torch
        self.params = [torch.tensor(p, requires_grad=True) for p in init]
        self.x = torch.from_numpy(x)
        self.y = torch.from_numpy(y)

    def step(self) -> float:
        torch = self.torch
        h = self.x
        for i in range(3):
            h = torch.nn.functional.linear(h, self.params[2 * i], self.params[2 * i + 1])
            if i < 2:
                h = torch.relu(h)
        loss = torch.nn.functional.cross_entropy(h, self.y)
        loss.backward()
        with torch.no_grad():
            for p in self.params:
                p.sub_(p.grad, alpha=LR)
                p.grad = None
        return float(loss.item())


class NumpyMLP:
    """Forward, backward and update written out by hand, in place where NumPy allows."""

    def __init__(self, init: list[np.ndarray], x: np.ndarray, y: np.ndarray) -> None:
        self.params = [p.copy() for p in init]
        self.x = x
        self.y = y
        self.rows = np.arange(len(y))

    def step(self) -> float:
        w1, b1, w2, b2, w3, b3 = self.params
        x, y, n = self.x, self.y, len(self.y)
        z1 = x @ w1.T  # (B, 784) -> (B, 512)
        z1 += b1
        h1 = np.maximum(z1, 0)
        z2 = h1 @ w2.T  # (B, 512)
        z2 += b2
        h2 = np.maximum(z2, 0)
        z3 = h2 @ w3.T  # (B, 10)
        z3 += b3
        z3 -= z3.max(axis=1, keepdims=True)
        e = np.exp(z3)
        s = e.sum(axis=1, keepdims=True)
        loss = float(np.mean(np.log(s[:, 0]) - z3[self.rows, y]))
        g3 = e / s  # softmax - onehot, over the batch: d loss / d z3
        g3[self.rows, y] -= 1
        g3 /= np.float32(n)
        gw3 = g3.T @ h2
        gb3 = g3.sum(axis=0)
        g2 = g3 @ w3
        g2 *= z2 > 0
        gw2 = g2.T @ h1
        gb2 = g2.sum(axis=0)
        g1 = g2 @ w2
        g1 *= z1 > 0
        gw1 = g1.T @ x
        gb1 = g1.sum(axis=0)
        lr = np.float32(LR)
        for p, g in zip(self.params, (gw1, gb1, gw2, gb2, gw3, gb3), strict=True):
            g *= lr
            p -= g
        return loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=60, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per framework")
    parser.add_argument("--label", default=None, help="results name suffix (default: asis/unset)")
    args = parser.parse_args()
    torch = require_torch()
    torch.set_num_threads(numpy_blas_threads())
    info = print_header(f"MLP {'-'.join(map(str, SIZES))}, batch {BATCH}, float32: one SGD step")

    rng = np.random.default_rng(0)
    init = init_params(rng)
    x = rng.standard_normal((BATCH, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], BATCH).astype(np.int64)
    runs = {
        "entrenar": EntrenarMLP(init, x, y),
        "torch": TorchMLP(torch, init, x, y),
        "numpy": NumpyMLP(init, x, y),
    }

    # The three must train alike before any is timed: same losses over a few steps.
    losses = {k: [m.step() for _ in range(3)] for k, m in runs.items()}
    for k in ("entrenar", "numpy"):
        np.testing.assert_allclose(losses[k], losses["torch"], rtol=1e-4, err_msg=f"{k} vs torch losses")

    samples: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.rounds):
        for k, m in runs.items():
            samples[k].append(measure(m.step, repeats=args.repeats, warmup=3).median_ms)
    ms = {k: float(np.median(v)) for k, v in samples.items()}
    ratio = ms["entrenar"] / ms["torch"]
    print(f"   torch {torch.__version__}, torch threads {torch.get_num_threads()}")
    for k in runs:
        print(f"   {k:<9} {ms[k]:8.3f} ms  ({ms[k] / ms['torch']:.2f}x torch)")
    verdict = "meets" if ratio <= GOAL else "misses"
    print(f"   ratio entrenar/torch {ratio:.2f}x ({verdict} the goal <= {GOAL}x)")
    write_results(
        f"mlp.{args.label or label()}",
        {
            "benchmark": "mlp",
            "workload": f"MLP {'-'.join(map(str, SIZES))}, batch {BATCH}, float32, SGD step",
            "entrenar_ms": ms["entrenar"],
            "torch_ms": ms["torch"],
            "numpy_ms": ms["numpy"],
            "ratio": ratio,
            "numpy_ratio": ms["numpy"] / ms["torch"],
            "goal_ratio": GOAL,
            "torch_version": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "blas": info,
            "round_medians_ms": samples,
        },
    )


if __name__ == "__main__":
    main()
