"""The built-in demo: an MLP learns scikit-learn's bundled 8x8 handwritten digits.

Everything is entrenar: the parameters are Tensors that require grad, the forward pass is
`entrenar.functional` (linear, relu, cross_entropy), gradients come from the tape, and the update is
a few lines of SGD with momentum written on `.data` with `.grad` (as `torch.optim.SGD` does it):

    v <- momentum * v + grad
    p <- p - lr * v

The data split, the initialisation and the batch order all come from one `np.random.Generator`
seeded by `DemoConfig.seed`, so a seed gives the same run every time.
"""

from __future__ import annotations

import importlib
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

import entrenar.functional as F
from entrenar.autograd.tape import no_grad
from entrenar.tensor import Tensor

__all__ = [
    "MLP",
    "DemoConfig",
    "DemoResult",
    "EpochStats",
    "MissingDependencyError",
    "load_digits_split",
    "run_demo",
]

INSTALL_HINT = "pip install 'entrenar[demo]'"


class MissingDependencyError(RuntimeError):
    """An optional dependency that the demo needs is not installed."""


@dataclass(frozen=True)
class DemoConfig:
    """Hyper-parameters of the demo run; validated on construction."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    hidden: int = 128
    seed: int = 0
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.hidden < 1:
            raise ValueError(f"hidden must be at least 1, got {self.hidden}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {self.test_fraction}")


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float  # mean cross-entropy over the epoch's mini-batches, weighted by batch size
    train_acc: float  # accuracy on the training batches as they were seen during the epoch
    test_acc: float  # accuracy on the held-out split after the epoch
    samples_per_s: float  # training samples per second (forward + backward + update)
    seconds: float


@dataclass
class DemoResult:
    config: DemoConfig
    n_train: int
    n_test: int
    epochs: list[EpochStats] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def test_acc(self) -> float:
        return self.epochs[-1].test_acc


# --------------------------------------------------------------------------------------------- data
def load_digits_split(
    rng: np.random.Generator, test_fraction: float = 0.2
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 1797 8x8 digits, split per class into train and test (stratified).

    Pixels are standardised with the training split's per-pixel mean and standard deviation (plus
    0.1, so that the always-blank border pixels stay near zero). Returns x_train (N, 64) float32,
    y_train (N,) int64, x_test, y_test.
    """
    try:
        datasets = importlib.import_module("sklearn.datasets")
    except ImportError as e:
        raise MissingDependencyError(
            f"the demo trains on scikit-learn's bundled digits, but scikit-learn is not installed "
            f"({e}). Install it with:  {INSTALL_HINT}"
        ) from e
    digits = datasets.load_digits()
    x = np.asarray(digits.data, dtype=np.float32) / np.float32(16.0)  # (1797, 64) in [0, 1]
    y = np.asarray(digits.target, dtype=np.int64)
    test_idx: list[np.ndarray] = []
    train_idx: list[np.ndarray] = []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        n_test = round(len(members) * test_fraction)
        test_idx.append(members[:n_test])
        train_idx.append(members[n_test:])
    tr = rng.permutation(np.concatenate(train_idx))
    te = np.sort(np.concatenate(test_idx))
    mean = x[tr].mean(axis=0)
    scale = x[tr].std(axis=0) + np.float32(0.1)
    x = ((x - mean) / scale).astype(np.float32)
    return x[tr], y[tr], x[te], y[te]


# -------------------------------------------------------------------------------------------- model
def _linear_params(rng: np.random.Generator, fan_in: int, fan_out: int) -> tuple[Tensor, Tensor]:
    """Weight (out, in) and bias (out,) as `torch.nn.Linear` initialises them.

    kaiming_uniform_(a=sqrt(5)) gives the weight bound gain * sqrt(3 / fan_in) with
    gain = sqrt(2 / (1 + a^2)) = sqrt(1/3), i.e. 1 / sqrt(fan_in); the bias uses the same bound.
    """
    bound = 1.0 / math.sqrt(fan_in)
    w = rng.uniform(-bound, bound, size=(fan_out, fan_in)).astype(np.float32)
    b = rng.uniform(-bound, bound, size=(fan_out,)).astype(np.float32)
    return Tensor(w, requires_grad=True), Tensor(b, requires_grad=True)


