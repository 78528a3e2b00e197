"""Parameter initialisation with `torch.nn.init`'s names, formulas and fan conventions.

Every function fills its argument in place (a Tensor, Parameter or ndarray), keeps its dtype, and
returns it. Random ones take a required keyword `generator: np.random.Generator`: entrenar never
draws from global state. Nothing here is recorded on the tape.

Fans (`_calculate_fan_in_and_fan_out`) follow PyTorch: for a weight of shape (out, in, *k),
fan_in = in * prod(k) and fan_out = out * prod(k).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal, TypeVar

import numpy as np
from scipy.special import ndtr, ndtri

from entrenar.tensor import Tensor

__all__ = [
    "calculate_gain",
    "constant_",
    "kaiming_normal_",
    "kaiming_uniform_",
    "normal_",
    "ones_",
    "trunc_normal_",
    "uniform_",
    "xavier_normal_",
    "xavier_uniform_",
    "zeros_",
]

_T = TypeVar("_T", Tensor, np.ndarray)

_LINEAR_FNS = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
)


# ----------------------------------------------------------------------------------- helpers
def _array(fn: str, tensor: Tensor | np.ndarray) -> np.ndarray:
    """The array to write into; it must be a floating-point Tensor or ndarray."""
    if isinstance(tensor, Tensor):
        arr = tensor.data
    elif isinstance(tensor, np.ndarray):
        arr = tensor
    else:
        raise TypeError(
            f"init.{fn}: tensor must be a Tensor, Parameter or ndarray, got {type(tensor).__name__}"
        )
    if arr.dtype.kind != "f":
        raise TypeError(f"init.{fn}: tensor must have a floating-point dtype, got {arr.dtype}")
    return arr


def _rng(fn: str, generator: Any) -> np.random.Generator:
    if not isinstance(generator, np.random.Generator):
        raise TypeError(
            f"init.{fn}: generator must be an np.random.Generator (e.g. np.random.default_rng(seed)), "
            f"got {type(generator).__name__}"
        )
    return generator


def _uniform01(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    """U[0, 1) in dtype, drawn natively for float32/float64 and cast for other float types."""
    if dtype in (np.float32, np.float64):
        return rng.random(shape, dtype=dtype)
    return rng.random(shape).astype(dtype)


def _standard_normal(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    if dtype in (np.float32, np.float64):
        return rng.standard_normal(shape, dtype=dtype)
    return rng.standard_normal(shape).astype(dtype)


def _fill_uniform(fn: str, tensor: _T, a: float, b: float, generator: Any) -> _T:
    arr = _array(fn, tensor)
    rng = _rng(fn, generator)
    u = _uniform01(rng, arr.shape, arr.dtype)
    arr[...] = a + (b - a) * u
    return tensor


def _fill_normal(fn: str, tensor: _T, mean: float, std: float, generator: Any) -> _T:
    arr = _array(fn, tensor)
    rng = _rng(fn, generator)
    arr[...] = mean + std * _standard_normal(rng, arr.shape, arr.dtype)
    return tensor


def _shape_of(fn: str, tensor: Tensor | np.ndarray) -> tuple[int, ...]:
    if isinstance(tensor, (Tensor, np.ndarray)):
        return tuple(tensor.shape)
    raise TypeError(f"init.{fn}: tensor must be a Tensor, Parameter or ndarray, got {type(tensor).__name__}")


# ----------------------------------------------------------------------------------- gains and fans
def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The recommended gain for a nonlinearity (its `torch.nn.functional` name), as PyTorch's.

    linear/conv*/sigmoid 1, tanh 5/3, relu sqrt(2), leaky_relu sqrt(2 / (1 + slope^2)) with
    slope = param (default 0.01), selu 3/4.
    """
    if nonlinearity in _LINEAR_FNS or nonlinearity == "sigmoid":
        return 1
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            slope: float = 0.01
        elif (not isinstance(param, bool) and isinstance(param, int)) or isinstance(param, float):
            slope = param
        else:
            raise ValueError(f"calculate_gain: negative_slope {param} not a valid number")
        return math.sqrt(2.0 / (1 + slope**2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(
        f"calculate_gain: unsupported nonlinearity {nonlinearity!r}; expected one of "
        f"{[*_LINEAR_FNS, 'sigmoid', 'tanh', 'relu', 'leaky_relu', 'selu']}"
    )


def _calculate_fan_in_and_fan_out(tensor: Tensor | np.ndarray) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight (out, in, *receptive field): in * prod(rf), out * prod(rf)."""
    shape = _shape_of("_calculate_fan_in_and_fan_out", tensor)
    if len(shape) < 2:
        raise ValueError(
            f"Fan in and fan out can not be computed for tensor with fewer than 2 dimensions "
            f"(got shape {shape})"
        )
    receptive_field_size = math.prod(shape[2:])
    return shape[1] * receptive_field_size, shape[0] * receptive_field_size


def _calculate_correct_fan(tensor: Tensor | np.ndarray, mode: str) -> int:
    m = mode.lower()
    if m not in ("fan_in", "fan_out"):
        raise ValueError(f"Mode {mode} not supported, please use one of ['fan_in', 'fan_out']")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if m == "fan_in" else fan_out


def _zero_elements(fn: str, tensor: Tensor | np.ndarray) -> bool:
    if 0 in _shape_of(fn, tensor):
        warnings.warn("Initializing zero-element tensors is a no-op", stacklevel=3)
        return True
    return False


# ----------------------------------------------------------------------------------- fills
def uniform_(tensor: _T, a: float = 0.0, b: float = 1.0, *, generator: np.random.Generator) -> _T:
    """Fill with U(a, b)."""
    return _fill_uniform("uniform_", tensor, float(a), float(b), generator)


def normal_(tensor: _T, mean: float = 0.0, std: float = 1.0, *, generator: np.random.Generator) -> _T:
    """Fill with N(mean, std^2)."""
    return _fill_normal("normal_", tensor, float(mean), float(std), generator)


def trunc_normal_(
    tensor: _T,
    mean: float = 0.0,
    std: float = 1.0,
    a: float = -2.0,
    b: float = 2.0,
    *,
    generator: np.random.Generator,
) -> _T:
    """Fill with N(mean, std^2) truncated to [a, b] (a and b are absolute values, as in PyTorch).

    Drawn exactly by inverting the normal CDF Phi: u ~ U(Phi(alpha), Phi(beta)), x = mean + std *
    Phi^-1(u), with alpha = (a - mean) / std, beta = (b - mean) / std; a window in the upper tail is
    mirrored to the lower one, where Phi keeps its precision. Exact however far [a, b] lies from the
    mean, so unlike PyTorch it does not warn when mean is more than 2 std outside [a, b].
    """
    arr = _array("trunc_normal_", tensor)
    rng = _rng("trunc_normal_", generator)
    if not std > 0:
        raise ValueError(f"init.trunc_normal_: std must be positive, got {std}")
    if not a < b:
        raise ValueError(f"init.trunc_normal_: need a < b, got a={a}, b={b}")
    alpha, beta = (a - mean) / std, (b - mean) / std
    sign = 1.0
    if alpha > 0:  # mirror: z in [alpha, beta] is -z in [-beta, -alpha]
        alpha, beta, sign = -beta, -alpha, -1.0
    lo, hi = ndtr(alpha), ndtr(beta)
    u = lo + (hi - lo) * rng.random(arr.shape)  # float64 throughout: the tails need the precision
    arr[...] = np.clip(mean + sign * std * ndtri(u), a, b)
    return tensor


def constant_(tensor: _T, val: float) -> _T:
    """Fill with val."""
    _array("constant_", tensor)[...] = val
    return tensor


def ones_(tensor: _T) -> _T:
    """Fill with 1."""
    return constant_(tensor, 1.0)


def zeros_(tensor: _T) -> _T:
    """Fill with 0."""
    return constant_(tensor, 0.0)


def xavier_uniform_(tensor: _T, gain: float = 1.0, *, generator: np.random.Generator) -> _T:
    """Glorot uniform: U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    bound = math.sqrt(3.0) * std
    return _fill_uniform("xavier_uniform_", tensor, -bound, bound, generator)


def xavier_normal_(tensor: _T, gain: float = 1.0, *, generator: np.random.Generator) -> _T:
    """Glorot normal: N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    std = gain * math.sqrt(2.0 / float(fan_in + fan_out))
    return _fill_normal("xavier_normal_", tensor, 0.0, std, generator)


FanMode = Literal["fan_in", "fan_out"]


def kaiming_uniform_(
    tensor: _T,
    a: float = 0,
    mode: FanMode = "fan_in",
    nonlinearity: str = "leaky_relu",
    *,
    generator: np.random.Generator,
) -> _T:
    """He uniform: U(-bound, bound) with bound = gain * sqrt(3 / fan), gain = calculate_gain(nonlinearity, a).

    `nn.Linear` uses a = sqrt(5), which makes bound = 1 / sqrt(fan_in).
    """
    if _zero_elements("kaiming_uniform_", tensor):
        return tensor
    fan = _calculate_correct_fan(tensor, mode)
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    bound = math.sqrt(3.0) * std
    return _fill_uniform("kaiming_uniform_", tensor, -bound, bound, generator)


def kaiming_normal_(
    tensor: _T,
    a: float = 0,
    mode: FanMode = "fan_in",
    nonlinearity: str = "leaky_relu",
    *,
    generator: np.random.Generator,
) -> _T:
    """He normal: N(0, std^2) with std = gain / sqrt(fan), gain = calculate_gain(nonlinearity, a)."""
    if _zero_elements("kaiming_normal_", tensor):
        return tensor
    fan = _calculate_correct_fan(tensor, mode)
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return _fill_normal("kaiming_normal_", tensor, 0.0, std, generator)
