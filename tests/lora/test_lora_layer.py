"""LoraLinear: gradients (gradcheck), initialisation, dropout, merge/unmerge, DoRA."""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import numpy as np
import pytest

from entrenar import Tensor, gradcheck
from entrenar.lora import LoraConfig, LoraLinear
from entrenar.lora import dora as dora_module
from entrenar.nn import Linear


def _layer(
    dtype: Any = np.float64, *, bias: bool = True, r: int = 3, in_f: int = 5, out_f: int = 4, **cfg: Any
) -> LoraLinear:
    base = Linear(in_f, out_f, bias=bias, dtype=dtype, generator=np.random.default_rng(0))
    config = LoraConfig(r=r, lora_alpha=6, target_modules=["x"], init_lora_weights=False, **cfg)
    return LoraLinear(base, "default", config, "x", generator=np.random.default_rng(1))


def _x(dtype: Any = np.float64, shape: tuple[int, ...] = (2, 3, 5)) -> np.ndarray:
    return np.random.default_rng(2).standard_normal(shape).astype(dtype)


def _with(layer: LoraLinear, a: Tensor, b: Tensor, m: Tensor | None = None) -> LoraLinear:
    """Put the gradcheck's tensors in place of the adapter's parameters."""
    layer.lora_A["default"].weight = a  # type: ignore[assignment]
    layer.lora_B["default"].weight = b  # type: ignore[assignment]
    if m is not None:
        layer.lora_magnitude_vector["default"].weight = m  # type: ignore[assignment]
    return layer


def _params(layer: LoraLinear) -> tuple[Tensor, Tensor]:
    return (
        Tensor(layer.lora_A["default"].weight.data.copy(), requires_grad=True),
        Tensor(layer.lora_B["default"].weight.data.copy(), requires_grad=True),
    )


@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck_lora(bias: bool) -> None:
    layer = _layer(bias=bias)
    a, b = _params(layer)
    x = Tensor(_x(), requires_grad=True)
    assert gradcheck(lambda a, b, x: _with(layer, a, b)(x), [a, b, x])


def test_gradcheck_lora_bias() -> None:
    layer = _layer(lora_bias=True)
    bb = layer.lora_B["default"].bias
    assert bb is not None
    lb = Tensor(bb.data.copy() + 0.3, requires_grad=True)

    def run(a: Tensor, b: Tensor, lb: Tensor, x: Tensor) -> Tensor:
        layer.lora_B["default"].bias = lb  # type: ignore[assignment]
        return _with(layer, a, b)(x)

    assert gradcheck(run, [*_params(layer), lb, Tensor(_x(), requires_grad=True)])


def test_gradcheck_dora(monkeypatch: pytest.MonkeyPatch) -> None:
    """DoRA's gradient treats ||W0 + s B A||_row as a constant: check it against finite differences of the
    forward with that norm held at its value (the only thing the finite differences may not move)."""
    layer = _layer(use_dora=True)
    a, b = _params(layer)
    w = layer.base_layer.weight.data
    frozen = dora_module.weight_norm(w, b.data @ a.data, layer.scaling["default"])
    monkeypatch.setattr(dora_module, "weight_norm", lambda *_: frozen)
    m = Tensor(layer.lora_magnitude_vector["default"].weight.data * 1.3, requires_grad=True)
    x = Tensor(_x(), requires_grad=True)
    assert gradcheck(lambda a, b, m, x: _with(layer, a, b, m)(x), [a, b, m, x])


def test_dora_norm_takes_no_gradient() -> None:
    """With the norm detached, the gradient w.r.t. B is that of (g - 1) base + g s B(A(x)) with g fixed."""
    layer = _layer(use_dora=True)
    x = _x()
    layer(x).sum().backward()
    a, b = layer.lora_A["default"].weight.data, layer.lora_B["default"].weight.data
    g = layer.lora_magnitude_vector["default"].weight.data / dora_module.weight_norm(
        layer.base_layer.weight.data, b @ a, layer.scaling["default"]
    )
    # d/dB sum(g * s * (x A^T) B^T) = s * g[:, None] * sum over rows of (x A^T)
    want = layer.scaling["default"] * g[:, None] * (x.reshape(-1, 5) @ a.T).sum(0)[None, :]
    np.testing.assert_allclose(layer.lora_B["default"].weight.grad, want, rtol=1e-10)


