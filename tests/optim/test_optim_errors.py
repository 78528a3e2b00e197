"""Bad hyper-parameters and parameter lists raise clear errors; frozen and grad-less parameters are
never updated and get no state; zero_grad and closures behave as in torch.optim."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import entrenar
from entrenar import Tensor
from entrenar.kernels import optim_reference
from entrenar.optim import SGD, Adam, AdamW


def _params(n: int = 3, seed: int = 0) -> list[Tensor]:
    rng = np.random.default_rng(seed)
    return [Tensor(rng.standard_normal((2, 3)), requires_grad=True) for _ in range(n)]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lr": -0.1}, ValueError, "lr must be >= 0"),
        ({"lr": float("nan")}, ValueError, "lr must be finite"),
        ({"lr": "0.1"}, TypeError, "lr must be a real number"),
        ({"momentum": -0.5}, ValueError, "momentum must be >= 0"),
        ({"weight_decay": -1e-4}, ValueError, "weight_decay must be >= 0"),
        ({"dampening": None}, TypeError, "dampening must be a real number"),
        ({"nesterov": True}, ValueError, "nesterov momentum requires momentum > 0 and dampening == 0"),
        ({"nesterov": True, "momentum": 0.9, "dampening": 0.1}, ValueError, "dampening == 0"),
        ({"nesterov": 1}, TypeError, "nesterov must be a bool"),
        ({"maximize": "no"}, TypeError, "maximize must be a bool"),
    ],
)
def test_sgd_hyperparameters(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        SGD(_params(), **kwargs)


@pytest.mark.parametrize("cls", [Adam, AdamW])
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"lr": -1e-3}, ValueError, "lr must be >= 0"),
        ({"eps": -1e-8}, ValueError, "eps must be >= 0"),
        ({"betas": (1.0, 0.999)}, ValueError, r"betas\[0\] must be < 1"),
        ({"betas": (-0.1, 0.999)}, ValueError, r"betas\[0\] must be >= 0"),
        ({"betas": (0.9, 1.5)}, ValueError, r"betas\[1\] must be < 1"),
        ({"betas": (0.9,)}, TypeError, r"betas must be a pair"),
        ({"betas": 0.9}, TypeError, r"betas must be a pair"),
        ({"weight_decay": -0.01}, ValueError, "weight_decay must be >= 0"),
        ({"amsgrad": None}, TypeError, "amsgrad must be a bool"),
        ({"maximize": 0}, TypeError, "maximize must be a bool"),
    ],
)
def test_adam_hyperparameters(cls: type, kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        cls(_params(), **kwargs)


def test_eps_zero_and_lr_zero_are_allowed_as_in_torch() -> None:
    Adam(_params(), lr=0.0, eps=0.0)
    SGD(_params(), lr=0.0)


def test_group_overrides_are_validated_and_named() -> None:
    ps = _params()
    with pytest.raises(ValueError, match="param group 1: lr must be >= 0"):
        SGD([{"params": ps[:1]}, {"params": ps[1:], "lr": -1.0}], lr=0.1)
    opt = Adam(ps[:1])
    with pytest.raises(ValueError, match=r"param group 1: betas\[1\] must be < 1"):
        opt.add_param_group({"params": ps[1:], "betas": (0.9, 1.0)})
    assert len(opt.param_groups) == 1  # nothing was added


def test_group_settings_override_defaults() -> None:
    ps = _params()
    opt = SGD([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.5, "momentum": 0.9}], lr=0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
    assert [g["momentum"] for g in opt.param_groups] == [0.0, 0.9]
    assert opt.param_groups[1]["params"][0] is ps[2]


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        (lambda ps: ps[0], TypeError, "params must be an iterable of Tensors or dicts, got a Tensor"),
        (lambda ps: [], ValueError, "empty parameter list"),
        (lambda ps: set(ps), TypeError, "ordered collection"),
        (lambda ps: [ps[0], ps[0].data], TypeError, r"params\[1\]: an optimizer can only optimize Tensors"),
        (lambda ps: [ps[0], ps[0] * 2], ValueError, "can't optimize a non-leaf Tensor"),
        (lambda ps: [ps[0], ps[1], ps[0]], ValueError, "listed twice in one group"),
        (lambda ps: [{"params": ps[:2]}, {"params": ps[1:]}], ValueError, "more than one parameter group"),
        (lambda ps: [{"params": ps[:2]}, ps[2]], TypeError, "not a mix"),
        (lambda ps: [{"lr": 0.1}], ValueError, "must have a 'params' entry"),
        (lambda ps: 3, TypeError, "iterable of Tensors or dicts, got int"),
    ],
)
def test_bad_params(params: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Adam(params(_params()))


def test_add_param_group_rejects_a_parameter_already_present() -> None:
    ps = _params()
    opt = SGD(ps[:2], lr=0.1)
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [ps[2], ps[0]]})
    opt.add_param_group({"params": ps[2]})  # a single Tensor is a group of one, as in torch
    assert len(opt.param_groups[1]["params"]) == 1 and opt.param_groups[1]["params"][0] is ps[2]


def test_gradient_of_wrong_shape_or_type_is_rejected() -> None:
    p = Tensor(np.zeros((2, 3)), requires_grad=True)
    opt = SGD([p], lr=0.1)
    p.grad = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"gradient of shape \(3, 2\) for a parameter of shape \(2, 3\)"):
        opt.step()
    p.grad = [[0.0] * 3] * 2  # type: ignore[assignment]
    with pytest.raises(TypeError, match="gradient must be an ndarray"):
        opt.step()


@pytest.mark.parametrize(
    "make", [lambda ps: SGD(ps, lr=0.1, momentum=0.9), lambda ps: Adam(ps, amsgrad=True), AdamW]
)
def test_frozen_and_gradless_params_untouched_and_stateless(make: Any) -> None:
    live, frozen, gradless = _params()
    frozen.requires_grad = False
    frozen.grad = np.ones((2, 3))  # even holding a gradient, a frozen parameter is not updated
    before = [frozen.data.copy(), gradless.data.copy(), live.data.copy()]
    opt = make([live, frozen, gradless])
    for _ in range(3):
        live.grad = np.ones((2, 3))
        opt.step()
    np.testing.assert_array_equal(frozen.data, before[0])
    np.testing.assert_array_equal(gradless.data, before[1])
    assert not np.array_equal(live.data, before[2])
    assert list(opt.state) == [live]
    assert list(opt.state_dict()["state"]) == [0]


def test_sgd_without_momentum_keeps_no_state() -> None:
    (p,) = _params(1)
    opt = SGD([p], lr=0.1)
    p.grad = np.ones((2, 3))
    opt.step()
    assert opt.state == {}


def test_zero_grad() -> None:
    ps = _params()
    opt = SGD(ps, lr=0.1)
    for p in ps[:2]:
        p.grad = np.ones((2, 3))
    held = ps[0].grad
    opt.zero_grad(set_to_none=False)
    assert ps[0].grad is held and not held.any()
    assert ps[2].grad is None
    opt.zero_grad()
    assert all(p.grad is None for p in ps)


def test_step_closure_runs_with_grad_enabled_and_returns_its_loss() -> None:
    x = Tensor(np.array([1.0, -2.0]), requires_grad=True)
    opt = SGD([x], lr=0.25)
    seen = []

    def closure() -> Any:
        seen.append(entrenar.is_grad_enabled())
        opt.zero_grad()
        loss = (x * x).sum()
        loss.backward()
        return loss

    with entrenar.no_grad():
        loss = opt.step(closure)
    assert seen == [True]
    assert loss.item() == 5.0
    np.testing.assert_array_equal(x.data, [0.5, -1.0])  # x - 0.25 * 2x
    assert opt.step() is None


def test_repr_lists_groups() -> None:
    text = repr(Adam(_params(), lr=0.5))
    assert "Adam (" in text and "Parameter Group 0" in text and "lr: 0.5" in text


# ---------------------------------------------------------------------------------- reference kernels
def test_reference_kernels_reject_bad_arrays() -> None:
    p = np.zeros(4)
    kw: dict[str, Any] = {
        "lr": 0.1, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0, "maximize": False
    }
    with pytest.raises(ValueError, match=r"grad has shape \(3,\)"):
        optim_reference.sgd_step(p, np.zeros(3), None, momentum=0.0, first_step=True, **kw)
    with pytest.raises(ValueError, match="momentum != 0 needs a momentum_buffer"):
        optim_reference.sgd_step(p, np.zeros(4), None, momentum=0.9, first_step=True, **kw)
    with pytest.raises(TypeError, match="momentum_buffer must be an ndarray"):
        optim_reference.sgd_step(p, np.zeros(4), [0.0] * 4, momentum=0.9, first_step=True, **kw)  # type: ignore[arg-type]
    akw: dict[str, Any] = {
        "lr": 0.1, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "decoupled": False,
        "maximize": False,
    }
    m, v = np.zeros(4), np.zeros(4)
    with pytest.raises(ValueError, match="amsgrad needs a max_exp_avg_sq"):
        optim_reference.adam_step(p, np.ones(4), m, v, None, step=1, amsgrad=True, **akw)
    with pytest.raises(ValueError, match="step must be the 1-based count"):
        optim_reference.adam_step(p, np.ones(4), m, v, None, step=0, amsgrad=False, **akw)
    with pytest.raises(ValueError, match=r"exp_avg_sq has shape \(5,\)"):
        optim_reference.adam_step(p, np.ones(4), m, np.zeros(5), None, step=1, amsgrad=False, **akw)


def test_reference_kernels_do_not_modify_the_gradient() -> None:
    rng = np.random.default_rng(1)
    p, g = rng.standard_normal(6), rng.standard_normal(6)
    g0 = g.copy()
    buf = np.empty(6)
    for first in (True, False):
        optim_reference.sgd_step(
            p, g, buf, lr=0.1, momentum=0.9, dampening=0.0, nesterov=True, weight_decay=0.1, maximize=True,
            first_step=first,
        )
    m, v, vm = np.zeros(6), np.zeros(6), np.zeros(6)
    optim_reference.adam_step(
        p, g, m, v, vm, step=1, lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, decoupled=False,
        amsgrad=True, maximize=True,
    )
    np.testing.assert_array_equal(g, g0)
