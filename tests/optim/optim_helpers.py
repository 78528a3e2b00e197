"""Shared pieces of the optimizer tests: paired entrenar / PyTorch parameters and gradient sequences."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from entrenar import Tensor

torch.set_num_threads(1)

SHAPES: tuple[tuple[int, ...], ...] = ((5,), (4, 3), (2, 3, 4), ())
RTOL = 1e-10
ATOL = 1e-12


def make_params(
    shapes: Sequence[tuple[int, ...]], seed: int, dtype: type = np.float64
) -> tuple[list[Tensor], list[torch.nn.Parameter]]:
    """The same random initial values as entrenar leaves and torch Parameters (separate memory)."""
    rng = np.random.default_rng(seed)
    init = [np.asarray(rng.standard_normal(s), dtype=dtype) for s in shapes]
    ours = [Tensor(a.copy(), requires_grad=True) for a in init]
    theirs = [torch.nn.Parameter(torch.tensor(a.copy())) for a in init]
    return ours, theirs


def draw_grads(shapes: Sequence[tuple[int, ...]], steps: int, seed: int) -> list[list[np.ndarray]]:
    """A pre-drawn gradient per step and shape, float64, with a scale per step that varies over two
    and a half decades (so a norm clip of 1.0 is active on some steps and not on others)."""
    rng = np.random.default_rng(seed + 1000)
    grads = []
    for _ in range(steps):
        scale = 10.0 ** rng.uniform(-2.0, 0.5)
        grads.append([np.asarray(rng.standard_normal(s) * scale) for s in shapes])
    return grads


def set_grads(ours: Sequence[Tensor], theirs: Sequence[torch.Tensor], grads: Sequence[np.ndarray]) -> None:
    for p, q, g in zip(ours, theirs, grads, strict=True):
        p.grad = np.asarray(g, dtype=p.data.dtype).copy()
        q.grad = torch.tensor(p.grad.copy())


def assert_params_close(
    ours: Sequence[Tensor], theirs: Sequence[torch.Tensor], what: str, rtol: float = RTOL, atol: float = ATOL
) -> None:
    for i, (p, q) in enumerate(zip(ours, theirs, strict=True)):
        np.testing.assert_allclose(
            p.data, q.detach().numpy(), rtol=rtol, atol=atol, err_msg=f"{what}: param {i}"
        )
