"""QLoRA: LoRA on a 4-bit (NF4 / int4) base: what gets quantized, gradients, merging with rounding reports."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from lora_models import MLP, bert, perturb, x_batch

from entrenar import Tensor, gradcheck
from entrenar.lora import LoraConfig, LoraLinear, PeftModel, get_peft_model
from entrenar.lora.inject import get_module
from entrenar.nn import GPT, GPTConfig, Linear, Module
from entrenar.optim import AdamW
from entrenar.quant import QuantLinear, quantize


def _qlora(**cfg: Any) -> PeftModel:
    config = LoraConfig(**{"r": 2, "target_modules": ["up", "down"], "init_lora_weights": False, **cfg})
    m = get_peft_model(MLP(), config, quantize="nf4", double_quant=True, block_size=16)
    perturb(m)
    return m


def _codes(layer: Module) -> dict[str, np.ndarray]:
    assert isinstance(layer, QuantLinear)
    return {k: v.copy() for k, v in layer.qweight.arrays().items()}


def test_base_linears_become_4bit_and_adapters_stay_float32() -> None:
    m = get_peft_model(MLP(), LoraConfig(target_modules=["up"], modules_to_save=["embed"]), quantize="int4")
    inner = m.get_base_model()
    up = inner.blocks[0].up
    assert (
        isinstance(up, LoraLinear) and isinstance(up.base_layer, QuantLinear) and up.base_layer.kind == "int4"
    )
    assert isinstance(inner.blocks[0].down, QuantLinear) and isinstance(inner.heads["out"], QuantLinear)
    assert isinstance(inner.embed.original_module, Linear)  # modules_to_save stay in full precision
    assert up.lora_A["default"].weight.dtype == np.float32 and up.lora_B["default"].weight.dtype == np.float32
    gpt = GPT(
        GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8),
        generator=np.random.default_rng(0),
    )
    g = get_peft_model(gpt, LoraConfig(target_modules="all-linear"), quantize="nf4", block_size=8)
    assert isinstance(g.get_base_model().lm_head, Linear)  # the output layer too
    cls = get_peft_model(bert(), LoraConfig(target_modules=["query"], task_type="SEQ_CLS"), quantize="nf4")
    assert isinstance(cls.get_base_model().classifier.original_module, Linear)
    assert isinstance(cls.get_base_model().bert.pooler.dense, QuantLinear)


def test_forward_equals_float_lora_on_the_dequantized_weights() -> None:
    m = _qlora()
    ref = MLP()
    for name, mod in ref.named_modules():
        if isinstance(mod, Linear):
            quantized = get_module(m.get_base_model(), name)
            base = quantized.base_layer if isinstance(quantized, LoraLinear) else quantized
            mod.weight.data[...] = base.dequantize_weight()
    float_peft = get_peft_model(ref, LoraConfig(r=2, target_modules=["up", "down"], init_lora_weights=False))
    perturb(float_peft)
    np.testing.assert_allclose(m(x_batch()).data, float_peft(x_batch()).data, rtol=1e-5, atol=1e-5)


def test_gradients_never_reach_the_base() -> None:
    m = _qlora(lora_dropout=0.1)
    layer = m.get_base_model().blocks[0].up
    codes = _codes(layer.base_layer)
    opt = AdamW(m.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(2):
        opt.zero_grad()
        (m(x_batch()) ** 2).mean().backward()
        opt.step()
    for name, p in m.named_parameters():
        assert (p.grad is not None) == (".lora_" in name), name
    after = _codes(layer.base_layer)
    for k, v in codes.items():
        np.testing.assert_array_equal(after[k], v, err_msg=k)


def _quant_layer(use_dora: bool = False) -> LoraLinear:
    base = QuantLinear.from_linear(
        Linear(8, 6, dtype=np.float64, generator=np.random.default_rng(0)), "nf4", 8, double_quant=True
    )
    cfg = LoraConfig(r=3, lora_alpha=6, target_modules=["x"], init_lora_weights=False, use_dora=use_dora)
    return LoraLinear(base, "default", cfg, "x", generator=np.random.default_rng(1))


@pytest.mark.parametrize("use_dora", [False, True])
def test_gradcheck_qlora(use_dora: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    layer = _quant_layer(use_dora)
    a = Tensor(layer.lora_A["default"].weight.data.copy(), requires_grad=True)
    b = Tensor(layer.lora_B["default"].weight.data.copy(), requires_grad=True)
    x = Tensor(np.random.default_rng(2).standard_normal((3, 8)), requires_grad=True)
    if use_dora:  # the norm is a constant of DoRA's gradient: hold it for the finite differences
        from entrenar.lora import dora

        w = layer.base_layer.dequantize_weight(np.float64)
        frozen = dora.weight_norm(w, b.data @ a.data, layer.scaling["default"])
        monkeypatch.setattr(dora, "weight_norm", lambda *_: frozen)

    def run(a: Tensor, b: Tensor, x: Tensor) -> Tensor:
        layer.lora_A["default"].weight = a  # type: ignore[assignment]
        layer.lora_B["default"].weight = b  # type: ignore[assignment]
        return layer(x)  # type: ignore[no-any-return]

    assert gradcheck(run, [a, b, x])


def test_dora_on_a_4bit_base_starts_at_the_dequantized_row_norm() -> None:
    layer = _quant_layer(use_dora=True)
    w = layer.base_layer.dequantize_weight(np.float64) + layer.get_delta_weight("default")
    np.testing.assert_allclose(layer.lora_magnitude_vector["default"].weight.data, np.linalg.norm(w, axis=1))


@pytest.mark.parametrize("use_dora", [False, True])
def test_merge_requantizes_reports_the_rounding_and_unmerge_restores_the_codes(use_dora: bool) -> None:
    m = _qlora(use_dora=use_dora)
    x = x_batch()
    unmerged = m(x).data
    layers = {n: mod for n, mod in m.get_base_model().named_modules() if isinstance(mod, LoraLinear)}
    before = {n: _codes(mod.base_layer) for n, mod in layers.items()}
    expected = {}
    for n, mod in layers.items():
        w = mod.base_layer.dequantize_weight()
        want = mod.get_delta_weight("default") + w
        if use_dora:
            norm = np.linalg.norm(want, axis=1)
            want = (mod.lora_magnitude_vector["default"].weight.data / norm)[:, None] * want
        expected[n] = quantize(want, "nf4", 16, True).dequantize()
    with pytest.warns(
        UserWarning, match=r"merging into 4 quantized layer\(s\) re-quantized .* mean \|error\| "
    ):
        reports = m.merge_adapter()
    assert set(reports) == set(layers)
    for n, mod in layers.items():
        np.testing.assert_allclose(
            mod.base_layer.dequantize_weight(), expected[n], rtol=0, atol=1e-6, err_msg=n
        )
        r = reports[n]
        assert set(r) == {"max_abs_error", "mean_abs_error", "rel_error"}
        assert 0 < r["mean_abs_error"] < r["max_abs_error"] and 0 < r["rel_error"] < 0.2
    merged = m(x).data
    assert np.abs(merged - unmerged).max() < 0.2 * np.abs(unmerged).max()  # close, up to the rounding
    m.unmerge_adapter()
    for n, mod in layers.items():
        for k, v in _codes(mod.base_layer).items():
            np.testing.assert_array_equal(v, before[n][k], err_msg=f"{n} {k}")
    np.testing.assert_array_equal(m(x).data, unmerged)


def test_merge_and_unload_keeps_the_report() -> None:
    m = _qlora()
    with pytest.warns(UserWarning, match="re-quantized"):
        model = m.merge_and_unload()
    assert isinstance(model.blocks[1].down, QuantLinear) and sorted(m.merge_report) == [
        "blocks.0.down",
        "blocks.0.up",
        "blocks.1.down",
        "blocks.1.up",
    ]


def test_qlora_adapter_round_trip(tmp_path: Any) -> None:
    m = _qlora(use_dora=True)
    m.save_pretrained(tmp_path)
    back = PeftModel.from_pretrained(MLP(), tmp_path, quantize="nf4", double_quant=True, block_size=16)
    np.testing.assert_array_equal(back(x_batch()).data, m(x_batch()).data)


def test_unknown_quantization_and_counts() -> None:
    with pytest.raises(ValueError, match=r"quantize must be None or one of \['nf4', 'int4'\], got 'fp4'"):
        get_peft_model(MLP(), LoraConfig(target_modules=["up"]), quantize="fp4")
    with pytest.raises(ValueError, match="block_size must be a positive int, got 0"):
        get_peft_model(MLP(), LoraConfig(target_modules=["up"]), quantize="nf4", block_size=0)
    model = MLP()
    with pytest.raises(ValueError, match="matched no module of MLP"):
        get_peft_model(model, LoraConfig(target_modules=["nope"]), quantize="nf4")
    assert isinstance(model.blocks[0].up, Linear)  # the failed call quantized nothing
    m = get_peft_model(MLP(), LoraConfig(r=2, target_modules=["up"]), quantize="nf4")
    float_m = get_peft_model(MLP(), LoraConfig(r=2, target_modules=["up"]))
    assert m.get_nb_trainable_parameters() == float_m.get_nb_trainable_parameters()


def test_a_second_dora_merge_on_a_4bit_base_uses_the_codes_from_before_merging() -> None:
    """The DoRA norm of an adapter merged second is that of W0 + dW with W0 the original codes' weight."""
    m = _qlora(use_dora=True)
    m.add_adapter("b", LoraConfig(r=2, target_modules=["up"], use_dora=True, init_lora_weights=False))
    layer = m.get_base_model().blocks[0].up
    w0 = layer.base_layer.dequantize_weight()
    with pytest.warns(UserWarning, match="re-quantized"):
        m.merge_adapter(["default"])
    with pytest.warns(UserWarning) as record:
        m.merge_adapter(["b"])
    messages = [str(w.message) for w in record]
    assert any("You are now additionally merging b" in t for t in messages)
    assert any("re-quantized" in t for t in messages)
    want = np.linalg.norm(w0 + layer.get_delta_weight("b"), axis=1)
    np.testing.assert_allclose(layer._dora_norms["b"], want, rtol=1e-6)
    m.unmerge_adapter()
    np.testing.assert_array_equal(layer.base_layer.dequantize_weight(), w0)
