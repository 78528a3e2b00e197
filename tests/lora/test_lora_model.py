"""get_peft_model / PeftModel on entrenar models: injection by name, freezing, training, merging, adapters."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from lora_models import MLP, bert, bert_batch, perturb, x_batch

from entrenar.lora import LoraConfig, LoraLinear, ModulesToSaveWrapper, PeftModel, get_peft_model
from entrenar.lora.inject import EXCLUDED, match_target
from entrenar.nn import GPT, GPTConfig, Linear
from entrenar.optim import AdamW


def _mlp_peft(**cfg: object) -> tuple[PeftModel, np.ndarray]:
    base_out = MLP()(x_batch()).data
    return get_peft_model(MLP(), LoraConfig(**{"r": 2, "target_modules": ["up", "down"], **cfg})), base_out


def test_injection_by_dotted_name_in_lists_and_dicts() -> None:
    m, _ = _mlp_peft(target_modules=["up", "out"])
    inner = m.get_base_model()
    assert isinstance(inner.blocks[1].up, LoraLinear) and isinstance(inner.heads["out"], LoraLinear)
    assert isinstance(inner.blocks[0].down, Linear) and isinstance(inner.embed, Linear)
    names = dict(m.named_parameters())
    assert names["base_model.model.blocks.0.up.lora_A.default.weight"].shape == (2, 6)
    assert names["base_model.model.blocks.0.up.lora_B.default.weight"].shape == (12, 2)
    assert "base_model.model.blocks.0.up.base_layer.weight" in names
    assert "base_model.model.heads.out.lora_A.default.weight" in names
    regex = get_peft_model(MLP(), LoraConfig(target_modules=r"blocks\.1\.(up|down)"))
    assert [n for n, mod in regex.named_modules() if isinstance(mod, LoraLinear)] == [
        "base_model.model.blocks.1.up",
        "base_model.model.blocks.1.down",
    ]


def test_all_linear_leaves_out_the_output_layer() -> None:
    mlp = get_peft_model(MLP(), LoraConfig(target_modules="all-linear"))
    assert mlp.peft_config["default"].target_modules == sorted(
        ["embed", "blocks.0.up", "blocks.0.down", "blocks.1.up", "blocks.1.down", "heads.out"]
    )
    c = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)
    gpt = get_peft_model(GPT(c, generator=np.random.default_rng(0)), LoraConfig(target_modules="all-linear"))
    targets = gpt.peft_config["default"].target_modules
    assert "lm_head" not in targets and targets and all(isinstance(t, str) for t in targets)
    cls = get_peft_model(bert(), LoraConfig(target_modules="all-linear", task_type="SEQ_CLS"))
    assert "classifier" not in cls.peft_config["default"].target_modules
    assert "bert.pooler.dense" in cls.peft_config["default"].target_modules
    assert isinstance(cls.get_base_model().classifier, ModulesToSaveWrapper)


def test_exclude_and_layers_to_transform() -> None:
    m = get_peft_model(bert(), LoraConfig(target_modules=["query", "value"], exclude_modules=["value"]))
    adapted = [n for n, mod in m.named_modules() if isinstance(mod, LoraLinear)]
    assert adapted == [f"base_model.model.bert.encoder.layer.{i}.attention.self.query" for i in (0, 1)]
    m = get_peft_model(bert(), LoraConfig(target_modules=["query"], layers_to_transform=[1]))
    adapted = [n for n, mod in m.named_modules() if isinstance(mod, LoraLinear)]
    assert adapted == ["base_model.model.bert.encoder.layer.1.attention.self.query"]


def test_rank_pattern_gives_per_module_ranks() -> None:
    m = get_peft_model(MLP(), LoraConfig(r=2, target_modules=["up"], rank_pattern={"blocks.1.up": 5}))
    sd = m.state_dict()
    assert sd["base_model.model.blocks.0.up.lora_A.default.weight"].shape == (2, 6)
    assert sd["base_model.model.blocks.1.up.lora_A.default.weight"].shape == (5, 6)


def test_no_match_lists_the_linear_layers() -> None:
    with pytest.raises(
        ValueError, match=re.escape("target_modules=['qkv'] matched no module of MLP; its Linear layers")
    ) as e:
        get_peft_model(MLP(), LoraConfig(target_modules=["qkv"]))
    for name in ("embed", "blocks.0.up", "blocks.1.down", "heads.out"):
        assert name in str(e.value)
    with pytest.raises(ValueError, match=r"matched 'blocks.0', a Block; only Linear and QuantLinear"):
        get_peft_model(MLP(), LoraConfig(target_modules=["0"]))
    with pytest.raises(ValueError, match=r"is excluded by exclude_modules or modules_to_save: blocks.0.up"):
        get_peft_model(MLP(), LoraConfig(target_modules=["up"], exclude_modules=["up"]))
    # a module in modules_to_save gets a trainable copy, never an adapter: excluded, as PEFT's
    # check_target_module_exists returns _ExcludedModule for it
    with pytest.raises(ValueError, match=r"is excluded by exclude_modules or modules_to_save: heads.out"):
        get_peft_model(MLP(), LoraConfig(target_modules=["out"], modules_to_save=["heads.out"]))
    assert match_target(LoraConfig(target_modules=["out"], modules_to_save=["out"]), "heads.out") == EXCLUDED
    with pytest.raises(ValueError, match="target_modules is required"):
        get_peft_model(MLP(), LoraConfig())
    with pytest.raises(TypeError, match=r"generator must be an np.random.Generator or an int seed"):
        get_peft_model(MLP(), LoraConfig(target_modules=["up"]), generator=0.5)  # type: ignore[arg-type]


def test_only_adapters_train_and_the_base_never_moves() -> None:
    m, _ = _mlp_peft()
    trainable = sorted(n for n, p in m.named_parameters() if p.requires_grad)
    assert trainable and all(re.search(r"\.lora_[AB]\.default\.weight$", n) for n in trainable)
    base = {n: p.data.copy() for n, p in m.named_parameters() if not p.requires_grad}
    opt = AdamW(m.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        (m(x_batch()) ** 2).mean().backward()
        opt.step()
    for n, p in m.named_parameters():
        if n in base:
            assert p.grad is None, n
            np.testing.assert_array_equal(p.data, base[n], err_msg=n)
        else:
            assert p.grad is not None and np.abs(p.grad).sum() > 0, n
    assert m.get_base_model().blocks[0].up.lora_B["default"].weight.data.any()


def test_bias_modes_and_modules_to_save() -> None:
    m = get_peft_model(
        MLP(), LoraConfig(target_modules=["up"], bias="lora_only", modules_to_save=["heads.out"])
    )
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert "base_model.model.blocks.0.up.base_layer.bias" in trainable
    assert "base_model.model.blocks.0.down.bias" not in trainable
    assert "base_model.model.heads.out.modules_to_save.default.weight" in trainable
    assert "base_model.model.heads.out.original_module.weight" not in trainable
    m = get_peft_model(MLP(), LoraConfig(target_modules=["up"], bias="all"))
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert {"base_model.model.embed.bias", "base_model.model.blocks.1.down.bias"} <= trainable


def test_step_zero_output_is_the_base_models() -> None:
    m, base_out = _mlp_peft()
    np.testing.assert_array_equal(m(x_batch()).data, base_out)
    ids, mask = bert_batch()
    want = bert()(ids, mask).data
    m = get_peft_model(bert(), LoraConfig(target_modules=["query", "value"], use_dora=True))
    np.testing.assert_allclose(m(ids, mask).data, want, rtol=0, atol=1e-6)


@pytest.mark.parametrize("use_dora", [False, True])
def test_merge_unmerge_and_merge_and_unload(use_dora: bool) -> None:
    m, base_out = _mlp_peft(use_dora=use_dora, init_lora_weights=False)
    perturb(m)
    x = x_batch()
    adapted = m(x).data
    assert not np.allclose(adapted, base_out)
    w0 = m.get_base_model().blocks[0].up.base_layer.weight.data.copy()
    assert m.merge_adapter() == {}
    np.testing.assert_allclose(m(x).data, adapted, rtol=1e-5, atol=1e-5)
    m.unmerge_adapter()
    np.testing.assert_allclose(m.get_base_model().blocks[0].up.base_layer.weight.data, w0, atol=1e-6)
    np.testing.assert_allclose(m(x).data, adapted, rtol=1e-5, atol=1e-6)
    merged = m.merge_and_unload()
    assert isinstance(merged, MLP) and isinstance(merged.blocks[0].up, Linear)
    assert not any(isinstance(mod, LoraLinear) for mod in merged.modules())
    np.testing.assert_allclose(merged(x).data, adapted, rtol=1e-5, atol=1e-5)


def test_merge_adapter_checks_for_nan_only_when_asked() -> None:
    """safe_merge defaults to False, as in PEFT: a broken (NaN) adapter is merged as it is; safe_merge=True
    refuses it with PEFT's message and leaves the base weights as they were."""
    m, _ = _mlp_peft(init_lora_weights=False)
    up = m.get_base_model().blocks[0].up
    up.lora_B["default"].weight.data[0, 0] = np.nan
    w0 = up.base_layer.weight.data.copy()
    with pytest.raises(
        ValueError, match=r"NaNs detected in the merged weights\. The adapter\(s\) \['default'\]"
    ):
        m.merge_adapter(safe_merge=True)
    np.testing.assert_array_equal(up.base_layer.weight.data, w0)
    assert not up.merged
    m.merge_adapter()
    assert up.merged and np.isnan(up.base_layer.weight.data[0]).all()  # row 0 of s B A is NaN