class MLP:
    """in -> hidden -> hidden -> out with ReLU between layers; parameters in `self.params`."""

    def __init__(self, rng: np.random.Generator, sizes: tuple[int, ...]) -> None:
        self.sizes = sizes
        self.params: list[Tensor] = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            self.params.extend(_linear_params(rng, fan_in, fan_out))

    def __call__(self, x: Tensor) -> Tensor:
        h = x  # (B, in)
        n_layers = len(self.params) // 2
        for i in range(n_layers):
            h = F.linear(h, self.params[2 * i], self.params[2 * i + 1])
            if i < n_layers - 1:
                h = F.relu(h)
        return h  # (B, out) logits


def _sgd_momentum_(params: list[Tensor], velocity: list[np.ndarray], lr: float, momentum: float) -> None:
    """One in-place step of SGD with momentum (PyTorch's form, no dampening); clears the grads."""
    lr32 = np.float32(lr)
    mom32 = np.float32(momentum)
    for p, v in zip(params, velocity, strict=True):
        if p.grad is None:
            continue
        v *= mom32
        v += p.grad
        p.data -= lr32 * v
        p.grad = None


def _accuracy(model: MLP, x: np.ndarray, y: np.ndarray) -> float:
    with no_grad():
        logits = model(Tensor(x))
    return float(np.mean(logits.data.argmax(axis=1) == y))


# ----------------------------------------------------------------------------------------- training
def run_demo(config: DemoConfig | None = None, log: Callable[[str], None] | None = print) -> DemoResult:
    """Train the demo MLP and return per-epoch statistics; `log` receives each printed line."""
    cfg = config or DemoConfig()
    say: Callable[[str], None] = log if log is not None else (lambda _: None)
    rng = np.random.default_rng(cfg.seed)
    x_train, y_train, x_test, y_test = load_digits_split(rng, cfg.test_fraction)
    n_classes = 10
    model = MLP(rng, (x_train.shape[1], cfg.hidden, cfg.hidden, n_classes))
    velocity = [np.zeros_like(p.data) for p in model.params]
    n = len(x_train)
    n_params = sum(p.numel() for p in model.params)
    arch = "-".join(str(s) for s in model.sizes)
    say(
        f"entrenar demo: MLP {arch} (ReLU, {n_params:,} parameters) on scikit-learn's 8x8 digits, "
        f"{n} train / {len(x_test)} test"
    )
    say(
        f"  SGD lr {cfg.lr:g} momentum {cfg.momentum:g}, batch {cfg.batch_size}, "
        f"{cfg.epochs} epochs, seed {cfg.seed}"
    )
    result = DemoResult(cfg, n_train=n, n_test=len(x_test))
    width = len(str(cfg.epochs))
    start = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        order = rng.permutation(n)
        loss_sum = 0.0
        correct = 0
        for s in range(0, n, cfg.batch_size):
            idx = order[s : s + cfg.batch_size]
            xb = Tensor(x_train[idx])  # (B, 64)
            yb = y_train[idx]  # (B,)
            logits = model(xb)  # (B, 10)
            loss = F.cross_entropy(logits, Tensor(yb))
            loss.backward()
            _sgd_momentum_(model.params, velocity, cfg.lr, cfg.momentum)
            loss_sum += float(loss.item()) * len(idx)
            correct += int(np.sum(logits.data.argmax(axis=1) == yb))
        train_time = time.perf_counter() - t0
        test_acc = _accuracy(model, x_test, y_test)
        stats = EpochStats(
            epoch=epoch,
            train_loss=loss_sum / n,
            train_acc=correct / n,
            test_acc=test_acc,
            samples_per_s=n / train_time if train_time > 0 else float("inf"),
            seconds=time.perf_counter() - t0,
        )
        result.epochs.append(stats)
        say(
            f"epoch {epoch:>{width}}/{cfg.epochs}  loss {stats.train_loss:.4f}  "
            f"train acc {100 * stats.train_acc:6.2f}%  test acc {100 * stats.test_acc:6.2f}%  "
            f"{stats.samples_per_s:,.0f} samples/s"
        )
    result.seconds = time.perf_counter() - start
    last = result.epochs[-1]
    n_right = round(last.test_acc * len(x_test))
    say(
        f"done in {result.seconds:.2f} s: test accuracy {100 * last.test_acc:.2f}% "
        f"({n_right}/{len(x_test)}), final train loss {last.train_loss:.4f}"
    )
    return result
