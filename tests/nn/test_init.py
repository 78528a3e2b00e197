"""entrenar.nn.init against torch.nn.init: fans, gains, bounds, moments, dtypes, determinism."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from scipy.stats import truncnorm

from entrenar import Tensor, nn
from entrenar.nn import init
from entrenar.nn.init import _calculate_fan_in_and_fan_out

torch.set_num_threads(1)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------- fans and gains
@pytest.mark.parametrize("shape", [(3, 5), (5, 3), (4, 2, 3), (8, 3, 5, 5), (2, 4, 1, 3, 2), (1, 1)])
def test_fans_equal_torch(shape: tuple[int, ...]) -> None:
    expected = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    assert _calculate_fan_in_and_fan_out(np.empty(shape, dtype=np.float32)) == expected
    assert _calculate_fan_in_and_fan_out(Tensor(np.empty(shape, dtype=np.float32))) == expected


@pytest.mark.parametrize("shape", [(3,), ()])
def test_fans_need_two_dimensions(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        _calculate_fan_in_and_fan_out(np.empty(shape))
    with pytest.raises(ValueError, match="fewer than 2 dimensions"):
        init.xavier_uniform_(np.empty(shape), generator=_rng())


GAIN_CASES: list[tuple[str, Any]] = [
    ("linear", None),
    ("conv1d", None),
    ("conv2d", None),
    ("conv3d", None),
    ("conv_transpose1d", None),
    ("conv_transpose2d", None),
    ("conv_transpose3d", None),
    ("sigmoid", None),
    ("tanh", None),
    ("relu", None),
    ("leaky_relu", None),
    ("leaky_relu", 0.2),
    ("leaky_relu", 3),
    ("leaky_relu", math.sqrt(5)),
    ("selu", None),
]


@pytest.mark.parametrize(("nonlinearity", "param"), GAIN_CASES)
def test_gains_equal_torch(nonlinearity: str, param: Any) -> None:
    assert init.calculate_gain(nonlinearity, param) == torch.nn.init.calculate_gain(nonlinearity, param)  # type: ignore[arg-type]


def test_gain_errors() -> None:
    with pytest.raises(ValueError, match="unsupported nonlinearity 'gelu'"):
        init.calculate_gain("gelu")
    with pytest.raises(ValueError, match="negative_slope True not a valid number"):
        init.calculate_gain("leaky_relu", True)
    with pytest.raises(ValueError, match="not a valid number"):
        init.calculate_gain("leaky_relu", "0.1")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- bounds and moments
def _uniform_ok(x: np.ndarray, lo: float, hi: float) -> None:
    n = x.size
    assert np.all(x >= lo) and np.all(x <= hi)
    width = hi - lo
    assert x.min() < lo + 20 * width / n and x.max() > hi - 20 * width / n  # reaches both ends
    var = width**2 / 12
    assert abs(x.mean() - (lo + hi) / 2) < 5 * math.sqrt(var / n)
    assert abs(x.var() - var) < 5 * math.sqrt((width**4 / 80 - var**2) / n)  # E(x-m)^4 = w^4 / 80


def _normal_ok(x: np.ndarray, mean: float, std: float) -> None:
    n = x.size
    assert abs(x.mean() - mean) < 5 * std / math.sqrt(n)
    assert abs(x.var() - std**2) < 5 * std**2 * math.sqrt(2 / n)


def _torch_uniform_bound(fn: Callable[..., Any], shape: tuple[int, ...], **kw: Any) -> float:
    """The bound PyTorch's init uses, read off a large sample of its own (max |x|, within 0.1%)."""
    torch.manual_seed(0)
    return float(fn(torch.empty(shape, dtype=torch.float64), **kw).abs().max())


UNIFORM_CASES: list[tuple[str, tuple[int, ...], dict[str, Any], float]] = [
    # name, shape, kwargs, bound by PyTorch's formula
    # a=0 is an explicit slope of 0 for leaky_relu (not its 0.01 default): gain sqrt(2)
    ("kaiming_uniform_", (400, 300), {}, math.sqrt(3) * math.sqrt(2) / math.sqrt(300)),
    ("kaiming_uniform_", (400, 300), {"a": 0.2}, math.sqrt(3) * math.sqrt(2 / 1.04) / math.sqrt(300)),
    ("kaiming_uniform_", (400, 300), {"a": math.sqrt(5)}, 1 / math.sqrt(300)),
    ("kaiming_uniform_", (400, 300), {"mode": "fan_out", "nonlinearity": "relu"}, math.sqrt(6 / 400)),
    # conv-shaped: fan_in = 30 * 3 * 3 = 270, bound sqrt(3) * (5/3) / sqrt(270); mode is case-insensitive
    ("kaiming_uniform_", (40, 30, 3, 3), {"mode": "FAN_IN", "nonlinearity": "tanh"}, 5 / 3 / math.sqrt(90)),
    ("xavier_uniform_", (400, 300), {}, math.sqrt(6 / 700)),
    ("xavier_uniform_", (40, 30, 5), {"gain": 2.0}, 2 * math.sqrt(6 / 350)),
]


