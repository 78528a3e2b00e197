"""Dropout masks: the stream is SplitMix64's, the fused kernels equal the NumPy spec bit for bit, and
the ops (dropout, LoRA's lora_dropout) take the kernel for large arrays and the spec for small ones."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import entrenar.functional as F
from entrenar import Tensor
from entrenar.kernels import dropout_fused as D

ANY_KEY = st.integers(0, (1 << 64) - 1)


def test_available() -> None:
    assert D.available(), D.unavailable_reason()


def test_stream_is_splitmix64() -> None:
    # SplitMix64 seeded with 1234567: the published first outputs (the xoshiro authors' reference code)
    first = [6457827717110365317, 3203168211198807973, 9817491932198370423]
    u = D.draws_reference(1234567, 6)
    assert [int(u[2 * i]) | int(u[2 * i + 1]) << 32 for i in range(3)] == first


@pytest.mark.parametrize("p", [0.0, 0.05, 0.5, 0.999])
def test_threshold(p: float) -> None:
    t = D.threshold(p)
    assert abs(t / 2**32 - p) <= 2**-33
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        D.threshold(1.0)


@settings(max_examples=25, deadline=None)
@given(key=ANY_KEY, p=st.floats(0.0, 0.95), n=st.integers(1, 3000))
def test_kernels_equal_the_spec(key: int, p: float, n: int) -> None:
    rng = np.random.default_rng(n)
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal(n).astype(dtype)
        spots = rng.integers(0, n, size=min(n, 5))
        x[spots] = np.array([np.nan, np.inf, -np.inf, -0.0, 3.0])[: spots.size]
        keep = D.keep_reference(key, n, p)
        scale = np.asarray(1.0 / (1.0 - p), dtype=dtype)
        out, k = D.dropout_forward(x, key, p)
        assert out.dtype == dtype and np.array_equal(k, keep)
        with np.errstate(invalid="ignore"):  # inf * 0 = NaN, as the kernel gives
            np.testing.assert_array_equal(out, x * (keep * scale))  # NaN in the same places, dropped ones too
        g = rng.standard_normal(n).astype(dtype)
        np.testing.assert_array_equal(D.dropout_backward(g, k, p), g * (keep * scale))


def test_kernel_takes_any_layout() -> None:
    x = np.random.default_rng(0).standard_normal((40, 30), dtype=np.float32)[:, ::2].T  # (15, 40), strided
    out, keep = D.dropout_forward(x, 99, 0.3)
    ref = D.keep_reference(99, x.size, 0.3).reshape(x.shape)
    np.testing.assert_array_equal(keep, ref)
    np.testing.assert_array_equal(out, x * (ref * np.float32(1 / 0.7)))
    with pytest.raises(ValueError, match="does not match"):
        D.dropout_backward(x, keep.T, 0.3)


@settings(max_examples=15, deadline=None)
@given(key=ANY_KEY, p=st.sampled_from([0.05, 0.1, 0.3, 0.5, 0.9]))
def test_drop_rate_and_independence(key: int, p: float) -> None:
    n = 200_000
    u = D.draws_reference(key, n).astype(np.float64) / 2**32
    drop = ~D.keep_reference(key, n, p)
    sd = np.sqrt(p * (1 - p) / n)
    assert abs(drop.mean() - p) < 5 * sd  # Bernoulli(p), 5 standard deviations
    counts = np.bincount((u * 16).astype(int), minlength=16)
    chi2 = float(((counts - n / 16) ** 2 / (n / 16)).sum())
    assert chi2 < 50.0  # 15 degrees of freedom: P(chi2 > 50) ~ 1e-5
    # neighbours (the two halves of one output, and consecutive outputs) are uncorrelated
    for lag in (1, 2):
        r = np.corrcoef(u[:-lag], u[lag:])[0, 1]
        assert abs(r) < 5 / np.sqrt(n)


def test_keys_differ_per_call() -> None:
    gen = np.random.default_rng(3)
    a, b = D.draw_key(gen), D.draw_key(gen)
    assert a != b
    assert not np.array_equal(D.keep_reference(a, 1000, 0.5), D.keep_reference(b, 1000, 0.5))


def _dropout(x: np.ndarray, seed: int, min_size: int, mp: pytest.MonkeyPatch) -> Any:
    mp.setattr(D, "MIN_SIZE", min_size)
    xt = Tensor(x.copy(), requires_grad=True)
    out = F.dropout(xt, 0.2, generator=np.random.default_rng(seed))
    out.backward(np.ones_like(x))
    return out.data, xt.grad


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_op_kernel_path_equals_reference_path(dtype: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    fwd = D.dropout_forward

    def spy(*args: Any) -> Any:
        calls.append(1)
        return fwd(*args)

    monkeypatch.setattr(D, "dropout_forward", spy)
    x = np.random.default_rng(1).standard_normal((64, 33)).astype(dtype)
    fast = _dropout(x, 5, 0, monkeypatch)
    assert calls == [1]
    ref = _dropout(x, 5, 1 << 40, monkeypatch)
    assert calls == [1]  # the reference path did not call the kernel
    for a, b in zip(fast, ref, strict=True):
        assert a.dtype == dtype
        np.testing.assert_array_equal(a, b)
