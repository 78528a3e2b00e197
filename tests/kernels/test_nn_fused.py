"""The fused GELU and layer_norm kernels equal the ops' NumPy reference paths, in value and gradient.

Each comparison runs the public op twice on the same input: once with `nn_fused.MIN_SIZE` lowered to
0 (the fused path, whatever the size) and once with it raised out of reach (the reference). A spy on
the kernel entry points checks that each run took the path it claims.

Tolerances, and why they are not bit-for-bit (unlike the optimizer kernels):
* GELU: both compute x * 0.5 * (1 + erf(x / sqrt 2)) (or the tanh form) with the same float
  operations, but erf, exp and tanh come from different implementations (the float32 kernel's own
  float32 formulas, erf within 4e-7 and exp within 1e-7 relative; libm in float64). An error of
  a few ulp in a value of order 1 (erf, tanh, the density) becomes a few |x| ulp(1) in x * cdf, and
  the cancellation in 1 + erf near erf = -1 makes that absolute, not relative. So the bound is
  |fused - ref| <= 8 u |x| for the value and 8 u |g| (1 + x^2) for the gradient, u = eps / 2 of the
  dtype (6e-8 in float32, 1.1e-16 in float64); measured on 4M points of [-12, 12] in float32: at most
  4.0 u (value, erf form), 3.9 u (value, tanh form), 2.5 u (gradient).
* layer_norm: the kernel sums rows (mean, variance, the backward's two means) in float64, the
  reference in the dtype; dx is a difference of terms of the size of g * w * rstd, so its error is
  relative to that scale, not to each element. The bound is rtol * max|ref| per output, rtol 1e-6
  (float32) / 1e-12 (float64), and 1e-5 (float32) for the weight and bias gradients, which the
  reference accumulates over rows one by one in float32 (error growing with the row count).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch

import entrenar.functional as F
from entrenar import Tensor
from entrenar.kernels import nn_fused, vmath

DTYPES = [np.float32, np.float64]
APPROX = ["none", "tanh"]


def test_available() -> None:
    # numba is a runtime dependency: the fused path must be usable wherever entrenar is installed.
    assert nn_fused.available(), nn_fused.unavailable_reason()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Names of the kernel entry points the ops call during the test."""
    log: list[str] = []
    for name in ("gelu_forward", "gelu_backward", "layer_norm_forward", "layer_norm_backward"):
        fn = getattr(nn_fused, name)

        def spy(*args: Any, _name: str = name, _fn: Any = fn, **kwargs: Any) -> Any:
            log.append(_name)
            return _fn(*args, **kwargs)

        monkeypatch.setattr(nn_fused, name, spy)
    yield log


