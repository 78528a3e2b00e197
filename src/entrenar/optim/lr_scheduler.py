"""Learning-rate scheduler objects with PyTorch's interface: `step()`, `get_last_lr()`, `state_dict()`.

A scheduler writes each param group's 'lr' (and, on creation, 'initial_lr' if the group has none) and
nothing else of the optimizer: it does not wrap or patch `optimizer.step`. Call `scheduler.step()`
after `optimizer.step()`, once per step (or epoch); creating the scheduler sets the step-0 rates.

StepLR, ExponentialLR and CosineAnnealingLR reproduce PyTorch's recursive ("chainable") updates of
the current 'lr', so their sequences equal torch's to rounding; LambdaLR, WarmupCosineLR and
OneCycleLR compute each rate afresh from the group's base rate (through `entrenar.optim.schedules`).
Unlike PyTorch, `step()` takes no epoch argument and there is no `last_epoch` constructor argument:
resume with `load_state_dict`.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from entrenar.optim.optimizer import Optimizer, check_bool, check_real
from entrenar.optim.schedules import (
    ONE_CYCLE_LR_PHASES,
    ONE_CYCLE_MOMENTUM_PHASES,
    AnnealStrategy,
    anneal,
    one_cycle_phase,
    warmup_cosine,
)

__all__ = [
    "CosineAnnealingLR",
    "ExponentialLR",
    "LRScheduler",
    "LambdaLR",
    "OneCycleLR",
    "StepLR",
    "WarmupCosineLR",
]


def _positive_int(where: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _per_group(where: str, name: str, value: Any, n_groups: int) -> list[Any]:
    """One value per param group: a list/tuple of exactly that many, or one value for all."""
    if isinstance(value, (list, tuple)):
        if len(value) != n_groups:
            raise ValueError(
                f"{where}: {name} has {len(value)} values, the optimizer has {n_groups} param groups"
            )
        return list(value)
    return [value] * n_groups


class LRScheduler:
    """Base class: subclasses compute each group's rate at `last_epoch` in `_compute_lr`.

    Attributes: `optimizer`, `base_lrs` (each group's 'initial_lr'), `last_epoch` (steps taken; 0
    after creation). `_hyperparameters` names the attributes that `state_dict` saves besides those.
    """

    _hyperparameters: tuple[str, ...] = ()

    def __init__(self, optimizer: Optimizer) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__}: expected an Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs: list[float] = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = -1
        self._step_count = 0
        self._last_lr: list[float] = []
        self._initial = True  # the step made by the constructor
        self.step()
        self._initial = False

    def _compute_lr(self) -> list[float]:
        """Each group's learning rate at `last_epoch` (already advanced)."""
        raise NotImplementedError

    def _group_lrs(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def step(self) -> None:
        """Advance one step and set every group's 'lr' to the schedule's value there."""
        groups = self.optimizer.param_groups
        if len(groups) != len(self.base_lrs):
            raise ValueError(
                f"{type(self).__name__} was made for {len(self.base_lrs)} param groups, "
                f"the optimizer now has {len(groups)}"
            )
        self._step_count += 1
        self.last_epoch += 1
        for group, lr in zip(groups, self._compute_lr(), strict=True):
            group["lr"] = lr
        self._last_lr = self._group_lrs()

    def get_last_lr(self) -> list[float]:
        """The learning rates the last `step()` (or the constructor) set, one per group."""
        return list(self._last_lr)

    def state_dict(self) -> dict[str, Any]:
        """Step counters, base and last rates, and the hyper-parameters (not the optimizer)."""
        out: dict[str, Any] = {
            "base_lrs": list(self.base_lrs),
            "last_epoch": self.last_epoch,
            "_step_count": self._step_count,
            "_last_lr": list(self._last_lr),
        }
        out.update({name: copy.deepcopy(getattr(self, name)) for name in self._hyperparameters})
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned; the optimizer's own state dict restores the 'lr's."""
        name = type(self).__name__
        expected = {"base_lrs", "last_epoch", "_step_count", "_last_lr", *self._hyperparameters}
        if not isinstance(state_dict, Mapping) or set(state_dict) != expected:
            got = sorted(state_dict) if isinstance(state_dict, Mapping) else type(state_dict).__name__
            raise ValueError(f"{name}.load_state_dict: expected the keys {sorted(expected)}, got {got}")
        n_groups = len(self.optimizer.param_groups)
        for key in ("base_lrs", "_last_lr"):
            if not isinstance(state_dict[key], (list, tuple)) or len(state_dict[key]) != n_groups:
                raise ValueError(
                    f"{name}.load_state_dict: {key} must list one rate per param group ({n_groups}), "
                    f"got {state_dict[key]!r}"
                )
        for key in ("last_epoch", "_step_count"):
            value = state_dict[key]
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise ValueError(
                    f"{name}.load_state_dict: {key} must be a non-negative integer, got {value!r}"
                )
        for key, value in state_dict.items():
            setattr(self, key, copy.deepcopy(value))
        self.base_lrs = list(self.base_lrs)
        self._last_lr = list(self._last_lr)


class StepLR(LRScheduler):
    """Multiply each group's lr by `gamma` every `step_size` steps (torch.optim.lr_scheduler.StepLR):
    lr_t = lr_{t-1} · gamma when t is a positive multiple of step_size, else lr_{t-1}."""

    _hyperparameters = ("step_size", "gamma")

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1) -> None:
        self.step_size = _positive_int("StepLR", "step_size", step_size)
        self.gamma = check_real("StepLR: ", "gamma", gamma, low=0.0)
        super().__init__(optimizer)

    def _compute_lr(self) -> list[float]:
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._group_lrs()
        return [lr * self.gamma for lr in self._group_lrs()]


