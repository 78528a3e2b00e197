"""The op registry: primitives (forward + backward side by side) and the public functions with specs.

A primitive is declared once, its forward and backward next to each other::

    @defop("exp")
    def _Exp(x):                     # ndarrays in: tensor inputs positional, params by keyword
        out = np.exp(x)
        return out, out              # the output and the residuals the backward needs

    @_Exp.defbackward
    def _exp_backward(g, out):       # upstream gradient and the residuals
        return (g * out,)            # one gradient per tensor input (None where none flows)

Calling the `OpDef` (`_Exp(t)`) with tensors (or scalars, converted to the dtype of the first
floating tensor) runs the forward and, if grad mode is on and an input requires grad, records a
tape node. A backward never writes into `g` or the residuals, and never returns a residual itself.

Every public function (what `entrenar.functional` exports) is registered with `public(...)` together
with its test `Spec`: the input shapes and domains, the PyTorch function it must match, and
tolerances. The test suite gradchecks and oracle-checks every registered spec, and fails for a
public function or primitive that no spec exercises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from entrenar.autograd import tape
from entrenar.tensor import Tensor

__all__ = [
    "OPS",
    "PUBLIC",
    "Arg",
    "Built",
    "Case",
    "Gen",
    "OpDef",
    "Spec",
    "as_tensor",
    "case",
    "defop",
    "public",
]

_MODE = tape._MODE
_Node = tape.Node


class OpDef:
    """A differentiable primitive: forward(*arrays, **params) -> (out, saved); backward(g, saved)."""

    __slots__ = ("backward", "broadcasts", "forward", "name", "needs_mask")

    def __init__(
        self,
        name: str,
        forward: Callable[..., Any],
        backward: Callable[..., Any],
        broadcasts: bool,
        needs_mask: bool,
    ) -> None:
        self.name = name
        self.forward = forward
        self.backward = backward
        self.broadcasts = broadcasts
        self.needs_mask = needs_mask

    def __call__(self, *args: Any, **params: Any) -> Tensor:
        datas: list[Any] = []
        rg = False
        convert = False
        for a in args:
            if isinstance(a, Tensor):
                datas.append(a.data)
                if a._rg:
                    rg = True
            elif a is None:
                datas.append(None)
            else:
                datas.append(None)
                convert = True
        if convert:
            ref = _ref_dtype(args)
            datas = [
                d if d is not None or a is None else _scalar_array(a, ref)
                for d, a in zip(datas, args, strict=True)
            ]
        try:
            out, saved = self.forward(*datas, **params)
        except ValueError as e:
            shapes = ", ".join(str(None if d is None else np.shape(d)) for d in datas)
            raise ValueError(f"{self.name}: {e} (input shapes: {shapes})") from e
        if type(out) is not np.ndarray:  # ufuncs on 0-d arrays return NumPy scalars
            out = np.asarray(out)
        if out.dtype.char == "d" and not any(d is not None and d.dtype.char == "d" for d in datas):
            # integer (or float32) inputs: the result takes PyTorch's default float32, not NumPy's float64
            out = out.astype(np.float32)
        t = Tensor.__new__(Tensor)
        t.data = out
        t.grad = None
        t._retains_grad = False
        if rg and _MODE.enabled:
            # Edges to the inputs' nodes (or leaves), never to non-leaf tensors: see tape.Node.
            edges: list[Any] = []
            metas: list[Any] = []
            for a in args:
                if isinstance(a, Tensor) and a._rg:
                    edges.append(a if a._node is None else a._node)
                    metas.append((a.data.shape, a.data.dtype))
                else:
                    edges.append(None)
                    metas.append(None)
            t._rg = True
            t._node = _Node(self, tuple(edges), tuple(metas), tuple(e is not None for e in edges), saved)
        else:
            t._rg = False
            t._node = None
        return t

    def defbackward(self, backward: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: set this op's backward(g, saved[, needs]) -> one gradient per tensor input."""
        if self.backward is not _missing_backward:
            raise ValueError(f"op '{self.name}' already has a backward")
        self.backward = backward
        return backward

    def __repr__(self) -> str:
        return f"<op {self.name}>"


def _ref_dtype(args: tuple[Any, ...]) -> np.dtype[Any] | None:
    """The dtype scalars take: the first floating tensor's, else the first tensor's."""
    tensors = [a.data.dtype for a in args if isinstance(a, Tensor)]
    for dt in tensors:
        if dt.kind == "f":
            return dt
    if tensors:
        return tensors[0]
    for a in args:
        if isinstance(a, np.ndarray):
            return a.dtype
    return None


