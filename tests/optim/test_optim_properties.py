"""Property tests: the optimizers converge on random convex quadratics for learning rates drawn from a
range, and Adam solves the Rosenbrock problem."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entrenar import Tensor
from entrenar.optim import SGD, Adam, AdamW, Optimizer

SEEDS = st.integers(0, 2**32 - 1)
SETTINGS = settings(max_examples=12, deadline=None)


def _quadratic(seed: int, centered: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """f(x) = (x - x*)^T A (x - x*) / 2 with A symmetric, eigenvalues in [0.5, 2]; (A, x*, x0)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 7))
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    a = (q * rng.uniform(0.5, 2.0, n)) @ q.T
    x_star = np.zeros(n) if centered else rng.uniform(-2.0, 2.0, n)
    return a, x_star, rng.uniform(-2.0, 2.0, n)


def _minimize(make: Any, seed: int, steps: int, centered: bool = False) -> float:
    """Run the optimizer on a random quadratic; the final distance to the minimizer, relative to the start."""
    a, x_star, x0 = _quadratic(seed, centered)
    x = Tensor(x0.copy(), requires_grad=True)
    opt: Optimizer = make([x])
    for _ in range(steps):
        x.grad = a @ (x.data - x_star)
        opt.step()
    return float(np.linalg.norm(x.data - x_star) / max(1.0, np.linalg.norm(x0 - x_star)))


@SETTINGS
@given(seed=SEEDS, lr=st.floats(0.05, 0.9), momentum=st.sampled_from([0.0, 0.5]))
def test_sgd_converges_on_convex_quadratics(seed: int, lr: float, momentum: float) -> None:
    # stable for lr < 2 / L = 1; the slowest rate is 1 - 0.05 * 0.5 per step
    assert _minimize(lambda ps: SGD(ps, lr=lr, momentum=momentum), seed, 400) < 1e-3


@SETTINGS
@given(seed=SEEDS, lr=st.floats(0.02, 0.5), nesterov=st.booleans())
def test_sgd_heavy_ball_and_nesterov_converge(seed: int, lr: float, nesterov: bool) -> None:
    assert _minimize(lambda ps: SGD(ps, lr=lr, momentum=0.9, nesterov=nesterov), seed, 500) < 1e-3


# Adam with a constant rate reaches the minimum through slowly damped oscillations: over 200 seeds and
# rates in [0.02, 0.1], 1500 steps left at most 4.5e-3 of the starting distance (most runs far less).
ADAM_TOL = 2e-2


@SETTINGS
@given(seed=SEEDS, lr=st.floats(0.02, 0.1), amsgrad=st.booleans())
def test_adam_converges_on_convex_quadratics(seed: int, lr: float, amsgrad: bool) -> None:
    assert _minimize(lambda ps: Adam(ps, lr=lr, amsgrad=amsgrad), seed, 1500) < ADAM_TOL


@SETTINGS
@given(seed=SEEDS, lr=st.floats(0.02, 0.1), weight_decay=st.floats(0.0, 0.1))
def test_adamw_converges_on_convex_quadratics(seed: int, lr: float, weight_decay: float) -> None:
    """Decoupled decay pulls towards 0, so the minimum is put at the origin, where both agree."""
    made = lambda ps: AdamW(ps, lr=lr, weight_decay=weight_decay)  # noqa: E731
    assert _minimize(made, seed, 1500, centered=True) < ADAM_TOL


@SETTINGS
@given(seed=SEEDS, lr=st.floats(0.05, 0.5))
def test_sgd_maximize_ascends(seed: int, lr: float) -> None:
    """maximize=True climbs -f to its maximum at the same point."""
    a, x_star, x0 = _quadratic(seed)
    x = Tensor(x0.copy(), requires_grad=True)
    opt = SGD([x], lr=lr, maximize=True)
    for _ in range(400):
        x.grad = -(a @ (x.data - x_star))  # gradient of -f
        opt.step()
    np.testing.assert_allclose(x.data, x_star, atol=1e-3 * max(1.0, float(np.linalg.norm(x0 - x_star))))


def _rosenbrock_grad(p: np.ndarray) -> np.ndarray:
    """Gradient of (1 - x)^2 + 100 (y - x^2)^2."""
    x, y = p
    return np.array([-2.0 * (1.0 - x) - 400.0 * x * (y - x * x), 200.0 * (y - x * x)])


@pytest.mark.parametrize("lr", [0.01, 0.02])
def test_adam_solves_rosenbrock(lr: float) -> None:
    p = Tensor(np.array([-1.5, 2.0]), requires_grad=True)
    opt = Adam([p], lr=lr)
    for _ in range(5000):
        p.grad = _rosenbrock_grad(p.data)
        opt.step()
    np.testing.assert_allclose(p.data, [1.0, 1.0], atol=1e-3)
