"""Finite-difference gradient checking.

`gradcheck` compares the tape's vector-Jacobian product against central finite differences of the
same scalar L = sum_k <w_k, out_k>, with w_k fixed random weights for each output k. A random
projection catches any wrong Jacobian entry with probability one, at the cost of one backward and
2 * (number of input elements) forward evaluations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from entrenar.autograd.tape import no_grad
from entrenar.tensor import Tensor

__all__ = ["GradcheckError", "gradcheck"]


class GradcheckError(RuntimeError):
    """The analytic gradient disagrees with finite differences."""


def _outputs(result: Any) -> list[Tensor]:
    items = result if isinstance(result, (tuple, list)) else [result]
    return [t for t in items if isinstance(t, Tensor) and t.data.dtype.kind == "f"]


def gradcheck(
    fn: Callable[..., Any],
    inputs: Sequence[Any],
    *,
    mode: str = "float64",
    eps: float | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    seed: int = 0,
    raise_exception: bool = True,
) -> bool:
    """Check the gradients of `fn(*inputs)` with respect to every input that requires grad.

    mode "float64" casts floating inputs to float64 and uses eps 1e-6, atol 1e-5, rtol 1e-3
    (|analytic - numeric| <= atol + rtol * |numeric|). mode "float32" keeps the inputs' dtype and
    applies the original entrenar scheme: eps 1e-3 and a relative error below 0.2
    (|analytic - numeric| <= 0.2 * max(|analytic|, |numeric|), or below atol = 1e-3 for near-zero
    gradients). Returns True, or raises GradcheckError naming the input and the worst element.
    """
    if mode not in ("float64", "float32"):
        raise ValueError(f"gradcheck: mode must be 'float64' or 'float32', got {mode!r}")
    f64 = mode == "float64"
    eps = (1e-6 if f64 else 1e-3) if eps is None else eps
    atol = (1e-5 if f64 else 1e-3) if atol is None else atol
    rtol = (1e-3 if f64 else 0.2) if rtol is None else rtol

    args: list[Any] = []
    for x in inputs:
        if isinstance(x, Tensor) and x.data.dtype.kind == "f":
            data = x.data.astype(np.float64) if f64 else x.data.copy()
            args.append(Tensor(data, requires_grad=x.requires_grad))
        else:
            args.append(x)
    wrt = [i for i, a in enumerate(args) if isinstance(a, Tensor) and a.requires_grad]
    if not wrt:
        raise ValueError("gradcheck: no input requires grad")

    outs = _outputs(fn(*args))
    if not outs:
        raise ValueError("gradcheck: the function returned no floating-point tensor")
    rng = np.random.default_rng(seed)
    weights = [rng.standard_normal(o.data.shape).astype(o.data.dtype) for o in outs]
    for o, w in zip(outs, weights, strict=True):
        if o.requires_grad:
            o.backward(w, retain_graph=True)

    def objective() -> float:
        with no_grad():
            res = _outputs(fn(*args))
        return float(sum(np.sum(w.astype(np.float64) * o.data) for o, w in zip(res, weights, strict=True)))

    for i in wrt:
        x = args[i]
        analytic = np.zeros(x.data.shape) if x.grad is None else x.grad.astype(np.float64)
        numeric = np.zeros(x.data.shape)
        flat = x.data.reshape(-1)  # a view: perturbing it perturbs the input
        num_flat = numeric.reshape(-1)
        for j in range(flat.size):
            orig = flat[j].copy()
            flat[j] = orig + eps
            hi = float(flat[j])  # the step actually taken in the input's dtype, not the nominal eps
            plus = objective()
            flat[j] = orig - eps
            lo = float(flat[j])
            minus = objective()
            flat[j] = orig
            num_flat[j] = (plus - minus) / (hi - lo)
        diff = np.abs(analytic - numeric)
        if f64:
            bad = diff > atol + rtol * np.abs(numeric)
        else:
            bad = (diff > rtol * np.maximum(np.abs(analytic), np.abs(numeric))) & (diff > atol)
        if bad.any():
            if not raise_exception:
                return False
            k = int(np.argmax(np.where(bad, diff, -1.0)))
            idx = np.unravel_index(k, x.data.shape) if x.data.ndim else ()
            raise GradcheckError(
                f"gradcheck ({mode}): gradient of input {i} (shape {x.data.shape}) is wrong at "
                f"{tuple(int(v) for v in idx)}: analytic {analytic.reshape(-1)[k]:.8g}, numeric "
                f"{numeric.reshape(-1)[k]:.8g} ({int(bad.sum())} of {bad.size} elements off)"
            )
    return True
