"""Dropout masks from a counter-based generator: drawn, applied and stored in one pass.

Every dropout in entrenar (`ops.nn.dropout`, the attention weights' dropout, LoRA's `lora_dropout`)
draws its keep mask from this module's generator, keyed by one 64-bit draw from the caller's
`np.random.Generator`:

    z_j = mix(key + (j + 1) * 0x9E3779B97F4A7C15)      (uint64 arithmetic, wrapping)
    u_2j = z_j mod 2**32,  u_2j+1 = z_j div 2**32        (two 32-bit draws a 64-bit output)
    keep_i = u_i >= round(p * 2**32)

`mix` is SplitMix64's output function (Steele, Lea and Flood 2014: the generator that seeds
xoshiro; its output sequence passes BigCrush), so u is SplitMix64's stream for seed `key`, split into
32-bit halves. An element is dropped with probability round(p 2**32) / 2**32, within 2**-33 of p.
Element i's draw depends only on (key, i), so a loop computes it where it uses it: no array of
random numbers is made, read or kept.

`keep_reference` is the spec in plain NumPy; `dropout_forward` / `dropout_backward` are the fused
kernels (one pass: hash, compare, scale; the backward multiplies by the saved mask), bit for bit
equal to the reference's `x * (keep * scale)`, NaN and inf included (a dropped NaN stays NaN, as
PyTorch's `input * mask` gives). The mask is saved as one byte an element, not a float multiplier.

Measured (bench/bench_llama_train.py's profile, 77M dropout elements a QLoRA step of SmolLM2-135M):
drawing float32 uniforms, comparing and scaling took 0.42 s of a 4.9 s step; these kernels take 0.16 s.

One thread, as nn_fused's kernels (they run between GEMMs; see optim_fused's thread policy).
Compilation is lazy; without numba `supports()` is False and the ops take the reference.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from entrenar.kernels._lazy import compile_on_first_use, jit_group, probes

__all__ = [
    "MIN_SIZE",
    "available",
    "draw_key",
    "draws_reference",
    "dropout_backward",
    "dropout_forward",
    "keep_reference",
    "supports",
    "threshold",
    "unavailable_reason",
]

# Below this many elements the ops use the reference (the op tests' small shapes exercise it).
MIN_SIZE = 1 << 15

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_LOW = np.uint64(0xFFFFFFFF)
_S27, _S30, _S31, _S32 = np.uint64(27), np.uint64(30), np.uint64(31), np.uint64(32)


def draw_key(generator: np.random.Generator) -> int:
    """One 64-bit key from the caller's generator: the only draw a dropout mask takes from it."""
    return int(generator.integers(0, 1 << 64, dtype=np.uint64))


def threshold(p: float) -> int:
    """The 32-bit draws below which an element is dropped: round(p 2**32), for 0 <= p < 1."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout threshold: p must be in [0, 1), got {p}")
    return min(round(p * 2.0**32), (1 << 32) - 1)


def draws_reference(key: int, n: int) -> np.ndarray:
    """The spec of the stream: the first n 32-bit draws (as uint64) for key, in plain NumPy."""
    half = (n + 1) // 2
    z = np.uint64(key) + np.arange(1, half + 1, dtype=np.uint64) * _GAMMA  # wraps mod 2**64
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    z ^= z >> _S31
    u = np.empty(2 * half, dtype=np.uint64)
    u[0::2] = z & _LOW
    u[1::2] = z >> _S32
    return u[:n]


def keep_reference(key: int, n: int, p: float) -> np.ndarray:
    """The spec of a mask: the (n,) bool keep mask for key and drop probability p, in plain NumPy."""
    return draws_reference(key, n) >= np.uint64(threshold(p))


# ---- loops ---------------------------------------------------------------------------------------------


def _mix(key: Any, j: int) -> Any:
    z = key + np.uint64(j + 1) * _GAMMA
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def _fwd_loop(x: Any, out: Any, keep: Any, key: Any, thr: Any, scale: Any) -> None:
    n = x.size
    zero = scale - scale
    for j in range(n // 2):
        z = _mix(key, j)
        k0 = (z & _LOW) >= thr
        k1 = (z >> _S32) >= thr
        keep[2 * j] = k0
        keep[2 * j + 1] = k1
        out[2 * j] = x[2 * j] * (scale if k0 else zero)
        out[2 * j + 1] = x[2 * j + 1] * (scale if k1 else zero)
    if n % 2:
        k0 = (_mix(key, n // 2) & _LOW) >= thr
        keep[n - 1] = k0
        out[n - 1] = x[n - 1] * (scale if k0 else zero)


def _bwd_loop(g: Any, keep: Any, scale: Any, out: Any) -> None:
    zero = scale - scale
    for i in range(g.size):
        out[i] = g[i] * (scale if keep[i] else zero)


_load = compile_on_first_use(
    globals(),
    jit_group("_mix", inline="always"),
    jit_group("_fwd_loop", "_bwd_loop"),
)

available, unavailable_reason = probes(_load)


def supports(x: Any) -> bool:
    """Whether the kernels take x: a float32/float64 ndarray of at least `MIN_SIZE` elements, numba
    available (checked last). Any layout: the kernels read a C-contiguous copy when x is not one."""
    ok = isinstance(x, np.ndarray) and x.dtype in _DTYPES and x.size >= MIN_SIZE
    return ok and _load() is None


# ---- entry points --------------------------------------------------------------------------------------


def _require(x: np.ndarray) -> None:
    reason = _load()
    if reason is not None:
        raise RuntimeError(f"the fused dropout kernels are unavailable: {reason}")
    if not isinstance(x, np.ndarray) or x.dtype not in _DTYPES:
        raise ValueError(f"the fused dropout kernels take float32/float64 arrays, got {type(x).__name__}")


def dropout_forward(x: np.ndarray, key: int, p: float) -> tuple[np.ndarray, np.ndarray]:
    """(x * (keep * scale), keep) for keep = keep_reference(key, x.size, p).reshape(x.shape) and
    scale = 1 / (1 - p) in x's dtype; 0 <= p < 1."""
    _require(x)
    thr = np.uint64(threshold(p))
    xc = np.ascontiguousarray(x)
    out = np.empty(xc.shape, dtype=x.dtype)
    keep = np.empty(xc.shape, dtype=np.bool_)
    scale = x.dtype.type(1.0 / (1.0 - p))
    _fwd_loop(xc.reshape(-1), out.reshape(-1), keep.reshape(-1), np.uint64(key), thr, scale)
    return out, keep


def dropout_backward(g: np.ndarray, keep: np.ndarray, p: float) -> np.ndarray:
    """g * (keep * scale), as the forward scaled x."""
    _require(g)
    if keep.shape != g.shape or keep.dtype != np.bool_:
        raise ValueError(f"dropout backward: keep mask {keep.dtype} {keep.shape} does not match {g.shape}")
    gc, kc = np.ascontiguousarray(g), np.ascontiguousarray(keep)
    out = np.empty(gc.shape, dtype=g.dtype)
    _bwd_loop(gc.reshape(-1), kc.reshape(-1), g.dtype.type(1.0 / (1.0 - p)), out.reshape(-1))
    return out