def _scalar_array(value: Any, ref: np.dtype[Any] | None) -> np.ndarray:
    """A non-tensor operand as an array; Python/NumPy scalars take the tensor operand's dtype."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (bool, int, float, np.generic)):
        if ref is not None and (ref.kind == "f" or not isinstance(value, (float, np.floating))):
            return np.asarray(value, dtype=ref)
        return np.asarray(value, dtype=np.float32 if isinstance(value, (float, np.floating)) else None)
    arr = np.asarray(value)
    if arr.dtype == np.float64 and ref is not None and ref.kind == "f":
        arr = arr.astype(ref)
    return arr


def as_tensor(value: Any, like: Tensor | None = None) -> Tensor:
    """`value` as a Tensor (a constant unless it already is one); scalars take `like`'s dtype."""
    if isinstance(value, Tensor):
        return value
    return Tensor(_scalar_array(value, None if like is None else like.data.dtype))


OPS: dict[str, OpDef] = {}


def _missing_backward(*_: Any) -> Any:
    raise NotImplementedError("this op has no backward; register one with @op.defbackward")


def defop(
    name: str, *, broadcasts: bool = False, needs_mask: bool = False
) -> Callable[[Callable[..., Any]], OpDef]:
    """Register a primitive from its forward function; add the backward with `@op.defbackward`.

    `broadcasts=True` lets the tape sum input gradients back to the input shapes (NumPy broadcasting).
    `needs_mask=True` passes the backward a third argument, a tuple of bools saying which inputs
    require grad, so that it can skip work (a frozen weight's gradient, say).
    """

    def register(forward: Callable[..., Any]) -> OpDef:
        if name in OPS:
            raise ValueError(f"op '{name}' is registered twice")
        op = OpDef(name, forward, _missing_backward, broadcasts, needs_mask)
        OPS[name] = op
        return op

    return register


# --------------------------------------------------------------------------------------- test specs
@dataclass(frozen=True)
class Arg:
    """A random tensor argument of a test case.

    kind: "float" (differentiable), "const" (float, no grad), "int" (integers in [low, high)),
    "bool". `away` lists points (kinks) that sampled values keep at least 0.05 from.
    """

    shape: tuple[int, ...]
    low: float = -2.0
    high: float = 2.0
    kind: str = "float"
    away: tuple[float, ...] = ()


@dataclass(frozen=True)
class Gen:
    """A fresh `np.random.Generator(seed)` for each call (for ops that draw random numbers)."""

    seed: int = 0


@dataclass(frozen=True)
class Built:
    """A non-tensor argument built for each case (a quantized weight, say).

    make(rng) builds the value the function takes; as_torch(value, dtype) gives the array that the
    PyTorch function takes in its place (as a constant tensor of the case's dtype).
    """

    make: Callable[[np.random.Generator], Any]
    as_torch: Callable[[Any, np.dtype[Any]], np.ndarray]


@dataclass(frozen=True)
class Case:
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    torch_kwargs: dict[str, Any] | None = None  # kwargs for the PyTorch call, if they differ
    oracle: bool = True  # False only where PyTorch cannot compute the same thing (with the reason)
    reason: str = ""


def case(
    *args: Any,
    torch_kwargs: dict[str, Any] | None = None,
    oracle: bool = True,
    reason: str = "",
    **kwargs: Any,
) -> Case:
    if not oracle and not reason:
        raise ValueError("a case without an oracle must say why")
    return Case(args, kwargs, torch_kwargs, oracle, reason)


@dataclass(frozen=True)
class Spec:
    """How to test one public function.

    torch: the dotted path of the PyTorch function it matches ("torch.exp",
    "torch.nn.functional.gelu", "torch.Tensor.__getitem__"). outputs: how many tensor outputs the
    call returns when it returns a tuple (None for a single tensor). module: the module whose
    `__all__` exports the function (entrenar.functional, or a package above the ops such as
    entrenar.quant).
    """

    name: str
    torch: str
    cases: tuple[Case, ...]
    atol: float = 1e-6
    rtol: float = 1e-4
    eps: float = 1e-6
    float32: bool = True  # also run the float32 oracle comparison
    rtol32: float = 1e-5
    atol32: float = 1e-6
    module: str = "entrenar.functional"


PUBLIC: dict[str, Callable[..., Any]] = {}
SPECS: dict[str, Spec] = {}

_F = TypeVar("_F", bound=Callable[..., Any])


def public(
    torch: str,
    cases: list[Case],
    *,
    name: str | None = None,
    methods: tuple[str, ...] = (),
    **tolerances: Any,
) -> Callable[[_F], _F]:
    """Register a public function with its test spec and attach it to Tensor under `methods`."""

    def register(fn: _F) -> _F:
        key = name or fn.__name__
        if key in PUBLIC:
            raise ValueError(f"public function '{key}' is registered twice")
        if not cases:
            raise ValueError(f"public function '{key}' needs at least one test case")
        PUBLIC[key] = fn
        SPECS[key] = Spec(key, torch, tuple(cases), **tolerances)
        for m in methods:
            setattr(Tensor, m, fn)
        return fn

    return register

