"""Stochastic gradient descent with momentum, dampening, Nesterov momentum and L2 weight decay."""

from __future__ import annotations

from typing import Any

import numpy as np

from entrenar import kernels
from entrenar.optim.optimizer import Optimizer, ParamsT, check_bool, check_real

__all__ = ["SGD"]


class SGD(Optimizer):
    r"""Stochastic gradient descent, as `torch.optim.SGD`.

    For each parameter θ with gradient ∇ (learning rate lr, momentum μ, dampening τ, weight decay λ)::

        g_t = -∇ if maximize else ∇
        g_t = g_t + λ θ_{t-1}                      if λ != 0
        b_t = g_t                                  if μ != 0, first step
        b_t = μ b_{t-1} + (1 - τ) g_t              if μ != 0, later steps
        g_t = g_t + μ b_t  (nesterov)  or  b_t     if μ != 0
        θ_t = θ_{t-1} - lr g_t

    State per parameter (only when μ != 0): 'momentum_buffer', an array shaped like θ.

    Raises ValueError for lr < 0, momentum < 0, weight_decay < 0, or nesterov without a positive
    momentum and zero dampening; TypeError for a non-number (or non-bool flag).
    """

    _array_state = ("momentum_buffer",)

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "maximize": maximize,
        }
        super().__init__(params, defaults)

    def _check_hyperparameters(self, group: dict[str, Any], where: str) -> None:
        group["lr"] = check_real(where, "lr", group["lr"], low=0.0)
        group["momentum"] = check_real(where, "momentum", group["momentum"], low=0.0)
        group["dampening"] = check_real(where, "dampening", group["dampening"])
        group["weight_decay"] = check_real(where, "weight_decay", group["weight_decay"], low=0.0)
        group["nesterov"] = check_bool(where, "nesterov", group["nesterov"])
        group["maximize"] = check_bool(where, "maximize", group["maximize"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError(
                f"{where}nesterov momentum requires momentum > 0 and dampening == 0, got "
                f"momentum={group['momentum']} and dampening={group['dampening']}"
            )

    def _update_group(self, group: dict[str, Any]) -> None:
        momentum = group["momentum"]
        updates = []
        for p, grad in self._params_with_grad(group):
            buf: np.ndarray | None = None
            first_step = False
            if momentum != 0:
                state = self.state.setdefault(p, {})
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = np.empty_like(p.data)
                    first_step = True
            updates.append((p.data, grad, buf, first_step))
        kernels.sgd_steps(  # the whole group at once (one split over threads when it is large)
            updates,
            lr=group["lr"],
            momentum=momentum,
            dampening=group["dampening"],
            nesterov=group["nesterov"],
            weight_decay=group["weight_decay"],
            maximize=group["maximize"],
        )
