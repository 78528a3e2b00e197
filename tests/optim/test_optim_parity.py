"""Trajectory parity with torch.optim (single-tensor path) in float64: same initial values, same
pre-drawn gradients, >= 100 steps, parameters equal to rtol 1e-10 at every step."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from optim_helpers import SHAPES, assert_params_close, draw_grads, make_params, set_grads
from torch.optim.adam import adam as torch_adam
from torch.optim.sgd import sgd as torch_sgd

import entrenar.kernels
from entrenar.kernels import optim_reference
from entrenar.optim import (
    SGD,
    Adam,
    AdamW,
    CosineAnnealingLR,
    OneCycleLR,
    StepLR,
    WarmupCosineLR,
    clip_grad_norm_,
    schedules,
)

STEPS = 120

SGD_CASES: list[dict[str, Any]] = [
    {},
    {"momentum": 0.9},
    {"momentum": 0.9, "dampening": 0.3},
    {"momentum": 0.9, "nesterov": True},
    {"momentum": 0.5, "weight_decay": 0.01},
    {"weight_decay": 0.1},
    {"momentum": 0.9, "weight_decay": 0.1, "maximize": True},
    {"momentum": 0.8, "nesterov": True, "weight_decay": 0.05, "maximize": True},
]

ADAM_CASES: list[tuple[type, dict[str, Any]]] = [
    (Adam, {}),
    (Adam, {"amsgrad": True}),
    (Adam, {"weight_decay": 0.05}),
    (Adam, {"maximize": True}),
    (Adam, {"amsgrad": True, "weight_decay": 0.1, "maximize": True}),
    (Adam, {"betas": (0.3, 0.9)}),  # 1 - beta1 >= 0.5: torch's lerp takes its other formula
    (Adam, {"eps": 0.0, "lr": 0.01}),
    (Adam, {"weight_decay": 0.05, "decoupled_weight_decay": True}),
    (AdamW, {}),
    (AdamW, {"amsgrad": True}),
    (AdamW, {"weight_decay": 0.1, "maximize": True}),
    (AdamW, {"weight_decay": 0.1, "betas": (0.2, 0.5), "amsgrad": True}),
]

TORCH_ADAM = {Adam: torch.optim.Adam, AdamW: torch.optim.AdamW}


def _run(ours_opt: Any, torch_opt: Any, ours: list, theirs: list, grads: list, what: str) -> None:
    for t, g in enumerate(grads):
        set_grads(ours, theirs, g)
        ours_opt.step()
        torch_opt.step()
        assert_params_close(ours, theirs, f"{what}, step {t}")


def _id(kwargs: dict[str, Any]) -> str:
    return ",".join(f"{k}={v}" for k, v in kwargs.items()) or "plain"


@pytest.mark.parametrize("kwargs", SGD_CASES, ids=_id)
def test_sgd_trajectory(kwargs: dict[str, Any]) -> None:
    ours, theirs = make_params(SHAPES, seed=1)
    grads = draw_grads(SHAPES, STEPS, seed=1)
    _run(
        SGD(ours, lr=0.03, **kwargs),
        torch.optim.SGD(theirs, lr=0.03, foreach=False, **kwargs),
        ours, theirs, grads, f"SGD {kwargs}",
    )


@pytest.mark.parametrize(
    ("cls", "kwargs"), ADAM_CASES, ids=lambda c: c.__name__ if isinstance(c, type) else str(c)
)
def test_adam_trajectory(cls: type, kwargs: dict[str, Any]) -> None:
    ours, theirs = make_params(SHAPES, seed=2)
    grads = draw_grads(SHAPES, STEPS, seed=2)
    kwargs = {"lr": 0.02, **kwargs}
    _run(
        cls(ours, **kwargs),
        TORCH_ADAM[cls](theirs, foreach=False, **kwargs),
        ours, theirs, grads, f"{cls.__name__} {kwargs}",
    )


def test_float32_trajectory_close() -> None:
    """float32 parameters stay float32 and follow torch's float32 run to float32 precision."""
    ours, theirs = make_params(SHAPES, seed=3, dtype=np.float32)
    grads = draw_grads(SHAPES, 100, seed=3)
    opt = AdamW(ours, lr=0.01, weight_decay=0.1)
    topt = torch.optim.AdamW(theirs, lr=0.01, weight_decay=0.1, foreach=False)
    for g in grads:
        set_grads(ours, theirs, g)
        opt.step()
        topt.step()
    for p in ours:
        assert p.data.dtype == np.float32
        assert all(v.dtype == np.float32 for k, v in opt.state[p].items() if k != "step")
    assert_params_close(ours, theirs, "AdamW float32", rtol=1e-5, atol=1e-6)


