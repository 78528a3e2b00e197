"""Learning-rate schedules (functions and scheduler objects) against torch.optim.lr_scheduler's sequences."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from optim_helpers import make_params

from entrenar.optim import (
    SGD,
    Adam,
    CosineAnnealingLR,
    ExponentialLR,
    LambdaLR,
    OneCycleLR,
    Optimizer,
    StepLR,
    WarmupCosineLR,
    schedules,
)
from entrenar.optim.lr_scheduler import LRScheduler

LRS = (0.1, 0.03)
TS = torch.optim.lr_scheduler


def _pair(cls: type = SGD, **kwargs: Any) -> tuple[Optimizer, torch.optim.Optimizer]:
    """Two param groups with different learning rates, in entrenar and in torch."""
    ours, theirs = make_params([(3,), (2, 2)], seed=0)
    groups = [{"params": [ours[0]], "lr": LRS[0]}, {"params": [ours[1]], "lr": LRS[1]}]
    tgroups = [{"params": [theirs[0]], "lr": LRS[0]}, {"params": [theirs[1]], "lr": LRS[1]}]
    tcls = {SGD: torch.optim.SGD, Adam: torch.optim.Adam}[cls]
    return cls(groups, **kwargs), tcls(tgroups, **kwargs)


def _torch_sequence(tsched: Any, steps: int) -> list[list[float]]:
    seq = [list(tsched.get_last_lr())]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that optimizer.step() was never called
        for _ in range(steps):
            tsched.step()
            seq.append(list(tsched.get_last_lr()))
    return seq


def _our_sequence(sched: LRScheduler, steps: int) -> list[list[float]]:
    seq = [sched.get_last_lr()]
    for _ in range(steps):
        sched.step()
        seq.append(sched.get_last_lr())
        assert seq[-1] == [g["lr"] for g in sched.optimizer.param_groups]
    return seq


def _close(ours: Any, theirs: Any, what: str) -> None:
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-12, atol=1e-16, err_msg=what)


CASES: list[tuple[str, Callable[[Optimizer], LRScheduler], Callable[[Any], Any], int]] = [
    ("step", lambda o: StepLR(o, step_size=7, gamma=0.5), lambda o: TS.StepLR(o, 7, gamma=0.5), 60),
    ("step1", lambda o: StepLR(o, step_size=1, gamma=0.9), lambda o: TS.StepLR(o, 1, gamma=0.9), 30),
    ("exp", lambda o: ExponentialLR(o, gamma=0.95), lambda o: TS.ExponentialLR(o, gamma=0.95), 80),
    (
        "cosine",
        lambda o: CosineAnnealingLR(o, T_max=20, eta_min=0.001),
        lambda o: TS.CosineAnnealingLR(o, T_max=20, eta_min=0.001),
        95,  # more than two periods: the curve rises again after T_max, as torch's does
    ),
    ("cosine0", lambda o: CosineAnnealingLR(o, T_max=1), lambda o: TS.CosineAnnealingLR(o, T_max=1), 10),
    (
        "lambda",
        lambda o: LambdaLR(o, lambda e: 0.97**e),
        lambda o: TS.LambdaLR(o, lambda e: 0.97**e),
        50,
    ),
    (
        "lambdas",
        lambda o: LambdaLR(o, [lambda e: 1 / (e + 1), lambda e: 0.5 + (e % 3)]),
        lambda o: TS.LambdaLR(o, [lambda e: 1 / (e + 1), lambda e: 0.5 + (e % 3)]),
        20,
    ),
]


@pytest.mark.parametrize(("name", "make", "make_torch", "steps"), CASES, ids=[c[0] for c in CASES])
def test_scheduler_sequence(name: str, make: Callable, make_torch: Callable, steps: int) -> None:
    opt, topt = _pair()
    _close(_our_sequence(make(opt), steps), _torch_sequence(make_torch(topt), steps), name)
    assert [g["initial_lr"] for g in opt.param_groups] == list(LRS)


@pytest.mark.parametrize(
    ("fn", "make_torch", "steps"),
    [
        (functools.partial(schedules.step_decay, step_size=7, gamma=0.5), lambda o: TS.StepLR(o, 7, 0.5), 60),
        (functools.partial(schedules.exponential_decay, gamma=0.95), lambda o: TS.ExponentialLR(o, 0.95), 80),
        (
            functools.partial(schedules.cosine_annealing, T_max=20, eta_min=0.001),
            lambda o: TS.CosineAnnealingLR(o, 20, eta_min=0.001),
            95,
        ),
        (schedules.constant, lambda o: TS.LambdaLR(o, lambda e: 1.0), 5),
    ],
)
def test_schedule_function_equals_torch_sequence(fn: Callable, make_torch: Callable, steps: int) -> None:
    """The closed forms agree with torch's recursions to 1e-12 (relative)."""
    _, topt = _pair()
    expected = _torch_sequence(make_torch(topt), steps)
    ours = [[fn(t, lr=lr) for lr in LRS] for t in range(steps + 1)]
    _close(ours, expected, getattr(fn, "func", fn).__name__)


