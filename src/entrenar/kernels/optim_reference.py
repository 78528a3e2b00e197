"""Plain-NumPy reference updates for ONE parameter array, in place, with explicit state arrays.

Each function is exactly torch.optim's single-tensor (``foreach=False``) arithmetic, in the same
operation order, so float64 trajectories agree with PyTorch's to rounding (torch's CPU kernels may fuse
a multiply-add, which changes the last bit of a step and nothing more). A fused kernel with the same
signature must be held equal to these functions by a test.

The optimizers in `entrenar.optim` call the update through `entrenar.kernels.sgd_step` and
`entrenar.kernels.adam_step`, the one place where a fast path is swapped in.
"""

from __future__ import annotations

import numpy as np

__all__ = ["adam_step", "sgd_step"]


def _check_like(name: str, arr: np.ndarray, param: np.ndarray) -> None:
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be an ndarray, got {type(arr).__name__}")
    if arr.shape != param.shape:
        raise ValueError(f"{name} has shape {arr.shape}, expected the parameter's shape {param.shape}")


def sgd_step(
    param: np.ndarray,
    grad: np.ndarray,
    momentum_buffer: np.ndarray | None,
    *,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
    maximize: bool,
    first_step: bool,
) -> None:
    """One SGD step on `param` (and `momentum_buffer`), in place; `grad` is not modified.

    With g = -grad if maximize else grad::

        g = g + weight_decay * param                        (if weight_decay != 0)
        b = g                                               (if momentum != 0, first step)
        b = momentum * b + (1 - dampening) * g              (if momentum != 0, later steps)
        g = g + momentum * b  if nesterov  else  g = b      (if momentum != 0)
        param = param - lr * g

    `momentum_buffer` must be an array shaped like `param` when momentum != 0 (its content is ignored
    when `first_step` is true) and is unused otherwise.
    """
    _check_like("grad", grad, param)
    d_p = -grad if maximize else grad
    if weight_decay != 0:
        d_p = d_p + weight_decay * param  # torch: grad.add(param, alpha=weight_decay)
    if momentum != 0:
        if momentum_buffer is None:
            raise ValueError("sgd_step: momentum != 0 needs a momentum_buffer shaped like the parameter")
        _check_like("momentum_buffer", momentum_buffer, param)
        if first_step:
            momentum_buffer[...] = d_p
        else:
            momentum_buffer *= momentum  # torch: buf.mul_(momentum).add_(g, alpha=1 - dampening)
            momentum_buffer += (1 - dampening) * d_p
        d_p = d_p + momentum * momentum_buffer if nesterov else momentum_buffer
    param += -lr * d_p  # torch: param.add_(g, alpha=-lr)


def adam_step(
    param: np.ndarray,
    grad: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    max_exp_avg_sq: np.ndarray | None,
    *,
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    amsgrad: bool,
    maximize: bool,
) -> None:
    """One Adam / AdamW step on `param` and the moment arrays, in place; `grad` is not modified.

    `step` is the 1-based count of this step (already incremented). With g = -grad if maximize else
    grad::

        param = param * (1 - lr * weight_decay)           (decoupled, AdamW, if weight_decay != 0)
        g = g + weight_decay * param                      (L2, Adam, if weight_decay != 0)
        m = m + (1 - beta1) * (g - m)                     (torch's lerp: m.lerp_(g, 1 - beta1))
        v = beta2 * v + (1 - beta2) * g * g
        v_max = max(v_max, v)                             (amsgrad; then v_max replaces v below)
        denom = sqrt(v) / sqrt(1 - beta2 ** step) + eps
        param = param - (lr / (1 - beta1 ** step)) * m / denom
    """
    _check_like("grad", grad, param)
    _check_like("exp_avg", exp_avg, param)
    _check_like("exp_avg_sq", exp_avg_sq, param)
    if step < 1:
        raise ValueError(f"adam_step: step must be the 1-based count of this step, got {step}")
    g = -grad if maximize else grad
    if weight_decay != 0:
        if decoupled:
            param *= 1 - lr * weight_decay
        else:
            g = g + weight_decay * param  # torch: grad.add(param, alpha=weight_decay)

    # torch's lerp picks the better-conditioned of two equal formulas by the size of the weight
    w = 1 - beta1
    if abs(w) < 0.5:
        exp_avg += w * (g - exp_avg)
    else:
        exp_avg[...] = g - (g - exp_avg) * (1 - w)
    exp_avg_sq *= beta2  # torch: exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    exp_avg_sq += (1 - beta2) * g * g

    bias_correction1 = 1 - beta1**step
    bias_correction2 = 1 - beta2**step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2**0.5
    if amsgrad:
        if max_exp_avg_sq is None:
            raise ValueError("adam_step: amsgrad needs a max_exp_avg_sq array shaped like the parameter")
        _check_like("max_exp_avg_sq", max_exp_avg_sq, param)
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        denom = np.sqrt(max_exp_avg_sq) / bias_correction2_sqrt + eps
    else:
        denom = np.sqrt(exp_avg_sq) / bias_correction2_sqrt + eps
    param += -step_size * exp_avg / denom  # torch: param.addcdiv_(m, denom, value=-step_size)
