"""Gradient clipping, as `torch.nn.utils.clip_grad_norm_` and `clip_grad_value_`: in place on `.grad`."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from entrenar.optim.optimizer import check_real
from entrenar.tensor import Tensor

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _grads(where: str, parameters: Tensor | Iterable[Tensor]) -> list[np.ndarray]:
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    elif isinstance(parameters, (str, bytes)) or not isinstance(parameters, Iterable):
        raise TypeError(f"{where}: parameters must be a Tensor or an iterable of Tensors, got {parameters!r}")
    grads = []
    for i, p in enumerate(parameters):
        if not isinstance(p, Tensor):
            raise TypeError(f"{where}: parameters[{i}] must be a Tensor, got {type(p).__name__}")
        if p.grad is not None:
            grads.append(p.grad)
    return grads


def _vector_norm(x: np.ndarray, p: float) -> np.ndarray:
    """The p-norm of all elements of `x` (p > 0 or inf), a 0-d array of x's dtype."""
    a = np.abs(x).ravel()
    if p == math.inf:
        return np.asarray(np.max(a, initial=0))
    if p == 2.0:
        return np.sqrt(np.dot(a, a))
    if p == 1.0:
        return np.asarray(np.sum(a))
    return np.asarray(np.sum(a**p) ** (1.0 / p))


def clip_grad_norm_(
    parameters: Tensor | Iterable[Tensor],
    max_norm: float,
    norm_type: float | str = 2.0,
    error_if_nonfinite: bool = False,
) -> float:
    """Scale all gradients together so that their total `norm_type`-norm is at most `max_norm`.

    The total norm is the norm of the per-parameter norms (the norm of all gradients concatenated);
    parameters without a gradient are skipped. As PyTorch, every gradient is multiplied by
    ``min(1, max_norm / (total_norm + 1e-6))``, computed in the gradients' dtype; a NaN total makes
    every gradient NaN and an infinite one makes them 0 (or NaN where infinite) unless
    `error_if_nonfinite`, which raises RuntimeError instead.

    `norm_type` is a positive number or ``inf`` (also the string 'inf'). Returns the total norm before
    clipping as a Python float (PyTorch returns a 0-d tensor); 0.0 when no parameter has a gradient.
    """
    try:
        p = float(norm_type)
    except (TypeError, ValueError):
        raise TypeError(f"clip_grad_norm_: norm_type must be a number or 'inf', got {norm_type!r}") from None
    if not (p > 0):
        raise ValueError(f"clip_grad_norm_: norm_type must be positive or inf, got {norm_type!r}")
    max_norm = check_real("clip_grad_norm_: ", "max_norm", max_norm, low=0.0)
    grads = _grads("clip_grad_norm_", parameters)
    if not grads:
        return 0.0
    dtype = np.result_type(*grads)
    # (norm of each gradient, stacked) -> total norm, as torch.linalg.vector_norm of the stack
    norms = np.array([_vector_norm(g, p) for g in grads], dtype=dtype)
    total = _vector_norm(norms, p)
    if error_if_nonfinite and not np.isfinite(total):
        raise RuntimeError(
            f"clip_grad_norm_: the total norm of order {p} of the gradients is non-finite ({float(total)}), "
            "so it cannot be clipped; pass error_if_nonfinite=False to scale by it anyway"
        )
    coef = np.minimum(dtype.type(max_norm) / (total + dtype.type(1e-6)), dtype.type(1.0))
    if coef != 1.0:  # multiplying by exactly 1 changes nothing
        with np.errstate(invalid="ignore"):  # inf * 0 is NaN, silently, as in torch
            for g in grads:
                g *= coef
    return float(total)


def clip_grad_value_(parameters: Tensor | Iterable[Tensor], clip_value: float) -> None:
    """Clamp every gradient element into [-clip_value, clip_value] in place (NaN stays NaN)."""
    clip_value = check_real("clip_grad_value_: ", "clip_value", clip_value, low=0.0)
    for g in _grads("clip_grad_value_", parameters):
        np.clip(g, -clip_value, clip_value, out=g)