def test_dora_magnitude_starts_at_row_norm() -> None:
    layer = _layer(use_dora=True)
    w = layer.base_layer.weight.data + layer.get_delta_weight("default")
    np.testing.assert_allclose(layer.lora_magnitude_vector["default"].weight.data, np.linalg.norm(w, axis=1))
    # so at step 0 DoRA computes the same as plain LoRA with the same A and B
    plain = _layer()
    np.testing.assert_allclose(layer(_x()).data, plain(_x()).data, rtol=1e-12, atol=1e-12)


def test_forward_is_base_plus_scaled_low_rank() -> None:
    layer = _layer(r=2)
    x = _x()
    s = 6 / 2
    want = (
        layer.base_layer(x).data
        + s * x @ layer.lora_A["default"].weight.data.T @ layer.lora_B["default"].weight.data.T
    )
    np.testing.assert_allclose(layer(x).data, want, rtol=1e-12)
    rs = _layer(r=4, use_rslora=True)
    assert rs.scaling["default"] == 6 / math.sqrt(4)


def test_init_default_gaussian_and_false() -> None:
    rng = np.random.default_rng(0)
    base = Linear(400, 300, generator=rng)
    default = LoraLinear(base, "d", LoraConfig(r=16, target_modules=["x"]), "x", generator=rng)
    a, b = default.lora_A["d"].weight.data, default.lora_B["d"].weight.data
    assert a.shape == (16, 400) and b.shape == (300, 16) and a.dtype == np.float32
    assert not b.any()  # a no-op at step 0
    bound = 1 / math.sqrt(400)
    assert np.abs(a).max() <= bound and np.abs(a).max() > 0.95 * bound
    assert np.std(a) == pytest.approx(bound / math.sqrt(3), rel=0.05)
    g = LoraLinear(
        base, "g", LoraConfig(r=16, target_modules=["x"], init_lora_weights="gaussian"), "x", generator=rng
    )
    assert np.std(g.lora_A["g"].weight.data) == pytest.approx(1 / 16, rel=0.05)
    assert not g.lora_B["g"].weight.data.any()
    f = LoraLinear(
        base, "f", LoraConfig(r=16, target_modules=["x"], init_lora_weights=False), "x", generator=rng
    )
    fb = f.lora_B["f"].weight.data
    assert np.abs(fb).max() <= 1 / math.sqrt(16) and np.std(fb) == pytest.approx(0.25 / math.sqrt(3), rel=0.1)


def test_adapters_follow_the_base_dtype() -> None:
    layer = _layer(np.float64)
    assert layer.lora_A["default"].weight.dtype == np.float64
    assert _layer(np.float32).lora_B["default"].weight.dtype == np.float32


def test_dropout_uses_the_generator_and_only_in_training() -> None:
    a, b = _layer(lora_dropout=0.5), _layer(lora_dropout=0.5)
    x = _x()
    first = a(x).data
    np.testing.assert_array_equal(first, b(x).data)  # same seed, same masks
    assert not np.allclose(first, a(x).data)  # a new mask each call
    a.eval()
    no_drop = _layer()
    np.testing.assert_allclose(a(x).data, no_drop(x).data, rtol=1e-12)