@pytest.mark.parametrize(("warmup", "total", "eta_min", "start"), [(10, 100, 0.0, 0.1), (5, 40, 1e-3, 0.25)])
def test_warmup_cosine_equals_sequential_linear_then_cosine(
    warmup: int, total: int, eta_min: float, start: float
) -> None:
    opt, topt = _pair()
    sched = WarmupCosineLR(opt, warmup_steps=warmup, total_steps=total, eta_min=eta_min, start_factor=start)
    tsched = TS.SequentialLR(
        topt,
        [
            TS.LinearLR(topt, start_factor=start, total_iters=warmup),
            TS.CosineAnnealingLR(topt, T_max=total - warmup, eta_min=eta_min),
        ],
        milestones=[warmup],
    )
    _close(_our_sequence(sched, total), _torch_sequence(tsched, total), "warmup cosine")
    sched.step()
    assert sched.get_last_lr() == [eta_min, eta_min]  # stays at eta_min after total_steps


@pytest.mark.parametrize("anneal", ["cos", "linear"])
def test_warmup_schedule_equals_lambdalr_with_the_same_function(anneal: str) -> None:
    opt, topt = _pair()
    kw: dict[str, Any] = {"warmup_steps": 6, "total_steps": 50, "anneal_strategy": anneal}
    sched = WarmupCosineLR(opt, **kw)
    tsched = TS.LambdaLR(topt, functools.partial(schedules.warmup_cosine, lr=1.0, **kw))
    _close(_our_sequence(sched, 60), _torch_sequence(tsched, 60), f"warmup {anneal}")
    assert sched.get_last_lr() == [0.0, 0.0]