@pytest.mark.parametrize(("name", "shape", "kwargs", "bound"), UNIFORM_CASES)
def test_uniform_inits_match_torch_bounds(
    name: str, shape: tuple[int, ...], kwargs: dict[str, Any], bound: float
) -> None:
    ours = getattr(init, name)(np.empty(shape), generator=_rng(), **kwargs)
    _uniform_ok(ours, -bound, bound)
    theirs = _torch_uniform_bound(getattr(torch.nn.init, name), shape, **kwargs)
    assert theirs <= bound and theirs > bound * (1 - 1e-3)


NORMAL_CASES: list[tuple[str, tuple[int, ...], dict[str, Any], float]] = [
    ("kaiming_normal_", (400, 300), {}, math.sqrt(2) / math.sqrt(300)),
    ("kaiming_normal_", (400, 300), {"mode": "fan_out", "nonlinearity": "relu"}, math.sqrt(2 / 400)),
    ("xavier_normal_", (400, 300), {"gain": 0.5}, 0.5 * math.sqrt(2 / 700)),
    ("xavier_normal_", (40, 30, 5), {}, math.sqrt(2 / 350)),
]


@pytest.mark.parametrize(("name", "shape", "kwargs", "std"), NORMAL_CASES)
def test_normal_inits_match_torch_std(
    name: str, shape: tuple[int, ...], kwargs: dict[str, Any], std: float
) -> None:
    ours = getattr(init, name)(np.empty(shape), generator=_rng(), **kwargs)
    _normal_ok(ours, 0.0, std)
    torch.manual_seed(0)
    theirs = getattr(torch.nn.init, name)(torch.empty(shape, dtype=torch.float64), **kwargs).numpy()
    _normal_ok(theirs, 0.0, std)  # PyTorch's sample passes the same check: the formula is the same


def test_uniform_and_normal_fills() -> None:
    _uniform_ok(init.uniform_(np.empty(100_000), -2.0, 5.0, generator=_rng()), -2.0, 5.0)
    _uniform_ok(init.uniform_(np.empty(100_000), generator=_rng()), 0.0, 1.0)
    _normal_ok(init.normal_(np.empty(100_000), 3.0, 0.5, generator=_rng()), 3.0, 0.5)
    _normal_ok(init.normal_(np.empty(100_000), generator=_rng()), 0.0, 1.0)


def test_trunc_normal_moments_match_torch() -> None:
    # N(0.5, 1) truncated to [-1, 1.5]: compare moments with PyTorch's own sample
    shape, kw = (200_000,), {"mean": 0.5, "std": 1.0, "a": -1.0, "b": 1.5}
    ours = init.trunc_normal_(np.empty(shape), generator=_rng(), **kw)
    torch.manual_seed(0)
    theirs = torch.nn.init.trunc_normal_(torch.empty(shape, dtype=torch.float64), **kw).numpy()
    assert ours.min() >= -1.0 and ours.max() <= 1.5
    se = ours.std() / math.sqrt(ours.size)
    assert abs(ours.mean() - theirs.mean()) < 7 * se
    assert abs(ours.std() / theirs.std() - 1) < 0.01
    # windows far out in either tail (where PyTorch warns) are filled exactly: scipy's truncnorm moments
    for lo, hi in ((4.0, 5.0), (-5.0, -4.0), (20.0, 20.5)):
        tail = init.trunc_normal_(np.empty(20_000), 0.0, 1.0, lo, hi, generator=_rng())
        assert tail.min() >= lo and tail.max() <= hi
        sd = truncnorm.std(lo, hi)
        assert abs(tail.mean() - truncnorm.mean(lo, hi)) < 5 * sd / math.sqrt(tail.size)
        assert abs(tail.std() / sd - 1) < 0.03


