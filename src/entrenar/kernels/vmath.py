"""Vectorizable elementary functions for the float32 kernels: exp and erf.

numba without Intel's SVML compiles `math.exp` and `math.erf` to scalar library calls, which keep
LLVM from vectorizing a loop that calls them; these are branch-free formulas of additions,
multiplications, one division and exponent bits, which it does vectorize (numba inlines them into
the kernels' loops: compile the caller's helpers with inline="always"):

* `exp32`: range reduction a = n ln2 + r (ln2 in two parts, Cody and Waite), a degree-7 Taylor
  polynomial in |r| <= ln2 / 2, times 2**n built from its exponent bits (an intrinsic: integer and
  bit operations); relative error < 1.2e-7 (0.84 ulp), 0 below -87 (where NumPy gives subnormals
  under 1.7e-38), inf above 88.
* `erf32`: erf(z) = z P(z^2) / Q(z^2), a (11, 12) rational approximation fitted for entrenar
  (iteratively reweighted least squares on [0, 3.925], max relative error 2.3e-9 in float64; beyond
  3.925, erf = +-1 in float32), evaluated in float32: within 4e-7 of erf (about 7 ulp of 1).

float64 kernels call libm (`math.exp`, `math.erf`), as their NumPy references do. These functions
replaced float64 versions of the same formulas whose results were rounded to float32: float32
arithmetic takes eight lanes a vector instead of four, and GELU's kernels went twice as fast.

Their accuracy on dense grids is tested in tests/kernels/test_nn_fused.py. Users: nn_fused (GELU),
loss_fused (softmax cross-entropy), attention_fused (the softmax), silu_fused.

Compilation is lazy: `load()` imports numba and compiles them (the names below are then numba
functions); without numba it returns the reason, as the kernel modules' `_load` do.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from entrenar.kernels._lazy import import_numba, jit, once

__all__ = ["erf32", "exp32", "load"]


def _pow2f_of_shifted(k: Any) -> Any:
    """2**n as float32 for k = n + _SHIFTER32 (n an integer in [-126, 127]); an intrinsic in numba."""
    return np.float32(math.ldexp(1.0, int(k - _SHIFTER32)))


def _compile_all() -> str | None:
    numba, reason = import_numba()
    if reason is not None:
        return reason
    from numba.core import types
    from numba.extending import intrinsic

    @intrinsic
    def pow2f_of_shifted(typingctx: Any, k: Any) -> Any:
        # k = n + 1.5 * 2**23 holds n in its low mantissa bits: (bits + 127) << 23 is 2**n's bits.
        # Integer and bit operations that LLVM vectorizes, where math.ldexp is a library call.
        if not isinstance(k, types.Float) or k.bitwidth != 32:
            return None

        def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
            bits = builder.bitcast(args[0], context.get_value_type(types.int32))
            bits = builder.add(bits, context.get_constant(types.int32, 127))
            bits = builder.shl(bits, context.get_constant(types.int32, 23))
            return builder.bitcast(bits, context.get_value_type(types.float32))

        return types.float32(types.float32), codegen

    g = globals()
    g["_pow2f_of_shifted"] = pow2f_of_shifted
    for name in ("exp32", "erf32"):
        g[name] = jit(numba, g[name], inline="always")
    return None


load = once(_compile_all)


# ---- constants ----------------------------------------------------------------------------------------
_LOG2E = 1.4426950408889634
# erf(z) ~ z P(z^2) / Q(z^2) on [0, _ERF_ONE]; coefficients in increasing powers of z^2.
_ERF_ONE = 3.925  # erf(z) rounds to 1.0 in float32 from here on
_ERF_P = (
    1.1283791695876504, 0.19245735168084363, 0.05558103518354422, 0.004194316898421065,
    0.0004056861576957902, 6.586542491804348e-06,
)  # fmt: skip
_ERF_Q = (
    1.0, 0.5038943083344304, 0.11722160591826448, 0.016212548219905327, 0.0014074182665363847,
    7.109627539197624e-05, 2.4888270139244995e-07,
)  # fmt: skip


# ---- float32 ------------------------------------------------------------------------------------------
_F = np.float32
_SHIFTER32 = _F(12582912.0)  # 1.5 * 2**23: adding it rounds a float32 (|v| < 2**22) to an integer
_LOG2E32 = _F(_LOG2E)
_LN2_HI32, _LN2_LO32 = _F(0.693359375), _F(-2.12194440e-4)  # ln 2 in two parts (Cody and Waite)
_EXP_LO32, _EXP_HI32 = _F(-87.0), _F(88.0)  # 2**n stays a normal float32; beyond, 0 / inf
_EXP_C32 = tuple(_F(1.0 / math.factorial(i)) for i in range(8))
_ERF_P32 = tuple(_F(c) for c in _ERF_P)
_ERF_Q32 = tuple(_F(c) for c in _ERF_Q)
_ERF_ONE32 = _F(_ERF_ONE)


def exp32(a: Any) -> Any:
    """exp(a) for float32 a, in float32, to 1e-7 relative (0.84 ulp; NumPy's float32 exp is within
    0.5-1 ulp too); branch-free: a = n ln2 + r (ln2 in two parts), a degree-7 Taylor polynomial in
    |r| <= ln2 / 2, times 2**n from its exponent bits. Below -87 the result is 0 (the reference's
    subnormals, under 1.7e-38), above 88 inf."""
    a = np.float32(a)  # a no-op for float32; lets the float64 loops, which never call it, compile
    ac = a if a > _EXP_LO32 else _EXP_LO32  # NaN takes _EXP_LO32 here and is put back below
    ac = ac if ac < _EXP_HI32 else _EXP_HI32
    k = ac * _LOG2E32 + _SHIFTER32
    n = k - _SHIFTER32
    r = ac - n * _LN2_HI32
    r = r - n * _LN2_LO32
    c = _EXP_C32
    p = c[0] + r * (c[1] + r * (c[2] + r * (c[3] + r * (c[4] + r * (c[5] + r * (c[6] + r * c[7]))))))
    e = p * _pow2f_of_shifted(k)
    e = _F(0.0) if a < _EXP_LO32 else e
    e = _F(math.inf) if a > _EXP_HI32 else e
    return a if a != a else e


def erf32(z: Any) -> Any:
    """erf(z) for float32 z: the rational approximation above evaluated in float32, within 4e-7 of erf
    (about 7 ulp of 1; measured on a grid of 2M points in [-5, 5], tests/kernels/test_nn_fused.py)."""
    z = np.float32(z)  # as in _exp32
    az = abs(z)
    v = az if az < _ERF_ONE32 else _ERF_ONE32  # NaN takes _ERF_ONE32 and is put back below
    t = v * v
    p, q = _ERF_P32, _ERF_Q32
    num = p[0] + t * (p[1] + t * (p[2] + t * (p[3] + t * (p[4] + t * p[5]))))
    den = q[0] + t * (q[1] + t * (q[2] + t * (q[3] + t * (q[4] + t * (q[5] + t * q[6])))))
    e = v * num / den
    e = _F(1.0) if (e > _F(1.0) or az >= _ERF_ONE32) else e
    e = z if z != z else e
    return e if z >= _F(0.0) else -e