def test_warmup_cosine_values() -> None:
    f = functools.partial(schedules.warmup_cosine, lr=1.0, warmup_steps=4, total_steps=12)
    assert [f(s) for s in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert f(8) == pytest.approx(0.5)
    assert f(12) == f(100) == 0.0
    no_warmup = schedules.warmup_cosine(3, lr=1.0, warmup_steps=0, total_steps=4)
    assert no_warmup == pytest.approx(0.5 - 0.5**0.5 / 2)


def _id(kwargs: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in kwargs.items())


ONE_CYCLE_CASES: list[dict[str, Any]] = [
    {"total_steps": 100},
    {"total_steps": 57, "anneal_strategy": "linear"},
    {"total_steps": 90, "three_phase": True},
    {"epochs": 4, "steps_per_epoch": 15, "pct_start": 0.25, "div_factor": 10.0, "final_div_factor": 100.0},
    {"total_steps": 40, "base_momentum": 0.8, "max_momentum": 0.9, "three_phase": True,
     "anneal_strategy": "linear"},
    {"total_steps": 30, "cycle_momentum": False},
]


@pytest.mark.parametrize("cls", [SGD, Adam])
@pytest.mark.parametrize("kwargs", ONE_CYCLE_CASES, ids=_id)
def test_one_cycle_matches_torch_including_momentum(cls: type, kwargs: dict[str, Any]) -> None:
    opt, topt = _pair(cls, **({"momentum": 0.9} if cls is SGD else {}))
    max_lr = [0.5, 0.2]
    sched = OneCycleLR(opt, max_lr=max_lr, **kwargs)
    tsched = TS.OneCycleLR(topt, max_lr=max_lr, **kwargs)
    total = kwargs.get("total_steps") or kwargs["epochs"] * kwargs["steps_per_epoch"]
    key = "momentum" if cls is SGD else "betas"
    for t in range(total + 1):
        if t:
            sched.step()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tsched.step()
        _close(sched.get_last_lr(), tsched.get_last_lr(), f"lr at step {t}")
        for group, tgroup in zip(opt.param_groups, topt.param_groups, strict=True):
            _close(group[key], tgroup[key], f"{key} at step {t}")
            for k in ("initial_lr", "max_lr", "min_lr"):
                assert group[k] == tgroup[k]
    with pytest.raises(ValueError, match=f"tried to step {total + 1} times; total_steps is {total}"):
        sched.step()


@pytest.mark.parametrize("kwargs", ONE_CYCLE_CASES[:5], ids=_id)
def test_one_cycle_functions_match_torch(kwargs: dict[str, Any]) -> None:
    _, topt = _pair(SGD, momentum=0.9)
    tsched = TS.OneCycleLR(topt, max_lr=0.4, **kwargs)
    total = kwargs.get("total_steps") or kwargs["epochs"] * kwargs["steps_per_epoch"]
    shared = {k: kwargs[k] for k in ("pct_start", "anneal_strategy", "three_phase") if k in kwargs}
    lr_kw = {k: kwargs[k] for k in ("div_factor", "final_div_factor") if k in kwargs}
    m_kw = {k: kwargs[k] for k in ("base_momentum", "max_momentum") if k in kwargs}
    for t in range(total + 1):
        if t:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tsched.step()
        lr = schedules.one_cycle(t, max_lr=0.4, total_steps=total, **shared, **lr_kw)
        momentum = schedules.one_cycle_momentum(t, total_steps=total, **shared, **m_kw)
        _close(lr, tsched.get_last_lr()[0], f"one_cycle at {t}")
        _close(momentum, topt.param_groups[0]["momentum"], f"one_cycle_momentum at {t}")


def test_schedulers_do_not_patch_the_optimizer() -> None:
    opt, _ = _pair()
    attrs = dict(vars(opt))
    OneCycleLR(opt, max_lr=0.1, total_steps=10).step()
    assert vars(opt).keys() == attrs.keys()
    assert "step" not in vars(opt)
    assert type(opt).step is SGD.step


def test_initial_lr_is_kept_when_present() -> None:
    """A second scheduler takes its base rates from 'initial_lr', as in torch."""
    opt, _ = _pair()
    ExponentialLR(opt, gamma=0.5).step()
    sched = StepLR(opt, step_size=2)
    assert sched.base_lrs == list(LRS)


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda o: StepLR(o, step_size=0), ValueError, "StepLR: step_size must be a positive integer"),
        (lambda o: StepLR(o, step_size=2.0), ValueError, "step_size must be a positive integer"),
        (lambda o: StepLR(o, step_size=2, gamma=-1.0), ValueError, "gamma must be >= 0"),
        (lambda o: ExponentialLR(o, gamma=float("inf")), ValueError, "gamma must be finite"),
        (lambda o: CosineAnnealingLR(o, T_max=0), ValueError, "T_max must be a positive integer"),
        (lambda o: CosineAnnealingLR(o, T_max=5, eta_min=-0.1), ValueError, "eta_min must be >= 0"),
        (lambda o: LambdaLR(o, [lambda e: 1.0]), ValueError, "lr_lambda has 1 values, the optimizer has 2"),
        (lambda o: LambdaLR(o, 0.5), TypeError, r"lr_lambda\[0\] must be callable"),
        (lambda o: WarmupCosineLR(o, 10, 10), ValueError, r"total_steps \(10\) must exceed warmup_steps"),
        (lambda o: WarmupCosineLR(o, -1, 10), ValueError, "warmup_steps must be a non-negative integer"),
        (lambda o: WarmupCosineLR(o, 1, 10, start_factor=2.0), ValueError, r"start_factor must be in \["),
        (lambda o: WarmupCosineLR(o, 1, 10, anneal_strategy="exp"), ValueError, "anneal_strategy must be"),
        (lambda o: OneCycleLR(o, max_lr=0.1), ValueError, "either total_steps or both epochs"),
        (lambda o: OneCycleLR(o, max_lr=0.1, total_steps=0), ValueError, "total_steps must be a positive"),
        (lambda o: OneCycleLR(o, 0.1, epochs=2, steps_per_epoch=-1), ValueError, "steps_per_epoch must be"),
        (lambda o: OneCycleLR(o, 0.1, 10, pct_start=1.5), ValueError, "pct_start must be <= 1"),
        (lambda o: OneCycleLR(o, 0.1, 10, anneal_strategy="cosine"), ValueError, "anneal_strategy must be"),
        (lambda o: OneCycleLR(o, [0.1], 10), ValueError, "max_lr has 1 values, the optimizer has 2"),
        (lambda o: OneCycleLR(o, 0.1, 10, div_factor=0.0), ValueError, "div_factor must be > 0"),
        (lambda o: StepLR(object(), 3), TypeError, "StepLR: expected an Optimizer"),  # type: ignore[arg-type]
    ],
)
def test_scheduler_bad_arguments(make: Callable, error: type, match: str) -> None:
    opt, _ = _pair()
    lrs = [g["lr"] for g in opt.param_groups]
    with pytest.raises(error, match=match):
        make(opt)
    assert [g["lr"] for g in opt.param_groups] == lrs


