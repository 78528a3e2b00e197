"""LoRA directly on packed GGML bases (Q4_0 / Q4_1 / Q8_0 GGMLLinear), and re-quantization for merge.

The forward is base(x) (blocks dequantized per tile, no gradient to them) + s * B(A(dropout(x))); the
quantizers must give llama.cpp's reference bytes, with `gguf.quants` (numpy) as the oracle.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import quants
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_gguf import CFG, tiny_hf, write_tiny_gguf

from entrenar import Tensor, gradcheck
from entrenar import functional as F
from entrenar.assets import AssetError, smollm2_gguf
from entrenar.lora import LoraConfig, LoraLinear, PeftModel, get_peft_model
from entrenar.models.gguf import llama_from_gguf
from entrenar.optim import AdamW
from entrenar.quant.ggml import GGML_BLOCK, GGMLEmbedding, GGMLLinear, quantize_blocks, quantize_ggml

KINDS = ["Q4_0", "Q4_1", "Q8_0"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _weight(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, cols)) * rng.uniform(0.05, 2.0, (rows, 1))).astype(np.float32)


def _lora(kind: str, rows: int = 8, cols: int = 64, *, r: int = 4, dropout: float = 0.0) -> LoraLinear:
    base = GGMLLinear(quantize_ggml(kind, _weight(rows, cols)))
    config = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["x"], lora_dropout=dropout)
    return LoraLinear(base, "default", config, "x", generator=np.random.default_rng(1))


# ------------------------------------------------------------------------------ quantizers
@pytest.mark.parametrize("kind", KINDS)
def test_quantize_matches_gguf_reference_with_edge_blocks(kind: str) -> None:
    w = _weight(6, 96, seed=3)
    w[0, :32] = 0.0  # all-zero block: d = 0, codes from 1/d := 0
    w[1, :32] = 1.25  # constant block
    w[2, :32] = np.linspace(-1.0, 1.0, 32, dtype=np.float32)  # ties in |x| at both ends
    w[3, 32:64] = -w[3, 32:64] * 1e-6  # tiny scales, near float16's subnormals
    ours = quantize_ggml(kind, w)
    want = quants.quantize(w, gguf.GGMLQuantizationType[kind])
    np.testing.assert_array_equal(ours.data, want.reshape(ours.data.shape))


@settings(max_examples=40, deadline=None)
@given(
    kind=st.sampled_from(KINDS),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(1e-3, 1e3),
    ties=st.booleans(),
)
def test_quantize_blocks_equal_gguf_numpy(kind: str, seed: int, scale: float, ties: bool) -> None:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((16, GGML_BLOCK)) * scale).astype(np.float32)
    if ties:  # values on a coarse grid make halves (roundf's case) and repeated extremes common
        x = (np.round(x * 4 / scale) * np.float32(scale / 4)).astype(np.float32)
    want = quants.quantize(x, gguf.GGMLQuantizationType[kind])
    np.testing.assert_array_equal(quantize_blocks(kind, x), want.reshape(16, -1))


def test_quantize_rejects_bad_shapes_and_kinds() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_ggml("Q8_0", np.zeros((2, 40), dtype=np.float32))
    with pytest.raises(ValueError, match="unsupported GGML kind 'Q5_0'"):
        quantize_blocks("Q5_0", np.zeros((1, 32), dtype=np.float32))


# ------------------------------------------------------------------------------ the LoRA layer
@pytest.mark.parametrize("kind", KINDS)
def test_step0_equals_base_and_forward_is_the_lora_formula(kind: str) -> None:
    layer = _lora(kind)
    x = np.random.default_rng(2).standard_normal((3, 5, 64)).astype(np.float32)
    base = layer.base_layer(x).data
    np.testing.assert_array_equal(layer(x).data, base)  # B = 0 at step 0
    rng = np.random.default_rng(4)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    b.data = rng.standard_normal(b.shape).astype(np.float32)
    w = layer.base_layer.dequantize_weight(np.float64)  # type: ignore[operator]
    x64 = x.astype(np.float64)
    want = x64 @ w.T + layer.scaling["default"] * (x64 @ a.data.T.astype(np.float64)) @ b.data.T
    np.testing.assert_allclose(layer(x).data, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_float64_wrt_input_a_and_b(kind: str) -> None:
    layer = _lora(kind, rows=6, cols=32, r=3)
    rng = np.random.default_rng(5)
    a_mod, b_mod = layer.lora_A["default"], layer.lora_B["default"]
    a = Tensor(rng.standard_normal(a_mod.weight.shape), requires_grad=True)
    b = Tensor(rng.standard_normal(b_mod.weight.shape), requires_grad=True)
    x = Tensor(rng.standard_normal((2, 4, 32)), requires_grad=True)

    def fn(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
        a_mod.weight, b_mod.weight = a, b  # type: ignore[assignment]
        return layer(x)

    assert gradcheck(fn, [x, a, b])


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_float32_scheme_with_dropout(kind: str) -> None:
    layer = _lora(kind, rows=6, cols=32, r=3, dropout=0.3)
    layer.lora_B["default"].weight.data[...] = 0.5
    x = Tensor(np.random.default_rng(6).standard_normal((3, 32)).astype(np.float32), requires_grad=True)
    gen = layer.lora_dropout["default"].generator  # type: ignore[attr-defined]
    state = gen.bit_generator.state

    def fn(x: Tensor) -> Tensor:
        gen.bit_generator.state = state  # the same dropout mask at every evaluation
        return layer(x)

    assert gradcheck(fn, [x], mode="float32")


@pytest.mark.parametrize("kind", KINDS)
def test_optimizer_trains_adapters_and_leaves_packed_base_unchanged(kind: str) -> None:
    layer = _lora(kind)
    before = layer.base_layer.qweight.data.copy()  # type: ignore[union-attr]
    params = [p for p in layer.parameters() if p.requires_grad]
    assert len(params) == 2  # lora_A and lora_B only: the blocks are a buffer
    opt = AdamW(params, lr=1e-2)
    x = np.random.default_rng(7).standard_normal((8, 64)).astype(np.float32)
    target = np.random.default_rng(8).standard_normal((8, 8)).astype(np.float32)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = F.mse_loss(layer(x), target)
        loss.backward()
        opt.step()
        losses.append(float(loss.data))
    assert losses[-1] < losses[0]
    np.testing.assert_array_equal(layer.base_layer.qweight.data, before)  # type: ignore[union-attr]
    assert np.abs(layer.lora_B["default"].weight.data).max() > 0


@pytest.mark.parametrize("kind", KINDS)
def test_merge_requantizes_into_the_same_kind_and_unmerge_restores_the_bytes(kind: str) -> None:
    layer = _lora(kind, rows=16, cols=64)
    b = layer.lora_B["default"].weight
    b.data[...] = np.random.default_rng(9).standard_normal(b.shape).astype(np.float32) * 0.1
    base: GGMLLinear = layer.base_layer  # type: ignore[assignment]
    before = base.qweight.data.copy()
    x = np.random.default_rng(10).standard_normal((4, 64)).astype(np.float32)
    unmerged = layer(x).data
    want_w = base.dequantize_weight(np.float32) + layer.get_delta_weight("default")
    with pytest.warns(UserWarning, match="re-quantized its weight"):
        report = layer.merge()
    assert report is not None and report["max_abs_error"] > 0 and report["rel_error"] < 0.2
    assert base.qweight.kind == kind
    np.testing.assert_array_equal(base.qweight.data, quantize_ggml(kind, want_w).data)
    np.testing.assert_array_equal(base.qweight_blocks.data, base.qweight.data)  # the buffer follows
    merged = layer(x).data
    bound = np.abs(x).sum(axis=1, keepdims=True) * report["max_abs_error"]  # |x . err| <= |x|_1 max|err|
    assert np.all(np.abs(merged - unmerged) <= bound + 1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer.unmerge()
    np.testing.assert_array_equal(base.qweight.data, before)
    np.testing.assert_array_equal(base.state_dict()["qweight_blocks"], before)
    np.testing.assert_array_equal(layer(x).data, unmerged)


# ------------------------------------------------------------------------------ whole models
@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    types = {"attn_q": "Q4_0", "attn_k": "Q4_1", "attn_v": "Q8_0", "attn_output": "Q4_1"}
    types |= {"ffn_gate": "Q4_0", "ffn_up": "Q8_0", "ffn_down": "Q4_1"}
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", tiny_hf(), types)


def test_peft_round_trip_on_the_packed_gguf_model(tiny_path: Path, tmp_path: Path) -> None:
    model = llama_from_gguf(tiny_path)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS), generator=0)
    packed = [m for m in peft.modules() if isinstance(m, LoraLinear)]
    assert len(packed) == 7 * CFG["num_hidden_layers"]
    assert {m.base_layer.qweight.kind for m in packed} == {"Q4_0", "Q4_1", "Q8_0"}  # type: ignore[union-attr]
    ids = np.random.default_rng(0).integers(0, CFG["vocab_size"], size=(2, 7))
    opt = AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        logits = peft(ids)
        F.cross_entropy(logits[:, :-1].reshape(-1, CFG["vocab_size"]), ids[:, 1:].reshape(-1)).backward()
        opt.step()
    peft.eval()
    want = peft(ids).data
    peft.save_pretrained(tmp_path / "adapter")
    fresh = PeftModel.from_pretrained(llama_from_gguf(tiny_path), tmp_path / "adapter")
    fresh.eval()
    np.testing.assert_array_equal(fresh(ids).data, want)
    assert not np.array_equal(want, llama_from_gguf(tiny_path)(ids).data)  # the adapter did something


def test_smollm2_lora_keeps_the_base_packed() -> None:
    try:
        path = smollm2_gguf()
    except AssetError as exc:
        pytest.skip(f"SmolLM2 GGUF not available: {exc}")
    model = llama_from_gguf(path)
    layers = [m for n, m in model.named_modules() if isinstance(m, GGMLLinear) and n.endswith("_proj")]
    packed_bytes = sum(m.qweight.nbytes for m in layers)
    c = model.config
    assert len(layers) == 7 * c.num_hidden_layers
    # the tied Q8_0 embedding stays packed: one GGMLTensor is the lm_head and the looked-up table
    assert isinstance(model.lm_head, GGMLLinear) and isinstance(model.model.embed_tokens, GGMLEmbedding)
    assert model.lm_head.qweight is model.model.embed_tokens.qweight and model.lm_head.qweight.kind == "Q8_0"
    peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS), generator=0)
    h, f, kv = c.hidden_size, c.intermediate_size, c.kv_heads * c.dim_per_head
    # PEFT's count: r * (in + out) per adapted projection
    per_layer = 16 * ((h + h) * 2 + (h + kv) * 2 + (h + f) * 3)
    trainable, _ = peft.get_nb_trainable_parameters()
    assert trainable == per_layer * c.num_hidden_layers == 4_884_480
    wrapped = [m.base_layer for m in peft.modules() if isinstance(m, LoraLinear)]
    assert len(wrapped) == len(layers) and all(isinstance(m, GGMLLinear) for m in wrapped)
    assert sum(m.qweight.nbytes for m in wrapped) == packed_bytes  # type: ignore[union-attr]
    expected = sum(
        m.out_features * m.in_features // 32 * {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}[m.qweight.kind]
        for m in layers
    )
    assert packed_bytes == expected