def test_unload_gives_back_the_base_model() -> None:
    m, base_out = _mlp_peft(init_lora_weights=False)
    plain = m.unload()
    assert isinstance(plain.blocks[0].up, Linear) and not any(
        isinstance(x, LoraLinear) for x in plain.modules()
    )
    np.testing.assert_array_equal(plain(x_batch()).data, base_out)


def test_disable_adapter_gives_the_base_output() -> None:
    m, base_out = _mlp_peft(init_lora_weights=False)
    x = x_batch()
    adapted = m(x).data
    with m.disable_adapter():
        np.testing.assert_array_equal(m(x).data, base_out)
    np.testing.assert_array_equal(m(x).data, adapted)
    m.merge_adapter()
    with m.disable_adapter():  # merged layers are unmerged first, as in PEFT
        np.testing.assert_allclose(m(x).data, base_out, rtol=1e-6, atol=1e-6)
    with pytest.raises(RuntimeError, match="boom"), m.disable_adapter():
        raise RuntimeError("boom")
    np.testing.assert_allclose(m(x).data, adapted, rtol=1e-5, atol=1e-6)
    b = get_peft_model(MLP(), LoraConfig(target_modules=["up"], bias="all"))
    with (
        pytest.warns(UserWarning, match="disabling adapter layers with bias configured to be 'all'"),
        b.disable_adapter(),
    ):
        pass