def test_constant_fills() -> None:
    x = Tensor(np.empty((3, 4), dtype=np.float32))
    assert init.constant_(x, 0.25) is x and np.all(x.data == 0.25)
    assert np.all(init.ones_(x).data == 1) and np.all(init.zeros_(x).data == 0)


# ------------------------------------------------------------------------ in place, dtype, determinism
RANDOM_FILLS: list[tuple[str, Callable[..., Any]]] = [
    ("uniform_", lambda t, g: init.uniform_(t, -1, 1, generator=g)),
    ("normal_", lambda t, g: init.normal_(t, generator=g)),
    ("trunc_normal_", lambda t, g: init.trunc_normal_(t, std=0.02, a=-0.04, b=0.04, generator=g)),
    ("kaiming_uniform_", lambda t, g: init.kaiming_uniform_(t, a=math.sqrt(5), generator=g)),
    ("kaiming_normal_", lambda t, g: init.kaiming_normal_(t, generator=g)),
    ("xavier_uniform_", lambda t, g: init.xavier_uniform_(t, generator=g)),
    ("xavier_normal_", lambda t, g: init.xavier_normal_(t, generator=g)),
]


@pytest.mark.parametrize("fill", [f for _, f in RANDOM_FILLS], ids=[n for n, _ in RANDOM_FILLS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_fills_in_place_keep_dtype_and_are_deterministic(fill: Callable[..., Any], dtype: Any) -> None:
    p = nn.Parameter(np.zeros((6, 5), dtype=dtype))
    arr = p.data
    out = fill(p, _rng(3))
    assert out is p and p.data is arr  # written into the existing array
    assert p.dtype == dtype and p.requires_grad
    assert np.all(np.isfinite(p.data)) and np.unique(p.data).size > 1
    again = fill(nn.Parameter(np.zeros((6, 5), dtype=dtype)), _rng(3))
    np.testing.assert_array_equal(again.data, p.data)  # same seed, same numbers
    other = fill(nn.Parameter(np.zeros((6, 5), dtype=dtype)), _rng(4))
    assert not np.array_equal(other.data, p.data)
    raw = np.zeros((6, 5), dtype=dtype)
    assert fill(raw, _rng(3)) is raw  # a plain ndarray works too, with the same numbers
    np.testing.assert_array_equal(raw, p.data)


def test_float32_samples_stay_within_bounds() -> None:
    x = init.uniform_(np.empty(200_000, dtype=np.float32), -0.1, 0.1, generator=_rng())
    assert x.dtype == np.float32 and x.min() >= np.float32(-0.1) and x.max() <= np.float32(0.1)
    w = init.kaiming_uniform_(np.empty((500, 64), dtype=np.float32), a=math.sqrt(5), generator=_rng())
    assert np.abs(w).max() <= np.float32(1 / 8)


def test_fills_do_not_record_on_the_tape() -> None:
    p = nn.Parameter(np.zeros((3, 3), dtype=np.float32))
    init.normal_(p, generator=_rng())
    assert p.is_leaf and p.grad_fn is None


def test_zero_element_tensors_are_a_no_op_with_a_warning() -> None:
    x = np.empty((0, 3), dtype=np.float32)
    with pytest.warns(UserWarning, match="zero-element"):
        assert init.kaiming_uniform_(x, generator=_rng()) is x
    with pytest.warns(UserWarning, match="zero-element"):
        init.kaiming_normal_(x, generator=_rng())


# ----------------------------------------------------------------------------------- bad input
def test_bad_arguments_are_named() -> None:
    with pytest.raises(TypeError, match=r"init.uniform_: generator must be an np.random.Generator"):
        init.uniform_(np.empty(3), generator=None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="generator"):
        init.normal_(np.empty(3))  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"init\.normal_: tensor must have a floating-point dtype, got int64"):
        init.normal_(np.zeros(3, dtype=np.int64), generator=_rng())
    with pytest.raises(TypeError, match=r"init\.constant_: tensor must be a Tensor, Parameter or ndarray"):
        init.constant_([1.0, 2.0], 0.0)  # type: ignore[type-var]
    with pytest.raises(ValueError, match=r"Mode fan_avg not supported, please use one of \['fan_in'"):
        init.kaiming_uniform_(np.empty((2, 2)), mode="fan_avg", generator=_rng())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="std must be positive"):
        init.trunc_normal_(np.empty(3), std=0.0, generator=_rng())
    with pytest.raises(ValueError, match="need a < b"):
        init.trunc_normal_(np.empty(3), a=1.0, b=-1.0, generator=_rng())
