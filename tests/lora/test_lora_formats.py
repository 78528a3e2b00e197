"""Adapter files: PEFT and JSON round trips, the key mapping, and every way a file can fail to fit."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lora_models import MLP, bert, bert_batch, perturb, x_batch

import entrenar.lora
from entrenar.io import FormatError, load_safetensors, read_safetensors_header, save_safetensors
from entrenar.lora import LoraConfig, PeftModel, adapter_key_map, checkpoint_key, get_peft_model


def _adapter_state(m: PeftModel) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in m.state_dict().items() if "lora_" in k or "modules_to_save" in k}


def _trained_bert(**cfg: Any) -> PeftModel:
    m = get_peft_model(bert(), LoraConfig(**{"r": 4, "target_modules": ["query", "value"], **cfg}))
    perturb(m)
    return m


@pytest.mark.parametrize("fmt", ["peft", "json"])
@pytest.mark.parametrize(
    "cfg",
    [
        {},
        {"use_dora": True, "lora_alpha": 16},
        {"use_rslora": True, "task_type": "SEQ_CLS", "bias": "all"},
        {
            "target_modules": "all-linear",
            "bias": "lora_only",
            "lora_bias": True,
            "modules_to_save": ["pooler"],
        },
    ],
)
def test_round_trip_gives_identical_tensors_and_outputs(
    tmp_path: Path, fmt: str, cfg: dict[str, Any]
) -> None:
    m = _trained_bert(**cfg)
    ids, mask = bert_batch()
    want = m(ids, mask).data
    m.save_pretrained(tmp_path, format=fmt)
    back = PeftModel.from_pretrained(bert(), tmp_path)
    np.testing.assert_array_equal(back(ids, mask).data, want)
    theirs = _adapter_state(back)
    for k, v in _adapter_state(m).items():
        np.testing.assert_array_equal(theirs[k], v, err_msg=k)
    assert back.peft_config["default"] == LoraConfig.from_dict(
        {**m.peft_config["default"].to_dict(), "inference_mode": True}
    )
    assert not any(p.requires_grad for p in back.parameters()) and not back.training
    trainable = PeftModel.from_pretrained(bert(), tmp_path, is_trainable=True)
    assert any(p.requires_grad for p in trainable.parameters()) and trainable.training


def test_peft_files_hold_pefts_keys_and_no_base_weights(tmp_path: Path) -> None:
    m = _trained_bert(use_dora=True, task_type="SEQ_CLS")
    m.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    tensors, meta = read_safetensors_header(tmp_path / "adapter_model.safetensors")
    assert meta == {"format": "pt"}
    layer = "base_model.model.bert.encoder.layer.1.attention.self.value"
    assert tensors[f"{layer}.lora_A.weight"].shape == (4, 16)
    assert tensors[f"{layer}.lora_B.weight"].shape == (16, 4)
    assert tensors[f"{layer}.lora_magnitude_vector"].shape == (16,)
    assert tensors["base_model.model.classifier.weight"].shape == (3, 16)
    assert not any("base_layer" in k or "original_module" in k or ".default" in k for k in tensors)
    assert len(tensors) == 4 * 3 + 2
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["use_dora"] is True
    assert config["target_modules"] == ["query", "value"] and config["inference_mode"] is True
    assert config["modules_to_save"] == ["classifier", "score"] and config["task_type"] == "SEQ_CLS"


def test_non_default_adapters_go_to_subfolders(tmp_path: Path) -> None:
    m = get_peft_model(MLP(), LoraConfig(target_modules=["up"], init_lora_weights=False))
    m.add_adapter("other", LoraConfig(r=3, target_modules=["down"], init_lora_weights=False))
    m.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").is_file() and (
        tmp_path / "other" / "adapter_config.json"
    ).is_file()
    m.save_pretrained(tmp_path / "js", selected_adapters=["other"], format="json")
    assert sorted(p.relative_to(tmp_path / "js").as_posix() for p in (tmp_path / "js").rglob("*")) == [
        "other",
        "other/adapter.json",
    ]
    fresh = PeftModel.from_pretrained(MLP(), tmp_path)
    fresh.load_adapter(tmp_path / "js" / "other", "other")
    x = x_batch()
    for name in ("default", "other"):
        m.set_adapter(name)
        fresh.set_adapter(name)
        np.testing.assert_array_equal(fresh(x).data, m(x).data)
    with pytest.raises(ValueError, match=r"unknown adapter 'nope'"):
        m.save_pretrained(tmp_path, selected_adapters=["nope"])
    with pytest.raises(ValueError, match="format must be 'peft' or 'json', got 'xml'"):
        m.save_pretrained(tmp_path, format="xml")


def test_checkpoint_key_is_pefts_rule() -> None:
    w = frozenset({"base_model.model.classifier"})
    cases = {
        "base_model.model.a.q.lora_A.default.weight": "base_model.model.a.q.lora_A.weight",
        "base_model.model.a.q.lora_B.default.bias": "base_model.model.a.q.lora_B.bias",
        "base_model.model.a.q.lora_magnitude_vector.default.weight": (
            "base_model.model.a.q.lora_magnitude_vector"
        ),
        "base_model.model.classifier.modules_to_save.default.weight": "base_model.model.classifier.weight",
        "base_model.model.a.q.base_layer.bias": "base_model.model.a.q.base_layer.bias",
        "base_model.model.default.q.bias": "base_model.model.default.q.bias",  # not where PEFT looks for it
    }
    for model_key, ck in cases.items():
        assert checkpoint_key(model_key, "default", w) == ck


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    name=st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True),
    bias=st.sampled_from(["none", "all", "lora_only"]),
)
def test_key_map_inverts_for_any_adapter_name(
    tmp_path_factory: pytest.TempPathFactory, name: str, bias: str
) -> None:
    """Whatever the adapter is called (even a module's name): distinct checkpoint keys without the adapter
    name, and a save under one name loads back under another with identical tensors."""
    cfg = LoraConfig(target_modules=["up", "down"], use_dora=True, bias=bias, modules_to_save=["out"])
    m = get_peft_model(MLP(), cfg, name)
    perturb(m)
    key_map = adapter_key_map(m, name, m.peft_config[name])
    assert len(set(key_map.values())) == len(key_map)
    for model_key, ck in key_map.items():
        for part in ("lora_A", "lora_B"):
            if f".{part}.{name}." in model_key:
                assert ck == model_key.replace(f".{part}.{name}.", f".{part}.")
        if ".lora_magnitude_vector." in model_key:
            assert ck == model_key.replace(f".lora_magnitude_vector.{name}.weight", ".lora_magnitude_vector")
    assert (
        sum(".lora_A." in k for k in key_map) == 4 and "base_model.model.heads.out.weight" in key_map.values()
    )
    d = tmp_path_factory.mktemp("a")
    m.save_pretrained(d, selected_adapters=[name])
    back = PeftModel.from_pretrained(MLP(), d / name if name != "default" else d, adapter_name="x")
    np.testing.assert_array_equal(back(x_batch()).data, m(x_batch()).data)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=12, max_size=12))
def test_json_round_trips_float32_exactly(
    tmp_path_factory: pytest.TempPathFactory, values: list[float]
) -> None:
    m = get_peft_model(MLP(), LoraConfig(r=1, target_modules=["blocks.0.up"]))
    b = m.get_base_model().blocks[0].up.lora_B["default"].weight
    b.data[:] = np.asarray(values, dtype=np.float32).reshape(12, 1)
    d = tmp_path_factory.mktemp("js")
    m.save_pretrained(d, format="json")
    back = PeftModel.from_pretrained(MLP(), d)
    got = back.get_base_model().blocks[0].up.lora_B["default"].weight.data
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.uint32), b.data.view(np.uint32))  # bit for bit, -0.0 included


def _saved_mlp(tmp_path: Path, **cfg: Any) -> Path:
    m = get_peft_model(
        MLP(), LoraConfig(**{"r": 2, "target_modules": ["up"], "init_lora_weights": False, **cfg})
    )
    m.save_pretrained(tmp_path)
    return tmp_path / "adapter_model.safetensors"


def test_shape_mismatch_names_the_key_and_both_shapes(tmp_path: Path) -> None:
    _saved_mlp(tmp_path)
    wider = MLP(d=8)
    before = list(wider.state_dict())
    msg = re.escape(
        "base_model.model.blocks.0.up.lora_A.weight: the file has shape (2, 6), the model expects (2, 8)"
    )
    with pytest.raises(ValueError, match=msg):
        PeftModel.from_pretrained(wider, tmp_path)
    assert list(wider.state_dict()) == before  # the failed load left the model as it was


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    path = _saved_mlp(tmp_path)
    tensors = load_safetensors(path)
    gone = "base_model.model.blocks.1.up.lora_B.weight"
    save_safetensors(path, {k: v for k, v in tensors.items() if k != gone}, {"format": "pt"})
    with pytest.raises(KeyError, match=f"missing keys: {re.escape(gone)}"):
        PeftModel.from_pretrained(MLP(), tmp_path)
    save_safetensors(
        path, {**tensors, "base_model.model.blocks.1.up.lora_C.weight": tensors[gone]}, {"format": "pt"}
    )
    with pytest.raises(KeyError, match=r"unexpected keys: base_model\.model\.blocks\.1\.up\.lora_C\.weight"):
        PeftModel.from_pretrained(MLP(), tmp_path)
    m = get_peft_model(MLP(), LoraConfig(target_modules=["down"]))
    with pytest.raises(KeyError, match="unexpected keys"):
        m.load_adapter(tmp_path, "broken")
    assert list(m.peft_config) == ["default"] and not any(".broken." in k for k in m.state_dict())


def test_truncated_or_corrupt_files_give_format_errors_naming_the_file(tmp_path: Path) -> None:
    path = _saved_mlp(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 7])
    with pytest.raises(FormatError, match=re.escape(str(path))):
        PeftModel.from_pretrained(MLP(), tmp_path)
    path.write_bytes(b"\x00" * 3)
    with pytest.raises(FormatError, match=re.escape(str(path))):
        PeftModel.from_pretrained(MLP(), tmp_path)
    config = tmp_path / "adapter_config.json"
    config.write_text("{not json")
    with pytest.raises(FormatError, match=re.escape(str(config)) + ".*not valid UTF-8 JSON"):
        PeftModel.from_pretrained(MLP(), tmp_path)
    config.write_text(json.dumps({"peft_type": "LORA", "r": 0, "target_modules": ["up"]}))
    with pytest.raises(FormatError, match="invalid adapter config: LoraConfig: r must be a positive int"):
        PeftModel.from_pretrained(MLP(), tmp_path)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.update(format="other"), '"format": "entrenar-lora"'),
        (lambda d: d.update(version=2), "unsupported version 2"),
        (lambda d: d["tensors"][next(iter(d["tensors"]))].update(dtype="int8"), "dtype 'int8' is not one of"),
        (
            lambda d: d["tensors"][next(iter(d["tensors"]))]["data"].pop(),
            "data must be a flat list of 12 numbers, got 11",
        ),
        (
            lambda d: d["tensors"][next(iter(d["tensors"]))].update(shape=[-1]),
            "shape must be a list of non-negative",
        ),
        (lambda d: d["tensors"][next(iter(d["tensors"]))]["data"].__setitem__(0, "x"), "finite numbers only"),
    ],
)
def test_malformed_json_adapter(tmp_path: Path, edit: Any, match: str) -> None:
    m = get_peft_model(MLP(), LoraConfig(r=2, target_modules=["up"]))
    m.save_pretrained(tmp_path, format="json")
    path = tmp_path / "adapter.json"
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))
    with pytest.raises(FormatError, match=re.escape(str(path)) + ".*" + match):
        PeftModel.from_pretrained(MLP(), tmp_path)


def test_json_refuses_non_finite_values(tmp_path: Path) -> None:
    m = get_peft_model(MLP(), LoraConfig(r=2, target_modules=["up"]))
    m.get_base_model().blocks[0].up.lora_A["default"].weight.data[0, 0] = np.inf
    with pytest.raises(ValueError, match=r"lora_A.weight holds NaN or infinity"):
        m.save_pretrained(tmp_path, format="json")


def test_no_adapter_in_directory(tmp_path: Path) -> None:
    with pytest.raises(
        FileNotFoundError, match=r"no adapter found: expected adapter_config.json and adapter_model"
    ):
        PeftModel.from_pretrained(MLP(), tmp_path)


def test_a_peft_config_without_its_weights_falls_back_to_the_json_format(tmp_path: Path) -> None:
    """PEFT's format needs both of its files; with only adapter_config.json (say, a copy that stopped
    half-way) next to a complete adapter.json, the JSON adapter loads. Without it, nothing is found."""
    m = get_peft_model(MLP(), LoraConfig(r=2, target_modules=["up"], init_lora_weights=False))
    m.save_pretrained(tmp_path, format="json")
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    loaded = PeftModel.from_pretrained(MLP(), tmp_path)
    a = m.get_base_model().blocks[0].up.lora_A["default"].weight.data
    np.testing.assert_array_equal(loaded.get_base_model().blocks[0].up.lora_A["default"].weight.data, a)
    (tmp_path / "adapter.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"no adapter found"):
        PeftModel.from_pretrained(MLP(), tmp_path)


def test_nothing_is_pickled() -> None:
    for path in Path(entrenar.lora.__file__).parent.glob("*.py"):
        text = path.read_text()
        assert "pickle" not in text.replace("allow_pickle=False", ""), path
        assert "np.load(" not in text and "np.save(" not in text, path
