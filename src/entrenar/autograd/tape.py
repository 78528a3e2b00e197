"""The tape: grad mode, graph nodes, and the reverse-topological backward pass.

A tensor made by an op while grad mode is on and some input requires grad carries a `Node`: the op,
its input tensors and the residuals its forward saved. `backward` walks those nodes once each, in
reverse topological order, summing the gradients of tensors used more than once.

This module knows nothing of `Tensor` beyond the attributes it reads (`data`, `grad`, `_rg`, `_node`,
`_retains_grad`), so that `tensor.py` can build on it without an import cycle.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from entrenar.autograd.registry import OpDef
    from entrenar.tensor import Tensor

__all__ = ["Node", "backward", "enable_grad", "is_grad_enabled", "no_grad", "set_grad_enabled"]


class _GradMode(threading.local):
    enabled: bool = True


_MODE = _GradMode()


def is_grad_enabled() -> bool:
    """Whether ops record onto the tape in this thread."""
    return _MODE.enabled


class set_grad_enabled:
    """Set grad mode for this thread: at once when called, restored on leaving a `with` block."""

    def __init__(self, mode: bool) -> None:
        self.prev = _MODE.enabled
        _MODE.enabled = bool(mode)

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        _MODE.enabled = self.prev


class _GradModeContext:
    """A reusable `with` block (and decorator) that sets grad mode on entry and restores it on exit."""

    def __init__(self, mode: bool) -> None:
        self.mode = mode
        self.prev: list[bool] = []

    def __enter__(self) -> None:
        self.prev.append(_MODE.enabled)
        _MODE.enabled = self.mode

    def __exit__(self, *exc: object) -> None:
        _MODE.enabled = self.prev.pop()

    def __call__(self, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)

        wrapper.__wrapped__ = fn  # type: ignore[attr-defined]
        wrapper.__name__ = getattr(fn, "__name__", "wrapper")
        wrapper.__doc__ = getattr(fn, "__doc__", None)
        return wrapper


def no_grad() -> _GradModeContext:
    """Context manager (or decorator) under which no op records onto the tape, as `torch.no_grad`."""
    return _GradModeContext(False)


def enable_grad() -> _GradModeContext:
    """Context manager (or decorator) that turns recording back on inside a `no_grad` block."""
    return _GradModeContext(True)


class Node:
    """One recorded op application: the op, where its input gradients go, and the saved residuals.

    `edges[i]` is where the gradient of input i goes: the `Node` that made a non-leaf input, the leaf
    `Tensor` itself, or None for an input that takes no gradient (a constant, or a tensor that did
    not require grad when the op ran). A node never holds its non-leaf inputs' tensors, only their
    nodes, so an activation the backward does not need (one no op saved as a residual) is freed as
    soon as the user drops it, as in PyTorch. `metas[i]` is input i's (shape, dtype), against which
    the gradient is checked; `needs[i]` says whether input i takes a gradient. `retainer` is a weak
    reference to the output tensor when `retain_grad()` asked for its gradient.
    """

    __slots__ = ("edges", "freed", "metas", "needs", "op", "retainer", "saved")

    def __init__(
        self,
        op: OpDef,
        edges: tuple[Any, ...],
        metas: tuple[Any, ...],
        needs: tuple[bool, ...],
        saved: Any,
    ) -> None:
        self.op = op
        self.edges = edges
        self.metas = metas
        self.needs = needs
        self.saved = saved
        self.freed = False
        self.retainer: Any = None


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum a broadcast gradient back down to `shape` (the one place broadcasting is undone)."""
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad


def _topological(root: Node) -> list[Node]:
    """The nodes reachable from root, each before every node whose output it consumed."""
    order: list[Node] = []
    visited: set[int] = set()
    stack: list[tuple[Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        if node.freed:
            raise RuntimeError(
                f"Trying to backward through the graph a second time (through '{node.op.name}'): its "
                "saved values were freed by the first backward. Pass retain_graph=True to the first "
                "backward() if you need to backward through the graph again."
            )
        stack.append((node, True))
        for e in node.edges:
            if type(e) is Node and id(e) not in visited:
                stack.append((e, False))
    order.reverse()
    return order


def _fit(op: OpDef, index: int, g: Any, meta: tuple[tuple[int, ...], np.dtype[Any]]) -> np.ndarray:
    """Check one input gradient against its input's shape; undo broadcasting for ops that broadcast."""
    shape, dtype = meta
    if not isinstance(g, np.ndarray):
        g = np.asarray(g)
    if g.shape != shape:
        if op.broadcasts:
            fitted = unbroadcast(g, shape)
            if fitted.shape == shape:
                g = fitted
        if g.shape != shape:
            raise RuntimeError(
                f"backward of '{op.name}' returned a gradient of shape {g.shape} for input {index}, "
                f"whose shape is {shape}"
            )
    if g.dtype != dtype:
        g = g.astype(dtype)
    return g


def _give_leaf(leaf: Tensor, g: np.ndarray, handed: set[int]) -> None:
    """Accumulate g into a leaf's .grad; a leaf never shares its .grad array with anyone."""
    if leaf.grad is None:
        if g.base is not None or id(g) in handed or not g.flags.writeable:
            g = g.copy()
        handed.add(id(g))
        leaf.grad = g
    else:
        # A new array, never in place: the old one may be held by the caller.
        leaf.grad = leaf.grad + g


def backward(root: Tensor, grad: np.ndarray, retain_graph: bool = False) -> None:
    """Propagate `grad` (shaped like root) from root to every leaf that requires grad."""
    handed: set[int] = {id(grad)}  # arrays a leaf may not take without copying
    if root._node is None:
        _give_leaf(root, grad, handed)
        return
    grads: dict[int, np.ndarray] = {id(root._node): grad}
    for node in _topological(root._node):
        g = grads.pop(id(node), None)
        if g is not None:
            if node.retainer is not None:
                kept = node.retainer()
                if kept is not None:
                    _give_leaf(kept, g, handed)
            op = node.op
            edges = node.edges
            needs = node.needs
            in_grads = op.backward(g, node.saved, needs) if op.needs_mask else op.backward(g, node.saved)
            if len(in_grads) != len(edges):
                raise RuntimeError(
                    f"backward of '{op.name}' returned {len(in_grads)} gradients for {len(edges)} inputs"
                )
            for i, e in enumerate(edges):
                gi = in_grads[i]
                if gi is None or e is None:
                    continue
                shape, dtype = node.metas[i]
                if type(gi) is not np.ndarray or gi.shape != shape or gi.dtype != dtype:
                    gi = _fit(op, i, gi, node.metas[i])
                if type(e) is Node:
                    key = id(e)
                    prev = grads.get(key)
                    grads[key] = gi if prev is None else prev + gi
                elif e._rg:  # a leaf turned requires_grad off after the forward gets nothing, as PyTorch
                    _give_leaf(e, gi, handed)
        if not retain_graph:
            node.saved = None
            node.freed = True
