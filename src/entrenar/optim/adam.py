"""Adam and AdamW: one update, with weight decay either added to the gradient (L2) or decoupled."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from entrenar import kernels
from entrenar.optim.optimizer import Optimizer, ParamsT, check_bool, check_real

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    r"""Adam, as `torch.optim.Adam` (and `torch.optim.AdamW` with `decoupled_weight_decay=True`).

    For each parameter θ with gradient ∇ (learning rate lr, betas β1 β2, eps ε, weight decay λ), at
    step t = 1, 2, ...::

        g_t = -∇ if maximize else ∇
        θ_{t-1} = θ_{t-1} (1 - lr λ)                 if decoupled_weight_decay (AdamW)
        g_t = g_t + λ θ_{t-1}                        otherwise (L2), if λ != 0
        m_t = β1 m_{t-1} + (1 - β1) g_t
        v_t = β2 v_{t-1} + (1 - β2) g_t²
        v̂_t = max(v̂_{t-1}, v_t) if amsgrad else v_t
        θ_t = θ_{t-1} - lr / (1 - β1^t) · m_t / (sqrt(v̂_t) / sqrt(1 - β2^t) + ε)

    State per parameter: 'step' (0-d int64 array), 'exp_avg' (m), 'exp_avg_sq' (v) and, with
    amsgrad, 'max_exp_avg_sq' (v̂), arrays shaped like θ.

    Raises ValueError for lr < 0, eps < 0, a beta outside [0, 1) or weight_decay < 0; TypeError for a
    non-number (or non-bool flag).
    """

    _array_state = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _counter_state = ("step",)
    _required_state = ("step", "exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        decoupled_weight_decay: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults)

    def _check_hyperparameters(self, group: dict[str, Any], where: str) -> None:
        group["lr"] = check_real(where, "lr", group["lr"], low=0.0)
        betas = group["betas"]
        if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or len(betas) != 2:
            raise TypeError(f"{where}betas must be a pair (beta1, beta2), got {betas!r}")
        group["betas"] = (
            check_real(where, "betas[0]", betas[0], low=0.0, high=1.0, high_open=True),
            check_real(where, "betas[1]", betas[1], low=0.0, high=1.0, high_open=True),
        )
        group["eps"] = check_real(where, "eps", group["eps"], low=0.0)
        group["weight_decay"] = check_real(where, "weight_decay", group["weight_decay"], low=0.0)
        group["amsgrad"] = check_bool(where, "amsgrad", group["amsgrad"])
        group["maximize"] = check_bool(where, "maximize", group["maximize"])
        group["decoupled_weight_decay"] = check_bool(
            where, "decoupled_weight_decay", group["decoupled_weight_decay"]
        )

    def _update_group(self, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        amsgrad = group["amsgrad"]
        updates = []
        for p, grad in self._params_with_grad(group):
            state = self.state.setdefault(p, {})
            if not state:
                state["step"] = np.array(0, dtype=np.int64)
                state["exp_avg"] = np.zeros_like(p.data)
                state["exp_avg_sq"] = np.zeros_like(p.data)
            if amsgrad and "max_exp_avg_sq" not in state:
                state["max_exp_avg_sq"] = np.zeros_like(p.data)
            state["step"] += 1
            vmax = state["max_exp_avg_sq"] if amsgrad else None
            updates.append((p.data, grad, state["exp_avg"], state["exp_avg_sq"], vmax, int(state["step"])))
        kernels.adam_steps(  # the whole group at once (one split over threads when it is large)
            updates,
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            decoupled=group["decoupled_weight_decay"],
            amsgrad=amsgrad,
            maximize=group["maximize"],
        )


class AdamW(Adam):
    r"""Adam with decoupled weight decay, as `torch.optim.AdamW`: θ ← θ (1 - lr λ) before the Adam step,
    instead of adding λ θ to the gradient. Same update, state and validation as `Adam`.
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        super().__init__(
            params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize, decoupled_weight_decay=True
        )