def _run(
    fn: Callable[..., Tensor],
    arrays: list[np.ndarray | None],
    g: np.ndarray,
    min_size: int,
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """fn(*tensors) and the gradients of sum(out * g) for each array, with MIN_SIZE = min_size."""
    monkeypatch.setattr(nn_fused, "MIN_SIZE", min_size)
    ts = [None if a is None else Tensor(a.copy(), requires_grad=True) for a in arrays]
    out = fn(*ts)
    out.backward(g)
    return out.data, [None if t is None else t.grad for t in ts]


def _both(
    fn: Callable[..., Tensor],
    arrays: list[np.ndarray | None],
    g: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
    calls: list[str],
) -> tuple[Any, Any]:
    fused = _run(fn, arrays, g, 0, monkeypatch)
    assert calls, "the fused path was not taken"
    n = len(calls)
    ref = _run(fn, arrays, g, 1 << 62, monkeypatch)
    assert len(calls) == n, "the reference run called a kernel"
    return fused, ref


def _gelu_input(dtype: type, shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x: np.ndarray = rng.standard_normal(shape) * 3
    flat = x.reshape(-1)
    # the erf/exp clamps and saturation, signed zeros, huge values, inf and NaN
    special = [0.0, -0.0, 5.5, -5.5, 5.56, -5.56, 9.0, -9.0, 14.0, -14.0, 30.0, -30.0, 1e20, -1e20,
               np.inf, -np.inf, np.nan]  # fmt: skip
    n = min(len(special), flat.size)
    flat[:n] = special[:n]
    g: np.ndarray = rng.standard_normal(shape)
    g.reshape(-1)[0] = np.nan  # an upstream NaN stays in its place
    return x.astype(dtype), g.astype(dtype)


def _assert_close_scaled(got: np.ndarray, want: np.ndarray, scale: np.ndarray, what: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, what
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN positions")
    fin = np.isfinite(want)
    np.testing.assert_array_equal(got[~fin & ~np.isnan(want)], want[~fin & ~np.isnan(want)], err_msg=what)
    err = np.abs(got[fin].astype(np.float64) - want[fin])
    bound = scale[fin]
    worst = np.max(err / np.maximum(bound, 1e-300))
    assert np.all(err <= bound), f"{what}: error up to {worst:.3g} x the bound"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", APPROX)
@pytest.mark.parametrize("shape", [(257, 131), (7,), (3, 5, 11)])
def test_gelu_equals_reference(
    dtype: type, approximate: str, shape: tuple[int, ...], monkeypatch: pytest.MonkeyPatch, calls: list[str]
) -> None:
    x, g = _gelu_input(dtype, shape)
    with np.errstate(over="ignore", invalid="ignore"):  # the reference meets inf * 0 on the inf inputs
        (out, (gx,)), (ref, (rgx,)) = _both(
            lambda t: F.gelu(t, approximate=approximate), [x], g, monkeypatch, calls
        )
    assert calls == ["gelu_forward", "gelu_backward"]
    u = float(np.finfo(dtype).eps) / 2
    xa = np.abs(x.astype(np.float64))
    _assert_close_scaled(out, ref, 8 * u * xa, "gelu")
    assert gx is not None and rgx is not None
    _assert_close_scaled(gx, rgx, 8 * u * np.abs(g.astype(np.float64)) * (1 + xa * xa), "gelu grad")
    if out.size >= 17:  # the NaN input, and gelu(-inf) = -inf * 0, as the reference
        assert np.isnan(out.reshape(-1)[16]) and np.isnan(out.reshape(-1)[15])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", APPROX)
def test_gelu_dense_grid(
    dtype: type, approximate: str, monkeypatch: pytest.MonkeyPatch, calls: list[str]
) -> None:
    """Every float32 spacing region of [-12, 12] (where erf and exp are neither 0 nor saturated)."""
    x: np.ndarray = np.linspace(-12, 12, 200_001).astype(dtype)
    g = np.ones_like(x)
    (out, (gx,)), (ref, (rgx,)) = _both(
        lambda t: F.gelu(t, approximate=approximate), [x], g, monkeypatch, calls
    )
    u = float(np.finfo(dtype).eps) / 2
    xa = np.abs(x.astype(np.float64))
    _assert_close_scaled(out, ref, 8 * u * xa, "gelu")
    assert gx is not None and rgx is not None
    _assert_close_scaled(gx, rgx, 8 * u * (1 + xa * xa), "gelu grad")


def test_gelu_default_threshold_and_fallbacks(calls: list[str]) -> None:
    """As shipped: below MIN_SIZE, non-contiguous or float16 inputs take the reference; an odd size
    above it takes the kernels."""
    rng = np.random.default_rng(3)
    small = Tensor(rng.standard_normal(nn_fused.MIN_SIZE - 1).astype(np.float32), requires_grad=True)
    F.gelu(small).sum().backward()
    big = rng.standard_normal((nn_fused.MIN_SIZE // 64 + 1, 128)).astype(np.float32)
    strided = Tensor(big[:, ::2], requires_grad=True)  # as many elements as MIN_SIZE, but strided
    assert strided.data.size >= nn_fused.MIN_SIZE and not nn_fused.supports(strided.data)
    F.gelu(strided).sum().backward()
    half = Tensor(big[:, :64].astype(np.float16))
    assert not nn_fused.supports(half.data)
    F.gelu(half)
    assert calls == []
    odd = Tensor(big[:, :127].copy(), requires_grad=True)
    F.gelu(odd).sum().backward()
    assert calls == ["gelu_forward", "gelu_backward"]


def test_kernels_reject_what_they_do_not_take() -> None:
    x = np.ones((4, 6), dtype=np.float32)
    with pytest.raises(ValueError, match="C-contiguous"):
        nn_fused.gelu_forward(x[:, ::2], "none")
    with pytest.raises(ValueError, match="float16"):
        nn_fused.gelu_forward(x.astype(np.float16), "none")


LN_CASES = [  # (input shape, normalized_shape, weight, bias)
    ((301, 257), (257,), True, True),
    ((6, 50, 3, 37), (3, 37), True, False),
    ((5, 33, 40), (40,), False, True),
    ((2, 1001), (1001,), False, False),
]


def _ln_rtol(dtype: type, wb: bool) -> float:
    if dtype == np.float64:
        return 1e-12
    return 1e-5 if wb else 1e-6


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "nshape", "has_w", "has_b"), LN_CASES)
def test_layer_norm_equals_reference(
    dtype: type,
    shape: tuple[int, ...],
    nshape: tuple[int, ...],
    has_w: bool,
    has_b: bool,
    monkeypatch: pytest.MonkeyPatch,
    calls: list[str],
) -> None:
    rng = np.random.default_rng(1)
    x: np.ndarray = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    x.reshape(-1, int(np.prod(nshape)))[1, 5] = np.nan  # one NaN poisons its row, only its row
    w: np.ndarray | None = (rng.standard_normal(nshape) + 1).astype(dtype) if has_w else None
    b: np.ndarray | None = rng.standard_normal(nshape).astype(dtype) if has_b else None
    g: np.ndarray = rng.standard_normal(shape).astype(dtype)
    (out, grads), (ref, rgrads) = _both(
        lambda *t: F.layer_norm(t[0], nshape, t[1], t[2]), [x, w, b], g, monkeypatch, calls
    )
    assert calls == ["layer_norm_forward", "layer_norm_backward"]
    assert np.isnan(ref).any() and not np.isnan(ref).all()
    for name, a, r in zip(("out", "dx", "dw", "db"), [out, *grads], [ref, *rgrads], strict=True):
        if r is None:
            assert a is None
            continue
        assert a is not None and a.dtype == r.dtype and a.shape == r.shape, name
        np.testing.assert_array_equal(np.isnan(a), np.isnan(r), err_msg=f"{name}: NaN positions")
        ok = ~np.isnan(r)
        if not ok.any():  # dw, db: the NaN row reaches every column
            continue
        tol = _ln_rtol(dtype, name in ("dw", "db")) * np.max(np.abs(r[ok]))
        np.testing.assert_allclose(a[ok], r[ok], rtol=0, atol=tol, err_msg=name)


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False), (False, False, True)])
def test_layer_norm_partial_needs(
    needs: tuple[bool, bool, bool], monkeypatch: pytest.MonkeyPatch, calls: list[str]
) -> None:
    """Only the gradients asked for are computed (a frozen weight, say), and they are right."""
    monkeypatch.setattr(nn_fused, "MIN_SIZE", 0)
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal(s).astype(np.float64) for s in ((40, 24), (24,), (24,))]
    g: np.ndarray = rng.standard_normal((40, 24))
    ts = [Tensor(a, requires_grad=n) for a, n in zip(arrays, needs, strict=True)]
    F.layer_norm(ts[0], (24,), ts[1], ts[2]).backward(g)
    monkeypatch.setattr(nn_fused, "MIN_SIZE", 1 << 62)
    rs = [Tensor(a, requires_grad=True) for a in arrays]
    F.layer_norm(rs[0], (24,), rs[1], rs[2]).backward(g)
    assert calls == ["layer_norm_forward", "layer_norm_backward"]
    for t, r, n in zip(ts, rs, needs, strict=True):
        assert (t.grad is not None) == n
        if n:
            assert t.grad is not None and r.grad is not None
            np.testing.assert_allclose(t.grad, r.grad, rtol=0, atol=1e-12 * np.abs(r.grad).max())