def test_one_cycle_needs_momentum_to_cycle() -> None:
    class Plain(SGD):
        """An optimizer without a 'momentum' default."""

        def __init__(self, params: Any) -> None:
            super().__init__(params, lr=0.1)
            del self.defaults["momentum"]

    p = make_params([(2,)], seed=0)[0]
    with pytest.raises(ValueError, match="cycle_momentum needs an optimizer with 'momentum' or 'betas'"):
        OneCycleLR(Plain(p), max_lr=0.1, total_steps=5)
    OneCycleLR(Plain(p), max_lr=0.1, total_steps=5, cycle_momentum=False)


def test_scheduler_rejects_a_changed_group_count() -> None:
    opt, _ = _pair()
    sched = StepLR(opt, 3)
    opt.add_param_group({"params": make_params([(2,)], seed=1)[0]})
    with pytest.raises(ValueError, match="made for 2 param groups, the optimizer now has 3"):
        sched.step()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: schedules.step_decay(-1, lr=0.1, step_size=2), "step must be a non-negative integer"),
        (lambda: schedules.cosine_annealing(1, lr=0.1, T_max=0), "T_max must be a positive integer"),
        (lambda: schedules.constant(0, lr=-1.0), "lr must be >= 0"),
        (lambda: schedules.one_cycle(11, max_lr=0.1, total_steps=10), "step 11 is past total_steps"),
        (lambda: schedules.one_cycle_momentum(0, total_steps=10, pct_start=-0.1), "pct_start must be >= 0"),
    ],
)
def test_schedule_function_bad_arguments(call: Callable[[], float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
