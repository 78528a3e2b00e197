"""Gradient checkpointing: run a block without keeping its activations, recompute them in backward.

`checkpoint(fn, *args)` is `torch.utils.checkpoint.checkpoint` with use_reentrant=False semantics.
For a block y = fn(x; theta) inside a longer computation:

    forward   y = fn(x)            the inner graph is dropped at once; the node keeps x only
    backward  y' = fn(x)           recomputed with the tape on, from the same x and the same RNG state,
              (dL/dx, dL/dtheta) = vjp of y' with the upstream dL/dy, handed on as the node's gradients

so the activations of a network of L blocks cost one block's worth plus the L block inputs, for one
extra forward of each block. The block is a primitive `checkpoint` of the op registry (its backward
is the recompute), whose inputs are the tensor arguments that require grad plus every leaf the block
reads that requires grad (parameters, LoRA adapters), found by walking the block's graph once in the
forward. Non-leaf tensors that require grad must reach `fn` as arguments (a captured one is refused
when the arguments were computed from it; one from an unrelated branch is not detected, and would
have its graph run twice); constants and parameters may be captured.

Randomness (dropout) is made identical in the recompute by saving the `bit_generator.state` of each
np.random.Generator the block can draw from, and restoring it around the recompute (the generators'
later states are put back afterwards, so training draws the same numbers as without checkpointing).
The generators are those held as attributes by `fn` when it is a Module (or a Module's bound method)
and by its sub-modules, those among the arguments, and those listed in `generators=`; a block that
draws from any other generator gets a different mask in the recompute and wrong gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from entrenar import functional as F
from entrenar.autograd import tape
from entrenar.autograd.registry import Arg, Gen, case, defop, public
from entrenar.autograd.tape import Node, enable_grad, is_grad_enabled
from entrenar.nn.module import Module
from entrenar.tensor import Tensor

__all__ = ["checkpoint", "rng_generators"]


def rng_generators(*owners: Any) -> list[np.random.Generator]:
    """The distinct np.random.Generators among `owners`: generators themselves, and those held as
    attributes by a Module (or a Module's bound method) and all its sub-modules."""
    found: dict[int, np.random.Generator] = {}

    def visit(values: Iterable[Any]) -> None:
        for v in values:
            if isinstance(v, np.random.Generator):
                found.setdefault(id(v), v)

    for owner in owners:
        owner = getattr(owner, "__self__", owner)  # a bound method: its Module
        if isinstance(owner, np.random.Generator):
            visit([owner])
        elif isinstance(owner, Module):
            for m in owner.modules():
                visit(vars(m).values())
    return list(found.values())


class _Block:
    """What the recompute needs: the function, where the differentiable arguments sit among the
    arguments, the leaves read inside, and the generators with their states at the forward."""

    __slots__ = ("args", "function", "generators", "kwargs", "leaves", "meta", "slots", "states")

    def __init__(
        self,
        function: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        slots: list[int],
        generators: list[np.random.Generator],
        states: list[Any],
    ) -> None:
        self.function = function
        # the differentiable arguments are left out: the node's saved inputs stand for them
        self.args = tuple(None if i in slots else a for i, a in enumerate(args))
        self.kwargs = kwargs
        self.slots = slots
        self.generators = generators
        self.states = states
        self.leaves: list[Tensor] = []
        self.meta: tuple[tuple[int, ...], np.dtype[Any]] | None = None

    def run(self, inputs: Iterable[Tensor]) -> Any:
        """fn on the arguments with `inputs` (fresh leaves) in the differentiable slots."""
        call = list(self.args)
        for i, t in zip(self.slots, inputs, strict=True):
            call[i] = t
        return self.function(*call, **self.kwargs)


@defop("checkpoint")
def _Checkpoint(*inputs: np.ndarray, result: np.ndarray, block: _Block) -> tuple[np.ndarray, Any]:
    # the output was computed by `checkpoint`; keep the differentiable arguments' arrays, not the graph
    return result, (block, inputs[: len(block.slots)])


@_Checkpoint.defbackward
def _checkpoint_backward(g: np.ndarray, saved: Any) -> tuple[np.ndarray | None, ...]:
    block, arrays = saved
    inputs = [Tensor(a, requires_grad=True) for a in arrays]
    later = [gen.bit_generator.state for gen in block.generators]
    held = [leaf.grad for leaf in block.leaves]  # the leaves' gradients so far, put back below
    try:
        for gen, state in zip(block.generators, block.states, strict=True):
            gen.bit_generator.state = state
        for leaf in block.leaves:
            leaf.grad = None
        with enable_grad():
            out = block.run(inputs)
        if not isinstance(out, Tensor) or (out.shape, out.dtype) != block.meta:
            got = f"{out.dtype} {out.shape}" if isinstance(out, Tensor) else type(out).__name__
            raise RuntimeError(
                f"checkpoint: the recomputed output is {got}, the forward gave {block.meta}: the "
                "function must compute the same thing from the same inputs"
            )
        if out.requires_grad:
            tape.backward(out, g)
        grads = [t.grad for t in inputs] + [leaf.grad for leaf in block.leaves]
    finally:
        for leaf, grad in zip(block.leaves, held, strict=True):
            leaf.grad = grad
        for gen, state in zip(block.generators, later, strict=True):
            gen.bit_generator.state = state
    return tuple(grads)


def _leaves_of(out: Tensor, inner: list[Tensor], outer_nodes: set[int]) -> list[Tensor]:
    """The leaves requiring grad that `out`'s graph reaches, except the `inner` argument copies."""
    skip = {id(t) for t in inner}
    found: dict[int, Tensor] = {}
    seen: set[int] = set()
    stack: list[Node] = [] if out._node is None else [out._node]
    while stack:
        node = stack.pop()
        for e in node.edges:
            if type(e) is Node:
                if id(e) in outer_nodes:
                    raise ValueError(
                        "checkpoint: the function uses a tensor computed before it (one of its arguments' "
                        "graph) without taking it as an argument; pass every non-leaf tensor that requires "
                        "grad as an argument"
                    )
                if id(e) not in seen:
                    seen.add(id(e))
                    stack.append(e)
            elif e is not None and e._rg and id(e) not in skip:
                found.setdefault(id(e), e)
    return list(found.values())


def _ancestors(args: Iterable[Any]) -> set[int]:
    """The ids of every graph node the arguments were computed from (their own included)."""
    seen: set[int] = set()
    stack = [a._node for a in args if isinstance(a, Tensor) and a._node is not None]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.extend(e for e in node.edges if type(e) is Node and id(e) not in seen)
    return seen


def _sample_block(x: Tensor, w: Tensor) -> Tensor:
    """A two-layer block for the registry's gradient check: tanh(x @ w) @ w.T * x."""
    return (x @ w).tanh() @ w.transpose(0, 1) * x


def _sample_nested(x: Tensor, w: Tensor) -> Tensor:
    return checkpoint(_sample_block, checkpoint(_sample_block, x, w), w).sigmoid()


def _sample_dropout(x: Tensor, w: Tensor, *, generator: np.random.Generator) -> Tensor:
    return F.dropout((x @ w).tanh(), 0.5, True, generator=generator) * x


_NO_ORACLE = (
    "torch.utils.checkpoint takes a torch function; the block is entrenar code, so only the gradient "
    "check applies (tests/test_checkpoint_grad.py compares with the block run without checkpointing)"
)


@public(
    "torch.utils.checkpoint.checkpoint",
    [
        case(_sample_block, Arg((3, 4)), Arg((4, 4)), oracle=False, reason=_NO_ORACLE),
        case(_sample_nested, Arg((2, 4)), Arg((4, 4)), oracle=False, reason=_NO_ORACLE),
        case(_sample_dropout, Arg((3, 4)), Arg((4, 4)), generator=Gen(1), oracle=False, reason=_NO_ORACLE),
    ],
    module="entrenar.nn.checkpoint",
)
def checkpoint(
    function: Callable[..., Any],
    *args: Any,
    use_reentrant: bool | None = None,
    preserve_rng_state: bool = True,
    generators: Iterable[np.random.Generator] = (),
    **kwargs: Any,
) -> Any:
    """function(*args, **kwargs), its activations recomputed in backward instead of kept (see the
    module docstring). `function` returns one Tensor; keyword arguments must not require grad.

    With grad mode off this is a plain call. use_reentrant=True (torch's older scheme) is refused.
    """
    if use_reentrant:
        raise ValueError("checkpoint: only use_reentrant=False is implemented (pass False or leave it out)")
    if not is_grad_enabled():
        return function(*args, **kwargs)
    for k, v in kwargs.items():
        if isinstance(v, Tensor) and v.requires_grad:
            raise ValueError(
                f"checkpoint: keyword argument {k!r} requires grad; pass tensors that require grad "
                "positionally"
            )
    gens = rng_generators(function, *args, *kwargs.values(), *generators) if preserve_rng_state else []
    block = _Block(
        function,
        args,
        kwargs,
        [i for i, a in enumerate(args) if isinstance(a, Tensor) and a.requires_grad],
        gens,
        [g.bit_generator.state for g in gens],
    )
    inner = [Tensor(args[i].data, requires_grad=True) for i in block.slots]
    out = block.run(inner)  # recorded once, only to find the leaves; the graph goes when `out` does
    if not isinstance(out, Tensor):
        raise TypeError(f"checkpoint: the function must return one Tensor, got {type(out).__name__}")
    for i, t in zip(block.slots, inner, strict=True):
        if out is t:  # the identity: hand back the argument itself
            return args[i]
    if not out.requires_grad:
        return out
    block.leaves = _leaves_of(out, inner, _ancestors(args))
    block.meta = (out.shape, out.dtype)
    tensors = [args[i] for i in block.slots] + block.leaves
    return _Checkpoint(*tensors, result=out.data, block=block)