def test_layer_norm_below_threshold_and_strided(calls: list[str]) -> None:
    rng = np.random.default_rng(4)
    x: np.ndarray = rng.standard_normal((8, 16)).astype(np.float32)
    F.layer_norm(Tensor(x, requires_grad=True), (16,)).sum().backward()
    big = rng.standard_normal((nn_fused.MIN_SIZE // 64, 128)).astype(np.float32)
    F.layer_norm(Tensor(big[:, ::2], requires_grad=True), (64,)).sum().backward()
    w64 = Tensor(np.ones(128))  # a weight of another dtype than the input: the reference's promotion
    assert not nn_fused.supports_layer_norm(big, w64.data, None)
    assert calls == []


# ---- against PyTorch, on inputs large enough that the shipped threshold takes the kernels -------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("approximate", APPROX)
def test_gelu_large_matches_torch(dtype: type, approximate: str, calls: list[str]) -> None:
    rng = np.random.default_rng(5)
    x: np.ndarray = (rng.standard_normal((300, 129)) * 2).astype(dtype)
    g: np.ndarray = rng.standard_normal(x.shape).astype(dtype)
    t = Tensor(x, requires_grad=True)
    out = F.gelu(t, approximate=approximate)
    out.backward(g)
    assert calls == ["gelu_forward", "gelu_backward"]
    tx = torch.from_numpy(x).requires_grad_()
    tout = torch.nn.functional.gelu(tx, approximate=approximate)
    tout.backward(torch.from_numpy(g))
    rtol, atol = (1e-5, 1e-6) if dtype == np.float32 else (1e-9, 1e-12)
    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=rtol, atol=atol)
    assert t.grad is not None and tx.grad is not None
    if dtype == np.float32 and approximate == "tanh":
        # 1 - t^2 cancels for t near -1 (x below about -3) in float32, ours and PyTorch's alike: one ulp
        # of t (6e-8) times 0.5 |x| dinner is about 2e-6 there (the NumPy reference is off by 3.3e-6)
        atol = 5e-6
    np.testing.assert_allclose(t.grad, tx.grad.numpy(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_large_matches_torch(dtype: type, calls: list[str]) -> None:
    rng = np.random.default_rng(6)
    x: np.ndarray = (rng.standard_normal((4, 75, 129)) * 2 + 1).astype(dtype)
    w: np.ndarray = (rng.standard_normal(129) + 1).astype(dtype)
    b: np.ndarray = rng.standard_normal(129).astype(dtype)
    g: np.ndarray = rng.standard_normal(x.shape).astype(dtype)
    ts = [Tensor(a, requires_grad=True) for a in (x, w, b)]
    out = F.layer_norm(ts[0], (129,), ts[1], ts[2], eps=1e-5)
    out.backward(g)
    assert calls == ["layer_norm_forward", "layer_norm_backward"]
    tts = [torch.from_numpy(a).requires_grad_() for a in (x, w, b)]
    tout = torch.nn.functional.layer_norm(tts[0], (129,), tts[1], tts[2], eps=1e-5)
    tout.backward(torch.from_numpy(g))
    rtol, atol = (1e-5, 1e-5) if dtype == np.float32 else (1e-9, 1e-11)
    np.testing.assert_allclose(out.data, tout.detach().numpy(), rtol=rtol, atol=atol)
    for t, tt in zip(ts, tts, strict=True):
        assert t.grad is not None and tt.grad is not None
        scale = float(np.abs(tt.grad.numpy()).max())
        np.testing.assert_allclose(t.grad, tt.grad.numpy(), rtol=rtol, atol=atol * scale)


def _scalar_loop(fn: Any) -> Any:
    """fn (a compiled float32 function of vmath) applied elementwise, compiled for this test."""
    import numba

    def loop(x: np.ndarray, out: np.ndarray) -> None:
        for i in range(x.size):
            out[i] = fn(x[i])

    return numba.njit(error_model="numpy")(loop)


def test_float32_exp_and_erf_accuracy() -> None:
    """The float32 GELU's own exp and erf on dense grids, against float64 (math.exp, scipy's erf)."""
    from scipy.special import erf

    assert vmath.load() is None
    a = np.linspace(-87.0, 88.0, 1_000_001).astype(np.float32)
    out = np.empty_like(a)
    _scalar_loop(vmath.exp32)(a, out)
    want = np.exp(a.astype(np.float64))
    assert np.max(np.abs(out - want) / want) <= 1.2e-7  # 2**-23: under one float32 ulp
    z = np.linspace(-6.0, 6.0, 1_000_001).astype(np.float32)
    _scalar_loop(vmath.erf32)(z, out)
    assert np.max(np.abs(out - erf(z.astype(np.float64)))) <= 4.5e-7
    special = np.array([np.nan, np.inf, -np.inf, -88.0, -1e30, 89.0, 1e30, 0.0], dtype=np.float32)
    got = np.empty_like(special)
    _scalar_loop(vmath.exp32)(special, got)
    np.testing.assert_array_equal(got, [np.nan, np.inf, 0.0, 0.0, 0.0, np.inf, np.inf, 1.0])
    _scalar_loop(vmath.erf32)(special, got)
    np.testing.assert_array_equal(got, [np.nan, 1.0, -1.0, -1.0, -1.0, 1.0, 1.0, 0.0])
