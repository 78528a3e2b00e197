"""Optimizer and scheduler state dicts: torch's layout, deep copies, identical continuation after a
reload, loading PyTorch's own state dict, and clear errors for state that does not fit."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from optim_helpers import SHAPES, assert_params_close, draw_grads, make_params, set_grads

from entrenar import Tensor
from entrenar.optim import SGD, Adam, AdamW, CosineAnnealingLR, OneCycleLR, Optimizer, WarmupCosineLR
from entrenar.optim.lr_scheduler import LRScheduler


def _grouped(params: list[Any]) -> list[dict[str, Any]]:
    return [{"params": [params[0], params[2]]}, {"params": [params[1], params[3]], "weight_decay": 0.0}]


Make = Callable[[list[Any]], Any]
OPTIMIZERS: list[tuple[str, Make, Make]] = [
    (
        "sgd-momentum",
        lambda ps: SGD(_grouped(ps), lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True),
        lambda ps: torch.optim.SGD(_grouped(ps), lr=0.05, momentum=0.9, weight_decay=0.01, nesterov=True,
                                   foreach=False),
    ),
    (
        "adam-amsgrad",
        lambda ps: Adam(_grouped(ps), lr=0.02, amsgrad=True, weight_decay=0.01),
        lambda ps: torch.optim.Adam(_grouped(ps), lr=0.02, amsgrad=True, weight_decay=0.01, foreach=False),
    ),
    (
        "adamw",
        lambda ps: AdamW(_grouped(ps), lr=0.02),
        lambda ps: torch.optim.AdamW(_grouped(ps), lr=0.02, foreach=False),
    ),
]
IDS = [name for name, _, _ in OPTIMIZERS]


def _train(opt: Optimizer, params: list[Tensor], grads: list[list[np.ndarray]],
           sched: LRScheduler | None = None) -> None:
    for g in grads:
        for p, gi in zip(params, g, strict=True):
            p.grad = gi.copy()
        opt.step()
        if sched is not None:
            sched.step()


@pytest.mark.parametrize(("name", "make", "make_torch"), OPTIMIZERS, ids=IDS)
def test_layout_matches_torch(name: str, make: Callable, make_torch: Callable) -> None:
    ours, theirs = make_params(SHAPES, seed=10)
    opt, topt = make(ours), make_torch(theirs)
    for g in draw_grads(SHAPES, 5, seed=10):
        set_grads(ours, theirs, g)
        opt.step()
        topt.step()
    sd, tsd = opt.state_dict(), topt.state_dict()
    assert set(sd) == set(tsd) == {"state", "param_groups"}
    assert sorted(sd["state"]) == sorted(tsd["state"])
    for index, entries in sd["state"].items():
        assert set(entries) == set(tsd["state"][index])
        for key, value in entries.items():
            assert isinstance(value, np.ndarray)
            np.testing.assert_allclose(value, tsd["state"][index][key].numpy(), rtol=1e-10, atol=1e-13)
    assert len(sd["param_groups"]) == len(tsd["param_groups"])
    for group, tgroup in zip(sd["param_groups"], tsd["param_groups"], strict=True):
        assert group["params"] == tgroup["params"]
        # every hyper-parameter is torch's, with torch's value (torch adds foreach, fused, ...)
        assert set(group) <= set(tgroup)
        for key, value in group.items():
            assert value == tgroup[key], key


@pytest.mark.parametrize(("name", "make", "make_torch"), OPTIMIZERS, ids=IDS)
def test_save_mid_run_load_into_fresh_optimizer_continues_identically(
    name: str, make: Callable, make_torch: Callable
) -> None:
    params, _ = make_params(SHAPES, seed=11)
    grads = draw_grads(SHAPES, 100, seed=11)
    opt = make(params)
    sched = CosineAnnealingLR(opt, T_max=60, eta_min=1e-4)
    _train(opt, params, grads[:50], sched)
    saved_opt, saved_sched = opt.state_dict(), sched.state_dict()
    saved_params = [p.data.copy() for p in params]
    _train(opt, params, grads[50:], sched)

    fresh = [Tensor(a.copy(), requires_grad=True) for a in saved_params]
    opt2 = make(fresh)
    sched2 = CosineAnnealingLR(opt2, T_max=60, eta_min=1e-4)  # before loading, as in PyTorch
    opt2.load_state_dict(saved_opt)
    sched2.load_state_dict(saved_sched)
    _train(opt2, fresh, grads[50:], sched2)
    for p, q in zip(params, fresh, strict=True):
        np.testing.assert_array_equal(p.data, q.data)
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert sched2.state_dict() == sched.state_dict()


def test_state_dict_is_a_deep_copy_both_ways() -> None:
    params, _ = make_params(SHAPES, seed=12)
    opt = Adam(params, lr=0.01)
    _train(opt, params, draw_grads(SHAPES, 3, seed=12))
    sd = opt.state_dict()
    reference = copy.deepcopy(sd)
    _train(opt, params, draw_grads(SHAPES, 2, seed=13))  # training on does not change the saved copy
    for index, entries in reference["state"].items():
        for key, value in entries.items():
            np.testing.assert_array_equal(sd["state"][index][key], value)
    opt.param_groups[0]["betas"] = (0.5, 0.5)
    assert sd["param_groups"][0]["betas"] == (0.9, 0.999)

    opt2 = Adam(params, lr=0.01)
    opt2.load_state_dict(sd)
    sd["state"][0]["exp_avg"][...] = 123.0  # editing the loaded dict afterwards does not reach opt2
    sd["param_groups"][0]["lr"] = 5.0
    assert not np.any(opt2.state[params[0]]["exp_avg"] == 123.0)
    assert opt2.param_groups[0]["lr"] == 0.01
    opt2.state[params[0]]["step"] += 1  # nor does stepping opt2 reach the dict
    assert int(sd["state"][0]["step"]) == 3


def test_load_casts_state_to_the_parameter_dtype() -> None:
    params, _ = make_params(SHAPES, seed=14)
    opt = Adam(params, lr=0.01)
    _train(opt, params, draw_grads(SHAPES, 3, seed=14))
    sd = opt.state_dict()
    params32 = [Tensor(p.data.astype(np.float32), requires_grad=True) for p in params]
    opt32 = Adam(params32, lr=0.01)
    opt32.load_state_dict(sd)
    for p in params32:
        assert opt32.state[p]["exp_avg"].dtype == np.float32
        assert opt32.state[p]["step"].dtype == np.int64


@pytest.mark.parametrize(("name", "make", "make_torch"), OPTIMIZERS, ids=IDS)
def test_loads_pytorch_state_dict(name: str, make: Callable, make_torch: Callable) -> None:
    """A torch.optim state dict, tensors converted with .numpy(), loads and continues as torch does."""
    ours, theirs = make_params(SHAPES, seed=15)
    grads = draw_grads(SHAPES, 60, seed=15)
    topt = make_torch(theirs)
    for g in grads[:30]:
        for q, gi in zip(theirs, g, strict=True):
            q.grad = torch.tensor(gi)
        topt.step()
    tsd = topt.state_dict()
    converted = {
        "state": {i: {k: v.numpy() for k, v in s.items()} for i, s in tsd["state"].items()},
        "param_groups": tsd["param_groups"],
    }
    for p, q in zip(ours, theirs, strict=True):
        p.data[...] = q.detach().numpy()
    opt = make(ours)
    opt.load_state_dict(converted)
    for g in grads[30:]:
        set_grads(ours, theirs, g)
        opt.step()
        topt.step()
    assert_params_close(ours, theirs, f"{name} after loading torch's state")


def test_scheduler_state_round_trip_onecycle() -> None:
    params, _ = make_params(SHAPES, seed=16)
    grads = draw_grads(SHAPES, 80, seed=16)
    opt = SGD(params, lr=0.1, momentum=0.9)
    sched = OneCycleLR(opt, max_lr=0.1, total_steps=80, three_phase=True)
    _train(opt, params, grads[:30], sched)
    saved, saved_sched = opt.state_dict(), sched.state_dict()
    assert saved["param_groups"][0]["max_lr"] == 0.1  # OneCycleLR keeps its bounds in the groups
    saved_params = [p.data.copy() for p in params]
    _train(opt, params, grads[30:79], sched)

    fresh = [Tensor(a.copy(), requires_grad=True) for a in saved_params]
    opt2 = SGD(fresh, lr=0.1, momentum=0.9)
    sched2 = OneCycleLR(opt2, max_lr=0.1, total_steps=80, three_phase=True)
    opt2.load_state_dict(saved)
    sched2.load_state_dict(saved_sched)
    _train(opt2, fresh, grads[30:79], sched2)
    for p, q in zip(params, fresh, strict=True):
        np.testing.assert_array_equal(p.data, q.data)
    assert opt2.param_groups[0]["momentum"] == opt.param_groups[0]["momentum"]


# ---------------------------------------------------------------------------------- bad state
def _trained_adam() -> tuple[Adam, list[Tensor], dict[str, Any]]:
    params, _ = make_params(SHAPES, seed=17)
    opt = Adam(_grouped(params), lr=0.01)
    _train(opt, params, draw_grads(SHAPES, 2, seed=17))
    return opt, params, opt.state_dict()


def test_load_rejects_a_different_number_of_groups() -> None:
    _, params, sd = _trained_adam()
    other = Adam(params, lr=0.01)
    with pytest.raises(ValueError, match="2 parameter groups, this optimizer has 1"):
        other.load_state_dict(sd)


def test_load_rejects_groups_of_different_sizes() -> None:
    _, params, sd = _trained_adam()
    other = Adam([{"params": params[:3]}, {"params": params[3:]}], lr=0.01)
    with pytest.raises(ValueError, match="group 0 has 2 parameters, this optimizer's group 0 has 3"):
        other.load_state_dict(sd)


def _edited(sd: dict[str, Any], edit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    sd = copy.deepcopy(sd)
    edit(sd)
    return sd


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda sd: sd.pop("state"), r"exactly the keys 'state' and 'param_groups', got \['param_groups'\]"),
        (lambda sd: sd.update(extra=1), r"exactly the keys .*, got \['extra', 'param_groups', 'state'\]"),
        (lambda sd: sd["state"].update({9: sd["state"][0]}), "parameter 9, which no param group lists"),
        (lambda sd: sd["state"][0].update(exp_avg=np.zeros(7)), r"'exp_avg' has shape \(7,\)"),
        (lambda sd: sd["state"][0].update(momentum_buffer=np.zeros(5)), "not a state entry of Adam"),
        (lambda sd: sd["state"][0].pop("exp_avg_sq"), "lacks \\['exp_avg_sq'\\]"),
        (lambda sd: sd["state"][0].update(step=np.array(-1)), "'step' must be a non-negative whole number"),
        (lambda sd: sd["state"][0].update(step=2.5), "'step' must be a non-negative whole number"),
        (lambda sd: sd["param_groups"][1].update(lr=-1.0), "loaded param group 1: lr must be >= 0"),
        (lambda sd: sd["param_groups"][0].update(betas=(1.0, 0.9)), r"betas\[0\] must be < 1"),
        (lambda sd: sd["param_groups"][0].pop("params"), "group 0 must be a dict with a 'params' list"),
        (lambda sd: sd["param_groups"][1].update(params=[0, 1]), "index 0 appears twice"),
    ],
)
def test_load_rejects_bad_state(edit: Callable[[dict[str, Any]], None], match: str) -> None:
    opt, _, sd = _trained_adam()
    before = opt.state_dict()
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(_edited(sd, edit))
    after = opt.state_dict()  # a failed load leaves the optimizer as it was
    assert after["param_groups"] == before["param_groups"]
    for index in before["state"]:
        for key in before["state"][index]:
            np.testing.assert_array_equal(after["state"][index][key], before["state"][index][key])


def test_load_names_the_type_of_what_is_not_a_state_dict() -> None:
    opt, _, sd = _trained_adam()
    with pytest.raises(ValueError, match=r"exactly the keys 'state' and 'param_groups', got list$"):
        opt.load_state_dict(list(sd.items()))  # type: ignore[arg-type]


def test_scheduler_load_rejects_bad_state() -> None:
    params, _ = make_params(SHAPES, seed=18)
    opt = SGD(_grouped(params), lr=0.1)
    sched = WarmupCosineLR(opt, warmup_steps=2, total_steps=10)
    sd = sched.state_dict()
    with pytest.raises(ValueError, match="expected the keys"):
        sched.load_state_dict({k: v for k, v in sd.items() if k != "total_steps"})
    with pytest.raises(ValueError, match="base_lrs must list one rate per param group"):
        sched.load_state_dict({**sd, "base_lrs": [0.1]})
    with pytest.raises(ValueError, match="last_epoch must be a non-negative integer"):
        sched.load_state_dict({**sd, "last_epoch": -3})


def test_load_treats_a_none_entry_as_absent() -> None:
    """torch may keep 'momentum_buffer': None; loading it starts the buffer afresh, as torch would."""
    params, _ = make_params(SHAPES, seed=19)
    opt = SGD(params, lr=0.1, momentum=0.9)
    groups = opt.state_dict()["param_groups"]
    opt.load_state_dict({"state": {0: {"momentum_buffer": None}}, "param_groups": groups})
    assert opt.state[params[0]] == {}
    params[0].grad = np.ones(params[0].shape)
    opt.step()
    np.testing.assert_array_equal(opt.state[params[0]]["momentum_buffer"], np.ones(params[0].shape))
