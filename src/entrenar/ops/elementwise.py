"""Elementwise ops: arithmetic, activations, clamp/where/maximum/minimum, comparisons.

Each primitive's forward and backward sit side by side; binary ops broadcast as NumPy (and
PyTorch) do and leave the reduction of broadcast gradients to the tape.

This file holds the functions of one tensor: unary maths (exp, log, sqrt, rsqrt, abs, tanh, sigmoid)
and activations (relu, leaky_relu, gelu, silu, softplus). Arithmetic, clamp/where/maximum/minimum and
the comparisons are in arithmetic.py and re-exported here, so this module still names every
elementwise op.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import special

from entrenar.autograd.registry import Arg, case, defop, public
from entrenar.kernels import nn_fused, silu_fused
from entrenar.ops.arithmetic import (
    _pos,
    add,
    clamp,
    div,
    maximum,
    minimum,
    mul,
    neg,
    pow,
    sub,
    where,
)
from entrenar.tensor import Tensor, TensorLike

__all__ = [
    "abs",
    "add",
    "clamp",
    "div",
    "exp",
    "gelu",
    "leaky_relu",
    "log",
    "maximum",
    "minimum",
    "mul",
    "neg",
    "pow",
    "relu",
    "rsqrt",
    "sigmoid",
    "silu",
    "softplus",
    "sqrt",
    "sub",
    "tanh",
    "where",
]

A = Arg


# ----------------------------------------------------------------------------------- unary maths
@defop("exp")
def _Exp(x: np.ndarray) -> Any:
    out = np.exp(x)
    return out, out


@_Exp.defbackward
def _exp_backward(g: np.ndarray, out: np.ndarray) -> Any:
    return (g * out,)


@defop("log")
def _Log(x: np.ndarray) -> Any:
    return np.log(x), x


@_Log.defbackward
def _log_backward(g: np.ndarray, x: np.ndarray) -> Any:
    return (g / x,)


@defop("sqrt")
def _Sqrt(x: np.ndarray) -> Any:
    out = np.sqrt(x)
    return out, out


@_Sqrt.defbackward
def _sqrt_backward(g: np.ndarray, out: np.ndarray) -> Any:
    return (g / (2 * out),)


@defop("rsqrt")
def _Rsqrt(x: np.ndarray) -> Any:
    out = 1 / np.sqrt(x)
    return out, out


@_Rsqrt.defbackward
def _rsqrt_backward(g: np.ndarray, out: np.ndarray) -> Any:
    return (-0.5 * g * out * out * out,)


@defop("abs")
def _Abs(x: np.ndarray) -> Any:
    return np.abs(x), x


@_Abs.defbackward
def _abs_backward(g: np.ndarray, x: np.ndarray) -> Any:
    return (g * ((x > 0).astype(g.dtype) - (x < 0)),)  # sign(x), 0 at NaN as in PyTorch


@defop("tanh")
def _Tanh(x: np.ndarray) -> Any:
    out = np.tanh(x)
    return out, out


@_Tanh.defbackward
def _tanh_backward(g: np.ndarray, out: np.ndarray) -> Any:
    return (g * (1 - out * out),)


@defop("sigmoid")
def _Sigmoid(x: np.ndarray) -> Any:
    out = special.expit(x)
    return out, out


@_Sigmoid.defbackward
def _sigmoid_backward(g: np.ndarray, out: np.ndarray) -> Any:
    return (g * out * (1 - out),)


@public("torch.exp", [case(A((3, 4))), case(A(()))], methods=("exp",))
def exp(input: TensorLike) -> Tensor:
    """e ** input."""
    return _Exp(input)


@public("torch.log", [case(_pos(3, 4))], methods=("log",))
def log(input: TensorLike) -> Tensor:
    """Natural logarithm."""
    return _Log(input)


@public("torch.sqrt", [case(_pos(3, 4))], methods=("sqrt",))
def sqrt(input: TensorLike) -> Tensor:
    """Square root."""
    return _Sqrt(input)


@public("torch.rsqrt", [case(_pos(3, 4))], methods=("rsqrt",))
def rsqrt(input: TensorLike) -> Tensor:
    """1 / sqrt(input)."""
    return _Rsqrt(input)


@public("torch.abs", [case(A((3, 4), away=(0.0,)))], methods=("abs", "__abs__"))
def abs(input: TensorLike) -> Tensor:
    """|input|; the gradient at 0 is 0, as in PyTorch."""
    return _Abs(input)


@public("torch.tanh", [case(A((3, 4)))], methods=("tanh",))
def tanh(input: TensorLike) -> Tensor:
    """Hyperbolic tangent."""
    return _Tanh(input)


@public("torch.sigmoid", [case(A((3, 4), low=-6, high=6))], methods=("sigmoid",))
def sigmoid(input: TensorLike) -> Tensor:
    """1 / (1 + e ** -input), computed without overflow."""
    return _Sigmoid(input)


# ----------------------------------------------------------------------------------- activations
@defop("relu")
def _Relu(x: np.ndarray) -> Any:
    out = np.maximum(x, 0)
    return out, x


@_Relu.defbackward
def _relu_backward(g: np.ndarray, x: np.ndarray) -> Any:
    return (g * ~(x <= 0),)  # NaN inputs pass the gradient through, as in PyTorch


@defop("leaky_relu")
def _LeakyRelu(x: np.ndarray, *, negative_slope: float) -> Any:
    pos = x > 0
    slope = np.where(pos, 1, negative_slope).astype(x.dtype)
    return x * slope, slope


@_LeakyRelu.defbackward
def _leakyrelu_backward(g: np.ndarray, slope: np.ndarray) -> Any:
    return (g * slope,)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@defop("gelu")
def _Gelu(x: np.ndarray, *, approximate: str) -> Any:
    if nn_fused.supports(x):  # one pass, saving only x (kernels/nn_fused.py); below: the reference
        return nn_fused.gelu_forward(x, approximate), ("fused", x, approximate)
    dt = x.dtype.type
    if approximate == "tanh":
        inner = dt(_SQRT_2_OVER_PI) * (x + dt(0.044715) * x * x * x)
        t = np.tanh(inner)
        out = dt(0.5) * x * (1 + t)
        return out, ("tanh", x, t)
    cdf = dt(0.5) * (1 + special.erf(x * dt(_INV_SQRT_2)))
    return x * cdf, ("none", x, cdf)


@_Gelu.defbackward
def _gelu_backward(g: np.ndarray, saved: Any) -> Any:
    kind, x, aux = saved
    if kind == "fused":
        return (nn_fused.gelu_backward(g, x, aux),)
    dt = x.dtype.type
    if kind == "tanh":
        t = aux
        dinner = dt(_SQRT_2_OVER_PI) * (1 + dt(3 * 0.044715) * x * x)
        return (g * (dt(0.5) * (1 + t) + dt(0.5) * x * (1 - t * t) * dinner),)
    pdf = dt(_INV_SQRT_2PI) * np.exp(dt(-0.5) * x * x)
    return (g * (aux + x * pdf),)


@defop("silu")
def _Silu(x: np.ndarray) -> Any:
    if silu_fused.supports(x):  # one pass, saving only x (kernels/silu_fused.py); below: the reference
        return silu_fused.silu_forward(x), (x, None)
    # sigmoid as 1 / (1 + exp(-x)): NumPy's exp is vectorised, scipy's expit is not (2x the time); exp
    # overflows to inf for x < -88 (float32), where 1 / inf gives the limit 0 exactly as expit does
    with np.errstate(over="ignore"):
        s = np.exp(-x)
    s += 1
    np.reciprocal(s, out=s)
    return x * s, (x, s)


@_Silu.defbackward
def _silu_backward(g: np.ndarray, saved: Any) -> Any:
    x, s = saved
    if s is None:  # the fused forward saved only x
        return (silu_fused.silu_backward(g, x),)
    return (g * (s * (1 + x * (1 - s))),)


@defop("softplus")
def _Softplus(x: np.ndarray, *, beta: float, threshold: float) -> Any:
    bx = x * x.dtype.type(beta)
    linear = bx > threshold
    out = np.where(linear, x, np.logaddexp(0, bx) / x.dtype.type(beta)).astype(x.dtype, copy=False)
    return out, (bx, linear)


@_Softplus.defbackward
def _softplus_backward(g: np.ndarray, saved: Any) -> Any:
    bx, linear = saved
    return (g * np.where(linear, 1, special.expit(bx)).astype(g.dtype, copy=False),)


@public("torch.nn.functional.relu", [case(A((3, 4), away=(0.0,)))], methods=("relu",))
def relu(input: TensorLike) -> Tensor:
    """max(input, 0); the gradient at 0 is 0."""
    return _Relu(input)


@public(
    "torch.nn.functional.leaky_relu",
    [case(A((3, 4), away=(0.0,))), case(A((5,), away=(0.0,)), negative_slope=0.2)],
)
def leaky_relu(input: TensorLike, negative_slope: float = 0.01) -> Tensor:
    """input where positive, negative_slope * input elsewhere."""
    return _LeakyRelu(input, negative_slope=float(negative_slope))


@public(
    "torch.nn.functional.gelu",
    [case(A((3, 4), low=-4, high=4)), case(A((3, 4), low=-4, high=4), approximate="tanh")],
)
def gelu(input: TensorLike, approximate: str = "none") -> Tensor:
    """x * Phi(x) (exact, with erf), or its tanh approximation with approximate="tanh"."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return _Gelu(input, approximate=approximate)


@public("torch.nn.functional.silu", [case(A((3, 4), low=-5, high=5))])
def silu(input: TensorLike) -> Tensor:
    """x * sigmoid(x) (also called swish)."""
    return _Silu(input)


@public(
    "torch.nn.functional.softplus",
    [
        case(A((3, 4), low=-5, high=5)),
        case(A((3, 4), low=-5, high=5), beta=2.0, threshold=4.0),
    ],
)
def softplus(input: TensorLike, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """log(1 + e ** (beta x)) / beta, and x itself where beta x > threshold."""
    return _Softplus(input, beta=float(beta), threshold=float(threshold))
