"""Fused SiLU, forward and backward: one pass each, the sigmoid recomputed in the backward.

A fast path for `entrenar.ops.elementwise.silu`, whose NumPy code stays the reference: it makes the
sigmoid s = 1 / (1 + exp(-x)) in three passes (exp, add, reciprocal), the output in a fourth, and saves
s for the backward, g * (s * (1 + x * (1 - s))), four more passes. Here each direction is one loop over
memory; the backward reads x and recomputes s instead of reading a saved array (one array less kept
per SiLU: SmolLM2's MLP has one per layer, 512 x 1536 elements a step at 4 x 128 tokens).

Arithmetic: the reference's expressions in the dtype; float32's exp is vmath's float32 one (within
1.2e-7 relative, NumPy's float32 exp within about an ulp too), float64's is libm's (as NumPy's). So s
differs from the reference's by an ulp or two, and x s and the gradient by a few ulps of their size:
tests/kernels/test_silu_fused.py states the bounds. Overflow gives what the reference gives (exp(-x)
= inf below -88 in float32: s = 0, x s = -0), and NaN and +-inf likewise.

Measured (one thread, 1M float32 elements, best of 30): forward 3.3 -> 1.25 ms, backward 1.66 -> 1.45 ms.
One thread, as every kernel that runs between GEMMs (see optim_fused). Compilation is lazy; without
numba `supports()` is False and the op takes the reference.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from entrenar.kernels import vmath
from entrenar.kernels._lazy import compile_on_first_use, jit_group, probes

__all__ = ["MIN_SIZE", "available", "silu_backward", "silu_forward", "supports", "unavailable_reason"]

# Below this many elements the op keeps its NumPy path (the op tests' small shapes exercise it).
MIN_SIZE = 1 << 15

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _exp32(a: Any) -> Any:  # pragma: no cover - replaced by vmath's compiled version
    return np.float32(math.exp(a))


def _sigmoid(x: Any, single: bool) -> Any:
    """1 / (1 + exp(-x)) in x's dtype, as the reference's three passes compute it."""
    if single:
        return np.float32(1.0) / (np.float32(1.0) + _exp32(-x))
    return 1.0 / (1.0 + math.exp(-x))


def _fwd_loop(x: Any, out: Any, single: bool) -> None:
    if single:
        for i in range(x.size):
            out[i] = x[i] * _sigmoid(x[i], True)
    else:
        for i in range(x.size):
            out[i] = x[i] * _sigmoid(x[i], False)


def _bwd_loop(x: Any, g: Any, out: Any, single: bool) -> None:
    if single:
        one = np.float32(1.0)
        for i in range(x.size):
            s = _sigmoid(x[i], True)
            out[i] = g[i] * (s * (one + x[i] * (one - s)))
    else:
        for i in range(x.size):
            s = _sigmoid(x[i], False)
            out[i] = g[i] * (s * (1.0 + x[i] * (1.0 - s)))


_load = compile_on_first_use(
    globals(),
    jit_group("_sigmoid", inline="always"),
    jit_group("_fwd_loop", "_bwd_loop"),
    needs=(vmath.load,),  # vmath's float32 exp, which the loops inline
    bind={"_exp32": lambda: vmath.exp32},
)

available, unavailable_reason = probes(_load)


def supports(x: Any) -> bool:
    """Whether the kernels take x: a C-contiguous float32/float64 ndarray of at least `MIN_SIZE`
    elements, numba available (checked last)."""
    ok = isinstance(x, np.ndarray) and x.dtype in _DTYPES and x.flags.c_contiguous and x.size >= MIN_SIZE
    return ok and _load() is None


def _require(x: np.ndarray) -> None:
    reason = _load()
    if reason is not None:
        raise RuntimeError(f"the fused SiLU kernels are unavailable: {reason}")
    if not isinstance(x, np.ndarray) or x.dtype not in _DTYPES or not x.flags.c_contiguous:
        raise ValueError("the fused SiLU kernels take C-contiguous float32/float64 arrays")


def silu_forward(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x), as the reference; the backward needs only x."""
    _require(x)
    out = np.empty_like(x)
    _fwd_loop(x.reshape(-1), out.reshape(-1), x.dtype == np.float32)
    return out


def silu_backward(g: np.ndarray, x: np.ndarray) -> np.ndarray:
    """g * (s (1 + x (1 - s))), s = sigmoid(x) recomputed from x in the same pass."""
    _require(x)
    gc = np.ascontiguousarray(g, dtype=x.dtype)
    out = np.empty_like(x)
    _bwd_loop(x.reshape(-1), gc.reshape(-1), out.reshape(-1), x.dtype == np.float32)
    return out
