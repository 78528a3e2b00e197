"""Turn the registry's test specs into concrete inputs for entrenar and for the PyTorch oracle."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

import entrenar.functional  # noqa: F401 - registers every op
from entrenar import Tensor
from entrenar import quant as _quant  # noqa: F401 - registers quant_linear
from entrenar.autograd.registry import PUBLIC, SPECS, Arg, Built, Case, Gen, Spec


def all_cases() -> Iterator[tuple[str, int]]:
    for name, spec in sorted(SPECS.items()):
        for i in range(len(spec.cases)):
            yield name, i


def case_ids() -> list[str]:
    return [f"{n}-{i}" for n, i in all_cases()]


def _sample(arg: Arg, rng: np.random.Generator, dtype: Any) -> np.ndarray:
    if arg.kind == "int":
        return rng.integers(int(arg.low), int(arg.high), size=arg.shape).astype(np.int64)
    if arg.kind == "bool":
        return rng.random(arg.shape) < 0.5
    x = rng.uniform(arg.low, arg.high, size=arg.shape)
    for _ in range(100):
        near = np.zeros(x.shape, dtype=bool)
        for k in arg.away:
            near |= np.abs(x - k) < 0.05
        if not near.any():
            break
        x = np.where(near, rng.uniform(arg.low, arg.high, size=arg.shape), x)
    return x.astype(dtype)


@dataclass
class Materialized:
    """A case's arguments as arrays; `leaves` lists the differentiable array arguments in order."""

    spec: Spec
    case: Case
    args: list[Any]
    kwargs: dict[str, Any]
    torch_kwargs: dict[str, Any]


def materialize(name: str, index: int, dtype: Any = np.float64) -> Materialized:
    spec = SPECS[name]
    c = spec.cases[index]
    rng = np.random.default_rng(zlib.crc32(f"{name}/{index}".encode()))

    def conv(v: Any) -> Any:
        if isinstance(v, Arg):
            return (v, _sample(v, rng, dtype))
        if isinstance(v, Built):  # (marker, entrenar's value, PyTorch's array)
            value = v.make(rng)
            return (v, value, v.as_torch(value, np.dtype(dtype)))
        if isinstance(v, (list, tuple)) and v and any(isinstance(e, Arg) for e in v):
            return type(v)(conv(e) for e in v)
        return v

    args = [conv(a) for a in c.args]
    kwargs = {k: conv(v) for k, v in c.kwargs.items()}
    tkw = kwargs if c.torch_kwargs is None else {k: conv(v) for k, v in c.torch_kwargs.items()}
    return Materialized(spec, c, args, kwargs, tkw)


def _build(v: Any, leaf: Any, built: Any = lambda t: t[1]) -> Any:
    """Replace each (Arg, array) pair using leaf(arg, array); fresh Generators for Gen markers; each
    (Built, value, array) triple by built(triple) (entrenar's value by default)."""
    if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], Arg):
        return leaf(v[0], v[1])
    if isinstance(v, tuple) and len(v) == 3 and isinstance(v[0], Built):
        return built(v)
    if isinstance(v, Gen):
        return np.random.default_rng(v.seed)
    if isinstance(v, (list, tuple)):
        return type(v)(_build(e, leaf, built) for e in v)
    return v


def entrenar_inputs(m: Materialized) -> tuple[list[Any], dict[str, Any], list[Tensor]]:
    leaves: list[Tensor] = []

    def leaf(arg: Arg, arr: np.ndarray) -> Tensor:
        t = Tensor(arr.copy(), requires_grad=arg.kind == "float")
        if arg.kind == "float":
            leaves.append(t)
        return t

    args = [_build(a, leaf) for a in m.args]
    kwargs = {k: _build(v, leaf) for k, v in m.kwargs.items()}
    return args, kwargs, leaves


def torch_inputs(m: Materialized) -> tuple[list[Any], dict[str, Any], list[Any]]:
    import torch

    leaves: list[Any] = []

    def leaf(arg: Arg, arr: np.ndarray) -> Any:
        t = torch.from_numpy(arr.copy())
        if arg.kind == "float":
            t.requires_grad_(True)
            leaves.append(t)
        return t

    def constant(triple: tuple[Built, Any, np.ndarray]) -> Any:
        return torch.from_numpy(triple[2].copy())

    args = [_build(a, leaf, constant) for a in m.args]
    kwargs = {k: _build(v, leaf, constant) for k, v in m.torch_kwargs.items()}
    return args, kwargs, leaves


def call_entrenar(m: Materialized) -> tuple[Any, list[Tensor]]:
    args, kwargs, leaves = entrenar_inputs(m)
    return PUBLIC[m.spec.name](*args, **kwargs), leaves


def resolve_torch(path: str) -> Any:
    import torch

    parts = path.split(".")
    if parts[0] != "torch":
        raise ValueError(f"spec torch path must start with 'torch.': {path}")
    obj: Any = torch
    for p in parts[1:]:
        obj = getattr(obj, p)
    return obj


def outputs(result: Any) -> list[Any]:
    """A call's tensor outputs as a flat list (a single tensor, or a tuple of them)."""
    if isinstance(result, (tuple, list)):
        return list(result)
    return [result]