def _grouped(ours: list, theirs: list, split: dict[str, Any], rest: dict[str, Any]) -> tuple[list, list]:
    """Two groups: params 0 and 2 (weights) with `split` settings, 1 and 3 (biases) with `rest`."""
    return (
        [{"params": [ours[0], ours[2]], **split}, {"params": [ours[1], ours[3]], **rest}],
        [{"params": [theirs[0], theirs[2]], **split}, {"params": [theirs[1], theirs[3]], **rest}],
    )


def test_param_groups_no_decay_for_biases_with_clip_and_onecycle() -> None:
    """AdamW, biases without decay and a higher lr, the global norm clipped to 1.0 every step and
    OneCycleLR (which also cycles beta1) stepped every step."""
    ours, theirs = make_params(SHAPES, seed=4)
    grads = draw_grads(SHAPES, 150, seed=4)
    g_ours, g_theirs = _grouped(ours, theirs, {"weight_decay": 0.1}, {"weight_decay": 0.0, "lr": 0.05})
    opt = AdamW(g_ours, lr=0.01)
    topt = torch.optim.AdamW(g_theirs, lr=0.01, foreach=False)
    sched = OneCycleLR(opt, max_lr=[0.02, 0.05], total_steps=150)
    tsched = torch.optim.lr_scheduler.OneCycleLR(topt, max_lr=[0.02, 0.05], total_steps=150)
    clipped = 0
    for t, g in enumerate(grads):
        set_grads(ours, theirs, g)
        norm = clip_grad_norm_(ours, 1.0)
        tnorm = torch.nn.utils.clip_grad_norm_(theirs, 1.0, foreach=False)
        np.testing.assert_allclose(norm, tnorm.item(), rtol=1e-12)
        clipped += norm > 1.0
        opt.step()
        topt.step()
        sched.step()
        tsched.step()
        assert_params_close(ours, theirs, f"AdamW groups, step {t}")
        for group, tgroup in zip(opt.param_groups, topt.param_groups, strict=True):
            assert group["lr"] == pytest.approx(tgroup["lr"], rel=1e-12, abs=1e-15)
            assert group["betas"] == pytest.approx(tgroup["betas"], rel=1e-12)
    assert 10 < clipped < 140  # the clip was active on some steps and not on others


@pytest.mark.parametrize("sched_kind", ["cosine", "step"])
def test_sgd_groups_with_clip_and_scheduler(sched_kind: str) -> None:
    ours, theirs = make_params(SHAPES, seed=5)
    grads = draw_grads(SHAPES, 130, seed=5)
    g_ours, g_theirs = _grouped(
        ours, theirs, {"weight_decay": 0.01, "nesterov": True}, {"momentum": 0.5, "dampening": 0.2}
    )
    opt = SGD(g_ours, lr=0.05, momentum=0.9)
    topt = torch.optim.SGD(g_theirs, lr=0.05, momentum=0.9, foreach=False)
    if sched_kind == "cosine":
        sched: Any = CosineAnnealingLR(opt, T_max=50, eta_min=1e-3)
        tsched: Any = torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=50, eta_min=1e-3)
    else:
        sched = StepLR(opt, step_size=20, gamma=0.5)
        tsched = torch.optim.lr_scheduler.StepLR(topt, step_size=20, gamma=0.5)
    for t, g in enumerate(grads):
        set_grads(ours, theirs, g)
        norm = clip_grad_norm_(ours, 2.0, norm_type=np.inf)
        tnorm = torch.nn.utils.clip_grad_norm_(theirs, 2.0, norm_type=np.inf, foreach=False)
        assert norm == tnorm.item()
        opt.step()
        topt.step()
        sched.step()
        tsched.step()
        assert_params_close(ours, theirs, f"SGD groups + {sched_kind}, step {t}")
        np.testing.assert_allclose(sched.get_last_lr(), tsched.get_last_lr(), rtol=1e-12, atol=1e-15)


def test_adam_with_warmup_cosine_matches_lambdalr() -> None:
    ours, theirs = make_params(SHAPES, seed=6)
    grads = draw_grads(SHAPES, 110, seed=6)
    opt = Adam(ours, lr=0.03, weight_decay=0.01, amsgrad=True)
    topt = torch.optim.Adam(theirs, lr=0.03, weight_decay=0.01, amsgrad=True, foreach=False)
    sched = WarmupCosineLR(opt, warmup_steps=10, total_steps=100)

    def factor(step: int) -> float:
        return schedules.warmup_cosine(step, lr=1.0, warmup_steps=10, total_steps=100)

    tsched = torch.optim.lr_scheduler.LambdaLR(topt, factor)
    for t, g in enumerate(grads):
        set_grads(ours, theirs, g)
        clip_grad_norm_(ours, 5.0)
        torch.nn.utils.clip_grad_norm_(theirs, 5.0, foreach=False)
        opt.step()
        topt.step()
        sched.step()
        tsched.step()
        assert_params_close(ours, theirs, f"Adam + warmup cosine, step {t}")