class ExponentialLR(LRScheduler):
    """Multiply each group's lr by `gamma` every step (torch's ExponentialLR): lr_t = lr_{t-1} · gamma."""

    _hyperparameters = ("gamma",)

    def __init__(self, optimizer: Optimizer, gamma: float) -> None:
        self.gamma = check_real("ExponentialLR: ", "gamma", gamma, low=0.0)
        super().__init__(optimizer)

    def _compute_lr(self) -> list[float]:
        if self._initial:
            return self._group_lrs()
        return [lr * self.gamma for lr in self._group_lrs()]


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from the base lr to `eta_min` over `T_max` steps (torch's CosineAnnealingLR).

    The rates are η_t = eta_min + (base - eta_min) (1 + cos(π t / T_max)) / 2, computed as PyTorch does,
    by the recursion
        η_t = eta_min + (η_{t-1} - eta_min) (1 + cos(π t / T_max)) / (1 + cos(π (t - 1) / T_max)),
    with η_t = η_{t-1} + (base - eta_min)(1 - cos(π / T_max)) / 2 where the denominator is zero, so
    the curve rises again after T_max (it is periodic) and follows changes made to 'lr' in between.
    """

    _hyperparameters = ("T_max", "eta_min")

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0) -> None:
        self.T_max = _positive_int("CosineAnnealingLR", "T_max", T_max)
        self.eta_min = check_real("CosineAnnealingLR: ", "eta_min", eta_min, low=0.0)
        super().__init__(optimizer)

    def _compute_lr(self) -> list[float]:
        t, T, eta_min = self.last_epoch, self.T_max, self.eta_min
        if self._initial:
            return self._group_lrs()
        if (t - 1 - T) % (2 * T) == 0:
            return [
                lr + (base - eta_min) * (1 - math.cos(math.pi / T)) / 2
                for lr, base in zip(self._group_lrs(), self.base_lrs, strict=True)
            ]
        ratio = (1 + math.cos(math.pi * t / T)) / (1 + math.cos(math.pi * (t - 1) / T))
        return [ratio * (lr - eta_min) + eta_min for lr in self._group_lrs()]


class LambdaLR(LRScheduler):
    """lr_t = base_lr · lr_lambda(t), one function for all groups or one per group (torch's LambdaLR).

    The functions are not part of `state_dict` (as in PyTorch, which saves only callable objects' dicts).
    """

    def __init__(
        self, optimizer: Optimizer, lr_lambda: Callable[[int], float] | Sequence[Callable[[int], float]]
    ) -> None:
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"LambdaLR: expected an Optimizer, got {type(optimizer).__name__}")
        lambdas = _per_group("LambdaLR", "lr_lambda", lr_lambda, len(optimizer.param_groups))
        for i, fn in enumerate(lambdas):
            if not callable(fn):
                raise TypeError(f"LambdaLR: lr_lambda[{i}] must be callable, got {type(fn).__name__}")
        self.lr_lambdas: list[Callable[[int], float]] = lambdas
        super().__init__(optimizer)

    def _compute_lr(self) -> list[float]:
        return [base * fn(self.last_epoch) for fn, base in zip(self.lr_lambdas, self.base_lrs, strict=True)]


class WarmupCosineLR(LRScheduler):
    """Linear warmup over `warmup_steps`, then cosine (or linear) decay to `eta_min` at `total_steps`,
    then eta_min: lr_t = `schedules.warmup_cosine`(t, lr=base_lr, ...) for each group.

    PyTorch has no single class for this; within [0, total_steps] it equals
    SequentialLR([LinearLR(start_factor, total_iters=W), CosineAnnealingLR(T - W, eta_min)], [W]), and
    LambdaLR with the same function. start_factor defaults to 0 (the first step has lr 0, as in
    Hugging Face's warmup schedules).
    """

    _hyperparameters = ("warmup_steps", "total_steps", "eta_min", "start_factor", "anneal_strategy")

    def __init__(
        self,
        optimizer: Optimizer,
        warmup_steps: int,
        total_steps: int,
        eta_min: float = 0.0,
        start_factor: float = 0.0,
        anneal_strategy: AnnealStrategy = "cos",
    ) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.eta_min = eta_min
        self.start_factor = start_factor
        self.anneal_strategy: AnnealStrategy = anneal_strategy
        self._schedule(0, 1.0)  # the schedule function validates the arguments, naming each
        super().__init__(optimizer)

    def _schedule(self, step: int, base_lr: float) -> float:
        return warmup_cosine(
            step,
            lr=base_lr,
            warmup_steps=self.warmup_steps,
            total_steps=self.total_steps,
            eta_min=self.eta_min,
            start_factor=self.start_factor,
            anneal_strategy=self.anneal_strategy,
        )

    def _compute_lr(self) -> list[float]:
        return [self._schedule(self.last_epoch, base) for base in self.base_lrs]


class OneCycleLR(LRScheduler):
    """The 1cycle policy (torch's OneCycleLR, same defaults): the rate rises from
    initial_lr = max_lr / div_factor to max_lr over pct_start of `total_steps`, then falls to
    min_lr = initial_lr / final_div_factor at step total_steps - 1 (three_phase: back to initial_lr,
    then to min_lr), by half cosines or straight lines (`anneal_strategy`).

    With `cycle_momentum`, SGD's 'momentum' (Adam's beta1) moves the opposite way between
    max_momentum and base_momentum. As in PyTorch, the groups keep 'initial_lr', 'max_lr', 'min_lr',
    'max_momentum' and 'base_momentum', and the rates are computed from them at every step
    (`schedules.one_cycle` and `schedules.one_cycle_momentum` are the same schedule as functions).
    Stepping past `total_steps` raises ValueError.
    """

    _hyperparameters = (
        "total_steps", "pct_start", "anneal_strategy", "three_phase", "cycle_momentum", "use_beta1"
    )

    def __init__(
        self,
        optimizer: Optimizer,
        max_lr: float | Sequence[float],
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: AnnealStrategy = "cos",
        cycle_momentum: bool = True,
        base_momentum: float | Sequence[float] = 0.85,
        max_momentum: float | Sequence[float] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
    ) -> None:
        where = "OneCycleLR"
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{where}: expected an Optimizer, got {type(optimizer).__name__}")
        if total_steps is not None:
            self.total_steps = _positive_int(where, "total_steps", total_steps)
        elif epochs is not None and steps_per_epoch is not None:
            self.total_steps = _positive_int(where, "epochs", epochs) * _positive_int(
                where, "steps_per_epoch", steps_per_epoch
            )
        else:
            raise ValueError(f"{where}: give either total_steps or both epochs and steps_per_epoch")
        self.pct_start = check_real(f"{where}: ", "pct_start", pct_start, low=0.0, high=1.0)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"{where}: anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.anneal_strategy: AnnealStrategy = anneal_strategy
        self.three_phase = check_bool(f"{where}: ", "three_phase", three_phase)
        self.cycle_momentum = check_bool(f"{where}: ", "cycle_momentum", cycle_momentum)
        div_factor = check_real(f"{where}: ", "div_factor", div_factor, low=0.0, low_open=True)
        final_div_factor = check_real(
            f"{where}: ", "final_div_factor", final_div_factor, low=0.0, low_open=True
        )

        groups = optimizer.param_groups
        max_lrs = [
            check_real(f"{where}: ", "max_lr", v, low=0.0)
            for v in _per_group(where, "max_lr", max_lr, len(groups))
        ]
        for group, group_max in zip(groups, max_lrs, strict=True):
            group["initial_lr"] = group_max / div_factor
            group["max_lr"] = group_max
            group["min_lr"] = group["initial_lr"] / final_div_factor

        self.use_beta1 = "betas" in optimizer.defaults
        if self.cycle_momentum:
            if "momentum" not in optimizer.defaults and not self.use_beta1:
                raise ValueError(f"{where}: cycle_momentum needs an optimizer with 'momentum' or 'betas'")
            max_ms = _per_group(where, "max_momentum", max_momentum, len(groups))
            base_ms = _per_group(where, "base_momentum", base_momentum, len(groups))
            for group, m_max, m_base in zip(groups, max_ms, base_ms, strict=True):
                group["max_momentum"] = check_real(f"{where}: ", "max_momentum", m_max, low=0.0)
                group["base_momentum"] = check_real(f"{where}: ", "base_momentum", m_base, low=0.0)
                self._set_momentum(group, group["max_momentum"])
        super().__init__(optimizer)

    def _set_momentum(self, group: dict[str, Any], momentum: float) -> None:
        if self.use_beta1:
            group["betas"] = (momentum, *group["betas"][1:])
        else:
            group["momentum"] = momentum

    def _compute_lr(self) -> list[float]:
        if self.last_epoch > self.total_steps:
            raise ValueError(
                f"OneCycleLR: tried to step {self.last_epoch} times; total_steps is {self.total_steps}"
            )
        phase, pct = one_cycle_phase(self.last_epoch, self.total_steps, self.pct_start, self.three_phase)
        lr_start, lr_end = ONE_CYCLE_LR_PHASES[self.three_phase][phase]
        m_start, m_end = ONE_CYCLE_MOMENTUM_PHASES[self.three_phase][phase]
        lrs = []
        for group in self.optimizer.param_groups:
            lrs.append(anneal(group[lr_start], group[lr_end], pct, self.anneal_strategy))
            if self.cycle_momentum:
                self._set_momentum(group, anneal(group[m_start], group[m_end], pct, self.anneal_strategy))
        return lrs