def test_dora_with_dropout_feeds_the_dropped_input_to_both_terms_in_training() -> None:
    """PEFT's DoRA forward (peft/tuners/lora/layer.py Linear.forward, dora.py DoraLinearLayer.forward):
    out = base(x) + (g - 1) * x' W0^T + g * s * B(A(x')),  g = m / ||W0 + s B A||_row (no bias in the
    bracket). While dropout is active x' = dropout(x), and the base term x' W0^T is recomputed from it;
    otherwise x' = x and the base output (less its bias) is reused."""
    layer = _layer(use_dora=True, lora_dropout=0.5)
    layer.lora_magnitude_vector["default"].weight.data *= 1.2  # g != 1, so the (g - 1) term counts
    x = _x()
    replay = copy.deepcopy(layer.lora_dropout["default"])  # its generator draws the forward's mask
    trained = layer(x).data
    xd = replay(Tensor(x)).data
    assert 0 < np.count_nonzero(xd == 0) < xd.size  # a mask that drops some inputs and keeps others
    w0 = layer.base_layer.weight.data
    a, b = layer.lora_A["default"].weight.data, layer.lora_B["default"].weight.data
    s = layer.scaling["default"]
    g = layer.lora_magnitude_vector["default"].weight.data / np.linalg.norm(w0 + s * b @ a, axis=1)
    base = layer.base_layer(x).data

    def want(xin: np.ndarray) -> np.ndarray:
        return base + (g - 1) * (xin @ w0.T) + g * s * (xin @ a.T @ b.T)

    np.testing.assert_allclose(trained, want(xd), rtol=1e-12, atol=1e-12)
    assert not np.allclose(trained, want(x))  # dropout changed the output
    layer.eval()
    np.testing.assert_allclose(layer(x).data, want(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("use_dora", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_merge_equals_forward_and_unmerge_restores(use_dora: bool, bias: bool) -> None:
    layer = _layer(use_dora=use_dora, bias=bias)
    if use_dora:
        layer.lora_magnitude_vector["default"].weight.data *= 1.2  # move away from the initial norm
    x = _x()
    w0 = layer.base_layer.weight.data.copy()
    unmerged = layer(x).data
    assert layer.merge() is None  # a float base: no rounding to report
    assert layer.merged and layer.merged_adapters == ["default"]
    assert not np.allclose(layer.base_layer.weight.data, w0)
    np.testing.assert_allclose(layer(x).data, unmerged, rtol=1e-10, atol=1e-12)
    layer.unmerge()
    assert not layer.merged
    np.testing.assert_allclose(layer.base_layer.weight.data, w0, rtol=0, atol=1e-13)
    np.testing.assert_allclose(layer(x).data, unmerged, rtol=1e-12, atol=1e-13)


def test_merge_with_lora_bias() -> None:
    layer = _layer(lora_bias=True)
    bb = layer.lora_B["default"].bias
    assert bb is not None
    bb.data += 0.5
    x = _x()
    want = layer(x).data
    layer.merge()
    np.testing.assert_allclose(layer(x).data, want, rtol=1e-10)
    layer.unmerge()
    np.testing.assert_allclose(layer(x).data, want, rtol=1e-12)


def test_merge_twice_and_unmerge_twice_warn_as_peft() -> None:
    layer = _layer()
    layer.merge()
    with pytest.warns(UserWarning, match="All adapters are already merged, nothing to do."):
        layer.merge()
    layer.unmerge()
    with pytest.warns(UserWarning, match="Already unmerged. Nothing to do."):
        layer.unmerge()
    with pytest.raises(TypeError, match="adapter_names should be a list of strings"):
        layer.merge(adapter_names="default")


def test_safe_merge_refuses_nan() -> None:
    layer = _layer()
    layer.lora_B["default"].weight.data[0, 0] = np.nan
    w0 = layer.base_layer.weight.data.copy()
    with pytest.raises(ValueError, match="NaNs detected in the merged weights"):
        layer.merge(safe_merge=True)
    np.testing.assert_array_equal(layer.base_layer.weight.data, w0)
    assert not layer.merged


def test_two_adapters_and_dora_merge_order() -> None:
    """A second adapter merged after a DoRA one: its norm uses the base with nothing merged, as PEFT."""
    layer = _layer(use_dora=True)
    layer.update_layer(
        "b",
        LoraConfig(r=2, target_modules=["x"], init_lora_weights=False),
        "x",
        generator=np.random.default_rng(5),
    )
    layer.update_layer(
        "c",
        LoraConfig(r=2, target_modules=["x"], init_lora_weights=False, use_dora=True),
        "x",
        generator=np.random.default_rng(6),
    )
    layer.set_adapter(["default", "b", "c"])
    x = _x()
    w0 = layer.base_layer.weight.data.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer.merge(adapter_names=["default", "b"])
    with pytest.warns(UserWarning, match="You are now additionally merging c"):
        layer.merge()
    assert layer.merged_adapters == ["default", "b", "c"]
    layer.unmerge()
    np.testing.assert_allclose(layer.base_layer.weight.data, w0, atol=1e-12)
    assert layer(x).shape == (2, 3, 4)


def test_delete_adapter() -> None:
    layer = _layer()
    layer.update_layer("b", LoraConfig(target_modules=["x"]), "x", generator=np.random.default_rng(0))
    layer.merge()
    with pytest.raises(ValueError, match="cannot delete adapter 'default' while it is merged"):
        layer.delete_adapter("default")
    layer.unmerge()
    layer.delete_adapter("default")
    assert list(layer.lora_A) == ["b"] and layer.active_adapters == ["b"] and "default" not in layer.scaling
    with pytest.raises(ValueError, match="adapter 'b' already exists"):
        layer.update_layer("b", LoraConfig(target_modules=["x"]), "x", generator=np.random.default_rng(0))