def test_missing_grads_and_frozen_params_match_torch() -> None:
    """A parameter whose grad is None on some steps, and a frozen one, are skipped as in torch."""
    ours, theirs = make_params(SHAPES, seed=7)
    grads = draw_grads(SHAPES, 100, seed=7)
    ours[3].requires_grad = False
    theirs[3].requires_grad_(False)
    frozen_before = ours[3].data.copy()
    opt = Adam(ours, lr=0.02)
    topt = torch.optim.Adam(theirs, lr=0.02, foreach=False)
    for t, g in enumerate(grads):
        set_grads(ours, theirs, g)
        ours[3].grad = g[3].copy()  # a frozen parameter that somehow holds a grad is still skipped
        theirs[3].grad = None
        if t % 3 == 0:
            ours[1].grad = None
            theirs[1].grad = None
        opt.step()
        topt.step()
        assert_params_close(ours, theirs, f"Adam with skipped params, step {t}")
    np.testing.assert_array_equal(ours[3].data, frozen_before)
    assert ours[3] not in opt.state
    assert int(opt.state[ours[1]]["step"]) == int(topt.state[theirs[1]]["step"].item()) == 66


def test_reference_kernels_match_torch_functional() -> None:
    """The reference step functions alone (no optimizer) follow torch's single-tensor functions."""
    rng = np.random.default_rng(8)
    shape = (7, 5)
    x = rng.standard_normal(shape)
    p, m, v, vmax = x.copy(), np.zeros(shape), np.zeros(shape), np.zeros(shape)
    tp, tm, tv, tvmax = (torch.tensor(a.copy()) for a in (x, m, v, vmax))
    tstep = torch.tensor(0.0)
    sp, buf = x.copy(), np.empty(shape)
    tsp, tbuf = torch.tensor(x.copy()), [None]
    hyper = {"weight_decay": 0.1, "maximize": False}
    for step in range(1, 101):
        g = rng.standard_normal(shape)
        optim_reference.adam_step(
            p, g, m, v, vmax, step=step, lr=0.01, beta1=0.9, beta2=0.99, eps=1e-8,
            decoupled=True, amsgrad=True, **hyper,
        )
        torch_adam(
            [tp], [torch.tensor(g)], [tm], [tv], [tvmax], [tstep], foreach=False, amsgrad=True,
            beta1=0.9, beta2=0.99, lr=0.01, eps=1e-8, decoupled_weight_decay=True, **hyper,
        )
        optim_reference.sgd_step(
            sp, g, buf, lr=0.05, momentum=0.9, dampening=0.1, nesterov=False, first_step=step == 1, **hyper
        )
        torch_sgd(
            [tsp], [torch.tensor(g)], tbuf, foreach=False, lr=0.05, momentum=0.9, dampening=0.1,
            nesterov=False, **hyper,
        )
    for ours, theirs in [(p, tp), (m, tm), (v, tv), (vmax, tvmax), (sp, tsp), (buf, tbuf[0])]:
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-10, atol=1e-13)


def test_optimizers_call_the_update_through_entrenar_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """`entrenar.kernels.sgd_steps` / `adam_steps` (a parameter group at a time) are the single place a
    fused kernel replaces."""
    calls: list[tuple[str, int]] = []

    def sgd_steps(updates: Any, **hyper: Any) -> None:
        calls.append(("sgd", len(updates)))
        for p, g, b, first in updates:
            optim_reference.sgd_step(p, g, b, first_step=first, **hyper)

    def adam_steps(updates: Any, **hyper: Any) -> None:
        calls.append(("adam", len(updates)))
        for p, g, m, v, vmax, step in updates:
            optim_reference.adam_step(p, g, m, v, vmax, step=step, **hyper)

    monkeypatch.setattr(entrenar.kernels, "sgd_steps", sgd_steps)
    monkeypatch.setattr(entrenar.kernels, "adam_steps", adam_steps)
    ours, _ = make_params(SHAPES, seed=9)
    for p in ours:
        p.grad = np.ones_like(p.data)
    SGD(ours, lr=0.1, momentum=0.9).step()
    AdamW(ours).step()
    assert calls == [("sgd", len(ours)), ("adam", len(ours))]