def test_several_adapters_switching_and_deleting() -> None:
    m, base_out = _mlp_peft(init_lora_weights=False)
    x = x_batch()
    first = m(x).data
    m.add_adapter("second", LoraConfig(r=3, target_modules=["down"], init_lora_weights=False))
    assert m.active_adapter == "default"
    np.testing.assert_array_equal(m(x).data, first)  # added, not active
    second_params = {n for n, p in m.named_parameters() if ".second." in n}
    assert second_params and not any(p.requires_grad for n, p in m.named_parameters() if n in second_params)
    m.set_adapter("second")
    assert m.active_adapter == "second" and all(
        p.requires_grad == (".second." in n) for n, p in m.named_parameters()
    )
    second = m(x).data
    assert not np.allclose(second, first) and not np.allclose(second, base_out)
    m.set_adapter("default")
    np.testing.assert_array_equal(m(x).data, first)
    for call in (lambda: m.set_adapter("third"), lambda: m.delete_adapter("third")):
        with pytest.raises(
            ValueError, match=r"unknown adapter 'third'; this model has \['default', 'second'\]"
        ):
            call()
    with pytest.raises(ValueError, match="adapter 'second' already exists"):
        m.add_adapter("second", LoraConfig(target_modules=["up"]))
    m.delete_adapter("default")
    assert m.active_adapter == "second" and list(m.peft_config) == ["second"]
    assert isinstance(m.get_base_model().blocks[0].up, Linear)  # no adapter left there: unwrapped
    np.testing.assert_array_equal(m(x).data, second)


def test_a_failed_add_adapter_leaves_the_model_unchanged() -> None:
    m, _ = _mlp_peft()
    before = list(m.state_dict())
    with pytest.raises(ValueError, match="matched no module"):
        m.add_adapter("bad", LoraConfig(target_modules=["nope"]))
    assert list(m.state_dict()) == before and list(m.peft_config) == ["default"]


def test_generator_seeds_the_adapters() -> None:
    a = get_peft_model(MLP(), LoraConfig(target_modules=["up"]), generator=7).state_dict()
    b = get_peft_model(
        MLP(), LoraConfig(target_modules=["up"]), generator=np.random.default_rng(7)
    ).state_dict()
    c = get_peft_model(MLP(), LoraConfig(target_modules=["up"]), generator=8).state_dict()
    key = "base_model.model.blocks.0.up.lora_A.default.weight"
    np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a[key], c[key])


def test_trainable_parameter_count_and_line(capsys: pytest.CaptureFixture[str]) -> None:
    m = get_peft_model(bert(), LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS"))
    total = sum(p.numel() for p in bert().parameters()) + 3 * 16 + 3  # + the classifier copy
    lora = 2 * 2 * (4 * 16 + 16 * 4)
    assert m.get_nb_trainable_parameters() == (lora + 3 * 16 + 3, total + lora)
    m.print_trainable_parameters()
    t, a = lora + 51, total + lora
    assert (
        capsys.readouterr().out
        == f"trainable params: {t:,d} || all params: {a:,d} || trainable%: {100 * t / a:.4f}\n"
    )


def test_training_mode_propagates_and_warnings_are_quiet() -> None:
    m, _ = _mlp_peft(lora_dropout=0.1)
    m.eval()
    assert not any(mod.training for mod in m.modules())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.merge_adapter()
        m.unmerge_adapter()


def test_attributes_of_the_base_model_are_reachable() -> None:
    m = get_peft_model(bert(), LoraConfig(target_modules=["query"]))
    assert m.config.hidden_size == 16 and m.num_labels == 3
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        _ = m.nope
