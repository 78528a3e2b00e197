"""The fused SiLU kernels equal the op's NumPy reference path, in value and gradient.

Each comparison runs `F.silu` twice on the same input: with `silu_fused.MIN_SIZE` lowered to 0 (the
kernels) and raised out of reach (the reference); a spy checks which path ran. Bounds, u = eps / 2 of
the dtype: the sigmoid comes from different exponentials (nn_fused's float32 exp, within 1.2e-7
relative, against NumPy's), so it may differ by an ulp or two, and x s by a few ulps of |x|:
|fused - ref| <= 8 u |x| for the value and 8 u |g| (1 + |x|) for the gradient; measured on 1M
float32 points of N(0, 9): 3.8 u and 2.8 u.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

import entrenar.functional as F
from entrenar import Tensor
from entrenar.kernels import silu_fused

DTYPES = [np.float32, np.float64]


def test_available() -> None:
    assert silu_fused.available(), silu_fused.unavailable_reason()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    log: list[str] = []
    for name in ("silu_forward", "silu_backward"):
        fn = getattr(silu_fused, name)

        def spy(*args: Any, _name: str = name, _fn: Any = fn) -> Any:
            log.append(_name)
            return _fn(*args)

        monkeypatch.setattr(silu_fused, name, spy)
    yield log


def _run(
    x: np.ndarray, g: np.ndarray, min_size: int, mp: pytest.MonkeyPatch
) -> tuple[np.ndarray, np.ndarray]:
    mp.setattr(silu_fused, "MIN_SIZE", min_size)
    t = Tensor(x.copy(), requires_grad=True)
    out = F.silu(t)
    out.backward(g)
    assert t.grad is not None
    return out.data, t.grad


def _input(dtype: type, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape) * 3
    special = [0.0, -0.0, 88.5, -88.5, 100.0, -100.0, 1e30, -1e30, np.inf, -np.inf, np.nan]
    flat = x.reshape(-1)
    n = min(len(special), flat.size)
    flat[:n] = special[:n]
    return x.astype(dtype), rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(257, 131), (7,), (3, 5, 11)])
def test_equals_reference(dtype: type, shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch,
                          calls: list[str]) -> None:  # fmt: skip
    x, g = _input(dtype, shape)
    with np.errstate(over="ignore", invalid="ignore"):
        out, gx = _run(x, g, 0, monkeypatch)
        assert calls == ["silu_forward", "silu_backward"]
        ref, rgx = _run(x, g, 1 << 62, monkeypatch)
    assert len(calls) == 2, "the reference run called a kernel"
    assert out.dtype == ref.dtype == gx.dtype == dtype
    u = float(np.finfo(dtype).eps) / 2
    xa = np.abs(x.astype(np.float64))
    for got, want, bound, what in (
        (out, ref, 8 * u * xa, "silu"),
        (gx, rgx, 8 * u * np.abs(g.astype(np.float64)) * (1 + xa), "silu grad"),
    ):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN positions")
        fin = np.isfinite(want)
        np.testing.assert_array_equal(got[~fin & ~np.isnan(want)], want[~fin & ~np.isnan(want)], what)
        assert np.all(np.abs(got[fin].astype(np.float64) - want[fin]) <= bound[fin]), what


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_torch(dtype: type, monkeypatch: pytest.MonkeyPatch) -> None:
    x = (np.random.default_rng(1).standard_normal((300, 200)) * 4).astype(dtype)
    g = np.ones_like(x)
    out, gx = _run(x, g, 0, monkeypatch)
    tx = torch.from_numpy(x.copy()).requires_grad_()
    torch.nn.functional.silu(tx).backward(torch.from_numpy(g))
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    want = torch.nn.functional.silu(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, want, rtol=rtol, atol=rtol)
    assert tx.grad is not None
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=rtol, atol=rtol)


def test_default_threshold_and_fallbacks(calls: list[str]) -> None:
    small = Tensor(np.ones(100, np.float32), requires_grad=True)
    F.silu(small).sum().backward()
    strided = Tensor(np.ones((400, 200), np.float32)[:, ::2], requires_grad=True)
    F.silu(strided).sum().backward()
    half = Tensor(np.ones(1 << 16, np.float16))
    F.silu(half)
    assert calls == []  # small, strided and float16 inputs take the reference
    big = Tensor(np.ones(silu_fused.MIN_SIZE, np.float32), requires_grad=True)
    F.silu(big).sum().backward()
    assert calls == ["silu_forward", "silu_backward"]
    with pytest.raises(ValueError, match="C-contiguous"):
        silu_fused.silu_forward(np.ones((4, 4), np.float32)[:, ::2])
