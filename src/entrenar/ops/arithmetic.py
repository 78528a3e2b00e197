"""Elementwise arithmetic, selection and comparisons: the ops behind Python's operators.

add, sub, mul, div, neg and pow (+ - * / unary - **), clamp, where, maximum and minimum, and the
comparisons (< <= > >= == !=, which return bool tensors and carry no gradient). Each primitive's
forward and backward sit side by side; binary ops broadcast as NumPy (and PyTorch) do and leave the
reduction of broadcast gradients to the tape. elementwise.py (unary maths, activations) imports
`_pos` from here and re-exports these ops.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from entrenar.autograd.registry import Arg, case, defop, public
from entrenar.tensor import Tensor, TensorLike

__all__ = [
    "add",
    "clamp",
    "div",
    "maximum",
    "minimum",
    "mul",
    "neg",
    "pow",
    "sub",
    "where",
]

A = Arg


def _pos(*shape: int) -> Arg:
    """A positive input (for log, sqrt, divisors, bases of real powers)."""
    return Arg(shape, low=0.5, high=2.0)


# ----------------------------------------------------------------------------------- arithmetic
@defop("add", broadcasts=True)
def _Add(a: np.ndarray, b: np.ndarray) -> Any:
    return a + b, None


@_Add.defbackward
def _add_backward(g: np.ndarray, _: None) -> Any:
    return g, g


@defop("sub", broadcasts=True)
def _Sub(a: np.ndarray, b: np.ndarray) -> Any:
    return a - b, None


@_Sub.defbackward
def _sub_backward(g: np.ndarray, _: None) -> Any:
    return g, -g


@defop("mul", broadcasts=True, needs_mask=True)
def _Mul(a: np.ndarray, b: np.ndarray) -> Any:
    return a * b, (a, b)


@_Mul.defbackward
def _mul_backward(g: np.ndarray, saved: Any, needs: tuple[bool, ...]) -> Any:
    a, b = saved
    return (g * b if needs[0] else None), (g * a if needs[1] else None)


@defop("div", broadcasts=True, needs_mask=True)
def _Div(a: np.ndarray, b: np.ndarray) -> Any:
    out = a / b
    return out, (b, out)


@_Div.defbackward
def _div_backward(g: np.ndarray, saved: Any, needs: tuple[bool, ...]) -> Any:
    b, out = saved
    ga = g / b
    return ga, (-ga * out if needs[1] else None)


@defop("neg")
def _Neg(a: np.ndarray) -> Any:
    return -a, None


@_Neg.defbackward
def _neg_backward(g: np.ndarray, _: None) -> Any:
    return (-g,)


@defop("pow", broadcasts=True, needs_mask=True)
def _Pow(a: np.ndarray, b: np.ndarray) -> Any:
    out = np.power(a, b)
    return out, (a, b, out)


@_Pow.defbackward
def _pow_backward(g: np.ndarray, saved: Any, needs: tuple[bool, ...]) -> Any:
    a, b, out = saved
    ga = gb = None
    if needs[0]:
        # b * a**(b-1); where b == 0 the derivative is 0 even at a == 0 (PyTorch's convention)
        with np.errstate(divide="ignore", invalid="ignore"):
            ga = np.where(b == 0, 0.0, g * b * np.power(a, b - 1)).astype(g.dtype, copy=False)
    if needs[1]:
        with np.errstate(divide="ignore", invalid="ignore"):
            # a**b * log(a); PyTorch masks a == 0 with b >= 0 to 0
            gb = np.where((a == 0) & (b >= 0), 0.0, g * out * np.log(a)).astype(g.dtype, copy=False)
    return ga, gb


_BIN_CASES = [
    case(A((3, 4)), A((3, 4))),
    case(A((2, 1, 3)), A((4, 1))),
    case(A((3,)), 1.5),
    case(A((2, 3)), A((1, 3), kind="const")),
]


@public("torch.add", _BIN_CASES, methods=("add", "__add__", "__radd__"))
def add(input: TensorLike, other: TensorLike) -> Tensor:
    """input + other, broadcasting."""
    return _Add(input, other)


@public("torch.sub", _BIN_CASES, methods=("sub", "__sub__"))
def sub(input: TensorLike, other: TensorLike) -> Tensor:
    """input - other, broadcasting."""
    return _Sub(input, other)


@public("torch.mul", _BIN_CASES, methods=("mul", "__mul__", "__rmul__"))
def mul(input: TensorLike, other: TensorLike) -> Tensor:
    """input * other, broadcasting."""
    return _Mul(input, other)


@public(
    "torch.div",
    [case(A((3, 4)), _pos(3, 4)), case(A((2, 1, 3)), _pos(4, 1)), case(A((3,)), 1.5), case(2.0, _pos(3))],
    methods=("div", "__truediv__"),
)
def div(input: TensorLike, other: TensorLike) -> Tensor:
    """input / other, broadcasting (true division)."""
    return _Div(input, other)


@public("torch.neg", [case(A((3, 4)))], methods=("neg", "__neg__"))
def neg(input: TensorLike) -> Tensor:
    """-input."""
    return _Neg(input)


@public(
    "torch.pow",
    [
        case(_pos(3, 4), A((3, 4))),
        case(A((3, 4)), 3.0),
        case(A((2, 3)), 2),
        case(_pos(2, 3), 0.5),
        case(_pos(2, 1), A((3,))),
        case(1.7, A((4,))),
    ],
    methods=("pow", "__pow__"),
)
def pow(input: TensorLike, exponent: TensorLike) -> Tensor:
    """input ** exponent, broadcasting; the base may be a scalar."""
    return _Pow(input, exponent)


Tensor.__rsub__ = lambda self, other: _Sub(other, self)  # type: ignore[method-assign]
Tensor.__rtruediv__ = lambda self, other: _Div(other, self)  # type: ignore[method-assign]
Tensor.__rpow__ = lambda self, other: _Pow(other, self)  # type: ignore[method-assign]


# ----------------------------------------------------------------------------------- selection
@defop("clamp")
def _Clamp(x: np.ndarray, *, min: float | None, max: float | None) -> Any:
    out = np.clip(x, min, max)
    keep = np.ones(x.shape, dtype=bool)
    if min is not None:
        keep &= x >= min
    if max is not None:
        keep &= x <= max
    return out.astype(x.dtype, copy=False), keep


@_Clamp.defbackward
def _clamp_backward(g: np.ndarray, keep: np.ndarray) -> Any:
    return (g * keep,)


@defop("where", broadcasts=True)
def _Where(cond: np.ndarray, a: np.ndarray, b: np.ndarray) -> Any:
    return np.where(cond, a, b), cond


@_Where.defbackward
def _where_backward(g: np.ndarray, cond: np.ndarray) -> Any:
    zero = np.zeros((), dtype=g.dtype)
    return None, np.where(cond, g, zero), np.where(cond, zero, g)


@defop("maximum", broadcasts=True)
def _Maximum(a: np.ndarray, b: np.ndarray) -> Any:
    return np.maximum(a, b), (a, b)


@_Maximum.defbackward
def _maximum_backward(g: np.ndarray, saved: Any) -> Any:
    a, b = saved
    # ties split the gradient evenly, as in PyTorch
    wa = (a > b) + 0.5 * (a == b)
    return g * wa.astype(g.dtype), g * (1 - wa).astype(g.dtype)


@defop("minimum", broadcasts=True)
def _Minimum(a: np.ndarray, b: np.ndarray) -> Any:
    return np.minimum(a, b), (a, b)


@_Minimum.defbackward
def _minimum_backward(g: np.ndarray, saved: Any) -> Any:
    a, b = saved
    wa = (a < b) + 0.5 * (a == b)
    return g * wa.astype(g.dtype), g * (1 - wa).astype(g.dtype)


@public(
    "torch.clamp",
    [
        case(A((3, 4)), min=-0.5, max=0.7),
        case(A((3, 4)), min=0.1),
        case(A((3, 4)), max=0.1),
    ],
    methods=("clamp", "clip"),
)
def clamp(input: TensorLike, min: float | None = None, max: float | None = None) -> Tensor:
    """Limit input to [min, max]; the gradient flows where min <= input <= max."""
    if min is None and max is None:
        raise ValueError("clamp: at least one of min and max must be given")
    return _Clamp(input, min=min, max=max)


@public(
    "torch.where",
    [
        case(A((3, 4), kind="bool"), A((3, 4)), A((3, 4))),
        case(A((3, 1), kind="bool"), A((1, 4)), A((3, 4))),
        case(A((2, 3), kind="bool"), A((2, 3)), 0.0),
    ],
)
def where(condition: TensorLike, input: TensorLike, other: TensorLike) -> Tensor:
    """input where condition holds, other elsewhere, broadcasting all three."""
    cond = condition.data if isinstance(condition, Tensor) else np.asarray(condition)
    if cond.dtype != np.bool_:
        raise TypeError(f"where: condition must be a bool tensor, got dtype {cond.dtype}")
    return _Where(Tensor(cond), input, other)


@public(
    "torch.maximum",
    [case(A((3, 4)), A((3, 4))), case(A((2, 1, 3)), A((4, 1)))],
    methods=("maximum",),
)
def maximum(input: TensorLike, other: TensorLike) -> Tensor:
    """Elementwise maximum; ties share the gradient equally."""
    return _Maximum(input, other)


@public(
    "torch.minimum",
    [case(A((3, 4)), A((3, 4))), case(A((2, 1, 3)), A((4, 1)))],
    methods=("minimum",),
)
def minimum(input: TensorLike, other: TensorLike) -> Tensor:
    """Elementwise minimum; ties share the gradient equally."""
    return _Minimum(input, other)


# ----------------------------------------------------------------------------------- comparisons
def _compare(ufunc: Any) -> Any:
    def method(self: Tensor, other: Any) -> Tensor:
        o = other.data if isinstance(other, Tensor) else other
        return Tensor(np.asarray(ufunc(self.data, o)))

    return method


for _name, _ufunc in [
    ("lt", np.less),
    ("le", np.less_equal),
    ("gt", np.greater),
    ("ge", np.greater_equal),
    ("eq", np.equal),
    ("ne", np.not_equal),
]:
    setattr(Tensor, f"__{_name}__", _compare(_ufunc))
    setattr(Tensor, _name, _compare(_ufunc))
