"""The `task` switch and the causal_lm section: the shipped SmolLM2 config, and errors that name the key."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest
import yaml

from entrenar.config import ConfigError, RunConfig, load_config, section_keys, validate_config

SHIPPED = Path(str(resources.files("entrenar") / "configs" / "smollm2-shakespeare-qlora.yaml"))


def _error(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(raw)
    return str(info.value)


def test_the_shipped_causal_config_is_the_issue_s_recipe_and_spells_out_every_field() -> None:
    c = load_config(SHIPPED)
    assert c.task == "causal_lm" and c.model.path == "smollm2"
    assert (c.lora.r, c.lora.alpha, c.lora.dropout, c.lora.quantize) == (16, 32.0, 0.05, "gguf")
    assert c.lora.target_modules == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    assert c.optimizer.name == "adamw" and c.schedule.name == "cosine" and c.training.max_grad_norm == 1.0
    assert c.causal_lm.dataset == "shakespeare" and c.causal_lm.max_length == 128
    raw = yaml.safe_load(SHIPPED.read_text(encoding="utf-8"))
    assert set(raw) == set(section_keys()) - {"data"}  # the classification data section is not used
    for section in set(raw):
        if section_keys([section]):
            assert set(raw[section]) == set(section_keys([section])), section


def test_the_classification_default_is_unchanged_by_the_task_switch() -> None:
    c = RunConfig()
    assert c.task == "classification" and c.model.path == "minilm" and c.lora.quantize == "nf4"
    assert validate_config({}) == validate_config({"task": "classification"})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"task": "causal_lm"}, "model.path: task causal_lm needs 'smollm2' or a .gguf file, got 'minilm'"),
        ({"task": "causal_lm", "model": {"path": "x.bin"}}, "got 'x.bin'"),
        ({"model": {"path": "smollm2"}}, "set task: causal_lm"),
        ({"model": {"path": "m.gguf"}}, "set task: causal_lm"),
        (
            {"lora": {"quantize": "gguf"}},
            "lora.quantize: 'gguf' (a GGUF file's packed base) needs task: causal_lm",
        ),
        ({"task": "lm"}, "task: Input should be 'classification' or 'causal_lm'"),
        (
            {"task": "causal_lm", "model": {"path": "smollm2"}, "causal_lm": {"texts": "t/"}},
            "give either causal_lm.dataset ('shakespeare') or causal_lm.texts",
        ),
        (
            {"task": "causal_lm", "model": {"path": "smollm2"}, "causal_lm": {"dataset": None}},
            "exactly one; got dataset=None, texts=None",
        ),
        (
            {"causal_lm": {"max_length": 1}},
            "causal_lm.max_length: Input should be greater than or equal to 2",
        ),
        ({"causal_lm": {"validation_works": 0}}, "causal_lm.validation_works"),
        ({"causal_lm": {"blocks": 3}}, "causal_lm.blocks: unknown key"),
    ],
)
def test_bad_causal_settings_name_the_key(raw: dict, message: str) -> None:
    assert message in _error(raw)


def test_overrides_switch_the_task(tmp_path: Path) -> None:
    c = load_config(SHIPPED, ["lora.quantize=nf4", "causal_lm.dataset=null", f"causal_lm.texts={tmp_path}"])
    assert c.lora.quantize == "nf4" and c.causal_lm.texts == str(tmp_path) and c.causal_lm.dataset is None
    with pytest.raises(ConfigError, match=r"causal_lm\.max_len: unknown key"):
        load_config(SHIPPED, ["causal_lm.max_len=64"])
