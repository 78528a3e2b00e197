"""Learning-rate schedules as plain functions of the step (MLX style): ``lr = schedule(step, ...)``.

Each is a pure function of a 0-based step count and keyword hyper-parameters, so
``functools.partial(cosine_annealing, lr=0.1, T_max=1000)`` is a schedule, a factor for `LambdaLR` is
the same call with ``lr=1.0``, and a training loop can set ``group['lr'] = schedule(step)`` itself.
The scheduler objects of `entrenar.optim.lr_scheduler` compute through these functions where PyTorch's
own sequence is a closed form; they reproduce PyTorch's recursions where it is not.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Literal

__all__ = [
    "constant",
    "cosine_annealing",
    "exponential_decay",
    "one_cycle",
    "one_cycle_momentum",
    "step_decay",
    "warmup_cosine",
]

AnnealStrategy = Literal["cos", "linear"]


def _step(where: str, step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"{where}: step must be a non-negative integer, got {step!r}")
    return int(step)


def _positive_int(where: str, name: str, value: Any, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < (0 if allow_zero else 1):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{where}: {name} must be a {kind} integer, got {value!r}")
    return int(value)


def _number(where: str, name: str, value: Any, *, low: float | None = None, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{where}: {name} must be a finite real number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{where}: {name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    return float(value)


def constant(step: int, *, lr: float) -> float:
    """lr at every step."""
    _step("constant", step)
    return _number("constant", "lr", lr, low=0.0)


def step_decay(step: int, *, lr: float, step_size: int, gamma: float = 0.1) -> float:
    """lr · gamma^(step // step_size): multiplied by gamma every `step_size` steps (torch's StepLR)."""
    step = _step("step_decay", step)
    step_size = _positive_int("step_decay", "step_size", step_size)
    gamma = _number("step_decay", "gamma", gamma, low=0.0)
    return _number("step_decay", "lr", lr, low=0.0) * gamma ** (step // step_size)


def exponential_decay(step: int, *, lr: float, gamma: float) -> float:
    """lr · gamma^step (torch's ExponentialLR)."""
    step = _step("exponential_decay", step)
    lr = _number("exponential_decay", "lr", lr, low=0.0)
    return lr * _number("exponential_decay", "gamma", gamma, low=0.0) ** step


def cosine_annealing(step: int, *, lr: float, T_max: int, eta_min: float = 0.0) -> float:
    """eta_min + (lr - eta_min) · (1 + cos(π · step / T_max)) / 2 (torch's CosineAnnealingLR).

    As PyTorch's, the curve is periodic: after T_max steps it rises back towards lr. Use
    `warmup_cosine` (with warmup_steps=0) for a decay that stays at eta_min.
    """
    step = _step("cosine_annealing", step)
    T_max = _positive_int("cosine_annealing", "T_max", T_max)
    lr = _number("cosine_annealing", "lr", lr, low=0.0)
    eta_min = _number("cosine_annealing", "eta_min", eta_min, low=0.0)
    return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * step / T_max)) / 2


def warmup_cosine(
    step: int,
    *,
    lr: float,
    warmup_steps: int,
    total_steps: int,
    eta_min: float = 0.0,
    start_factor: float = 0.0,
    anneal_strategy: AnnealStrategy = "cos",
) -> float:
    """Linear warmup from lr · start_factor to lr over `warmup_steps`, then decay to eta_min at
    `total_steps` (cosine, or linear with ``anneal_strategy='linear'``), and eta_min after that.

    Steps s < W (W = warmup_steps):   lr · (start_factor + (1 - start_factor) · s / W)
    Steps W <= s < T (T = total_steps): cosine_annealing(s - W, lr=lr, T_max=T - W, eta_min=eta_min),
                                        or lr + (eta_min - lr) · (s - W) / (T - W) when linear
    Steps s >= T:                      eta_min

    With start_factor 0 (the default, as Hugging Face's schedules) the first step has learning rate 0.
    Within [0, T] this is torch's SequentialLR(LinearLR, CosineAnnealingLR) with milestone W.
    """
    where = "warmup_cosine"
    step = _step(where, step)
    warmup_steps = _positive_int(where, "warmup_steps", warmup_steps, allow_zero=True)
    total_steps = _positive_int(where, "total_steps", total_steps)
    if total_steps <= warmup_steps:
        raise ValueError(f"{where}: total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps})")
    lr = _number(where, "lr", lr, low=0.0)
    eta_min = _number(where, "eta_min", eta_min, low=0.0)
    start_factor = _number(where, "start_factor", start_factor, low=0.0)
    if start_factor > 1:
        raise ValueError(f"{where}: start_factor must be in [0, 1], got {start_factor!r}")
    if anneal_strategy not in ("cos", "linear"):
        raise ValueError(f"{where}: anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
    if step < warmup_steps:
        # torch's LinearLR closed form: base · (start + (end - start) · min(total, s) / total)
        return lr * (start_factor + (1.0 - start_factor) * step / warmup_steps)
    if step >= total_steps:
        return eta_min
    if anneal_strategy == "linear":
        return lr + (eta_min - lr) * (step - warmup_steps) / (total_steps - warmup_steps)
    return cosine_annealing(step - warmup_steps, lr=lr, T_max=total_steps - warmup_steps, eta_min=eta_min)


# ---------------------------------------------------------------------------------- one cycle
# (start, end) of each phase, named as the param-group keys OneCycleLR keeps; indexed by three_phase
ONE_CYCLE_LR_PHASES = {
    False: (("initial_lr", "max_lr"), ("max_lr", "min_lr")),
    True: (("initial_lr", "max_lr"), ("max_lr", "initial_lr"), ("initial_lr", "min_lr")),
}
ONE_CYCLE_MOMENTUM_PHASES = {
    False: (("max_momentum", "base_momentum"), ("base_momentum", "max_momentum")),
    True: (
        ("max_momentum", "base_momentum"), ("base_momentum", "max_momentum"), ("max_momentum", "max_momentum")
    ),
}


def anneal(start: float, end: float, pct: float, strategy: AnnealStrategy) -> float:
    """From `start` (pct 0) to `end` (pct 1): half a cosine, or a straight line (OneCycleLR's)."""
    if strategy == "cos":
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
    return (end - start) * pct + start


def one_cycle_phase(step: int, total_steps: int, pct_start: float, three_phase: bool) -> tuple[int, float]:
    """(phase index, fraction of that phase done) at `step` of a one-cycle schedule, as torch computes it.

    Two phases: up to step pct_start · total - 1, then down to total - 1. Three phases: up, back down to
    the initial value by 2 · pct_start · total - 2, then to the minimum at total - 1.
    """
    if three_phase:
        ends = [pct_start * total_steps - 1, 2 * pct_start * total_steps - 2, total_steps - 1.0]
    else:
        ends = [pct_start * total_steps - 1, total_steps - 1.0]
    start = 0.0
    for i, end in enumerate(ends):
        if step <= end or i == len(ends) - 1:
            # a phase of zero length (torch divides by zero there) is already complete
            return i, (step - start) / (end - start) if end != start else 1.0
        start = end
    raise AssertionError("unreachable: the last phase always matches")


def _check_one_cycle(
    where: str, step: Any, total_steps: Any, pct_start: Any, anneal_strategy: Any
) -> tuple[int, int, float]:
    step = _step(where, step)
    total_steps = _positive_int(where, "total_steps", total_steps)
    if step > total_steps:
        raise ValueError(f"{where}: step {step} is past total_steps ({total_steps})")
    pct_start = _number(where, "pct_start", pct_start, low=0.0)
    if pct_start > 1:
        raise ValueError(f"{where}: pct_start must be in [0, 1], got {pct_start!r}")
    if anneal_strategy not in ("cos", "linear"):
        raise ValueError(f"{where}: anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
    return step, total_steps, pct_start


def one_cycle(
    step: int,
    *,
    max_lr: float,
    total_steps: int,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    anneal_strategy: AnnealStrategy = "cos",
    three_phase: bool = False,
) -> float:
    """The 1cycle learning rate (torch's OneCycleLR): from initial = max_lr / div_factor up to max_lr
    over pct_start of the steps, then down to min = initial / final_div_factor at step total_steps - 1
    (three_phase: back to initial first, then to min)."""
    step, total_steps, pct_start = _check_one_cycle(
        "one_cycle", step, total_steps, pct_start, anneal_strategy
    )
    max_lr = _number("one_cycle", "max_lr", max_lr, low=0.0)
    div_factor = _number("one_cycle", "div_factor", div_factor, low=0.0, low_open=True)
    final_div_factor = _number("one_cycle", "final_div_factor", final_div_factor, low=0.0, low_open=True)
    initial = max_lr / div_factor
    points = {"initial_lr": initial, "max_lr": max_lr, "min_lr": initial / final_div_factor}
    i, pct = one_cycle_phase(step, total_steps, pct_start, three_phase)
    start, end = ONE_CYCLE_LR_PHASES[bool(three_phase)][i]
    return anneal(points[start], points[end], pct, anneal_strategy)


def one_cycle_momentum(
    step: int,
    *,
    total_steps: int,
    base_momentum: float = 0.85,
    max_momentum: float = 0.95,
    pct_start: float = 0.3,
    anneal_strategy: AnnealStrategy = "cos",
    three_phase: bool = False,
) -> float:
    """The momentum (or Adam's beta1) that OneCycleLR cycles opposite to the learning rate: from
    max_momentum down to base_momentum while the rate rises, and back up while it falls."""
    step, total_steps, pct_start = _check_one_cycle(
        "one_cycle_momentum", step, total_steps, pct_start, anneal_strategy
    )
    points = {
        "base_momentum": _number("one_cycle_momentum", "base_momentum", base_momentum, low=0.0),
        "max_momentum": _number("one_cycle_momentum", "max_momentum", max_momentum, low=0.0),
    }
    i, pct = one_cycle_phase(step, total_steps, pct_start, three_phase)
    start, end = ONE_CYCLE_MOMENTUM_PHASES[bool(three_phase)][i]
    return anneal(points[start], points[end], pct, anneal_strategy)
