"""Run configs: the shipped default, YAML reading, dotted overrides, and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from entrenar.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    config_diff,
    default_config_path,
    default_config_text,
    dump_config,
    load_config,
    parse_override,
    section_keys,
    validate_config,
)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _error(raw: dict, source: str = "config") -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(raw, source)
    return str(info.value)


# ----------------------------------------------------------------------------------- the default
def test_the_shipped_file_spells_out_every_default() -> None:
    raw = yaml.safe_load(default_config_text())
    assert load_config(None) == RunConfig()
    # every field of every section is written in the file (so `entrenar init` documents them all)
    assert raw["task"] == "classification"
    for section in section_keys():
        if section_keys([section]):  # a section, not a top-level value such as `task`
            assert set(raw[section]) == set(section_keys([section])), section
    assert set(raw["training"]["probe"]) == set(section_keys(["training", "probe"]))
    assert default_config_path().name == "minilm-sentiment-qlora.yaml"


def test_the_default_run_is_the_issue_s_qlora_recipe() -> None:
    c = RunConfig()
    assert c.model.path == "minilm" and c.model.pooling == "mean"
    assert c.data.dataset == "movie_reviews" and c.data.split == [0.8, 0.1, 0.1] and c.data.split_seed == 0
    assert c.data.max_length == 64
    assert (c.lora.r, c.lora.quantize, c.lora.double_quant) == (8, "nf4", True)
    assert c.lora.target_modules == ["query", "key", "value", "attention.output.dense"]
    assert c.output.name == "minilm-sentiment-qlora"


def test_an_empty_file_is_the_default(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, "")) == RunConfig()
    assert load_config(_write(tmp_path, "# only a comment\n")) == RunConfig()


@settings(max_examples=40, deadline=None)
@given(
    r=st.integers(1, 512),
    lr=st.floats(1e-6, 1.0),
    epochs=st.floats(0.01, 50),
    targets=st.lists(st.sampled_from(["query", "key", "value", "dense"]), min_size=1, max_size=4),
    quantize=st.sampled_from(["nf4", "int4", None]),
    name=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,20}", fullmatch=True),
)
def test_dump_then_load_gives_the_same_config(
    r: int, lr: float, epochs: float, targets: list[str], quantize: str | None, name: str
) -> None:
    config = validate_config(
        {
            "lora": {"r": r, "target_modules": targets, "quantize": quantize},
            "optimizer": {"lr": lr},
            "training": {"epochs": epochs},
            "output": {"name": name},
        }
    )
    assert validate_config(yaml.safe_load(dump_config(config))) == config


# ----------------------------------------------------------------------------------- errors
def test_an_unknown_key_names_its_dotted_path_and_the_valid_keys() -> None:
    message = _error({"lora": {"rank": 4}})
    assert "lora.rank: unknown key" in message
    assert (
        "valid keys in lora: r, alpha, dropout, target_modules, quantize, double_quant, block_size" in message
    )


def test_an_unknown_section_suggests_the_close_one() -> None:
    message = _error({"trainng": {"epochs": 1}})
    assert "trainng: unknown section (did you mean 'training'?)" in message
    assert "model, data, lora, optimizer, schedule, training, output" in message


def test_a_nested_unknown_key_lists_its_own_section() -> None:
    message = _error({"training": {"probe": {"step": 3}}})
    assert "training.probe.step: unknown key (did you mean 'training.probe.steps'?)" in message
    assert "valid keys in training.probe: enabled, steps, lr, l2, init_head, max_train" in message


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"lora": {"r": "eight"}}, "lora.r: Input should be a valid integer"),
        ({"lora": {"r": 0}}, "lora.r: Input should be greater than or equal to 1; got 0"),
        ({"lora": {"dropout": 1.5}}, "lora.dropout: Input should be less than 1"),
        ({"lora": {"quantize": "fp8"}}, "lora.quantize: Input should be 'nf4', 'int4' or 'gguf'; got 'fp8'"),
        ({"lora": {"double_quant": "sure"}}, "lora.double_quant: Input should be a valid boolean"),
        ({"lora": {"target_modules": "query"}}, "lora.target_modules: Input should be a valid list"),
        ({"optimizer": {"lr": -1}}, "optimizer.lr: Input should be greater than 0"),
        ({"optimizer": {"betas": [0.9, 1.5]}}, "optimizer.betas must be two numbers in [0, 1)"),
        ({"data": {"split": [0.5, 0.5]}}, "data.split: List should have at least 3 items"),
        ({"data": {"split": [0.5, 0.6, -0.1]}}, "data.split must be three fractions"),
        ({"data": {"train": "x.csv"}}, "give either data.dataset or data.train"),
        ({"data": {"dataset": None}}, "give data.dataset ('movie_reviews') or data.train"),
        ({"training": {"epochs": None}}, "give training.epochs or training.max_steps"),
        ({"output": {"name": "../escape"}}, "output.name: String should match pattern"),
        ({"model": 3}, "model: expected a section (a mapping with keys path, pooling"),
        ({"model": {"pooling": "max"}}, "model.pooling: Input should be 'mean', 'cls' or 'pooler'"),
    ],
)
def test_a_wrong_value_names_the_key_and_what_is_expected(raw: dict, expected: str) -> None:
    assert expected in _error(raw)


def test_every_problem_is_listed_at_once() -> None:
    message = _error({"lora": {"r": -1, "rnk": 2}, "optimizer": {"lr": "fast"}}, source="config x.yaml")
    assert message.startswith("config x.yaml has 3 problem(s):")
    assert "lora.r:" in message and "lora.rnk: unknown key" in message and "optimizer.lr:" in message


def test_yaml_syntax_errors_give_line_and_column(tmp_path: Path) -> None:
    path = _write(tmp_path, "lora:\n  r: 8\n   alpha: [1\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line 3 column \d+"):
        load_config(path)


def test_a_file_that_is_not_a_mapping_or_not_there(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(_write(tmp_path, "- a\n- list\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="is a folder"):
        load_config(tmp_path)


# ----------------------------------------------------------------------------------- overrides
@pytest.mark.parametrize(
    ("text", "path", "value"),
    [
        ("lora.r=16", ["lora", "r"], 16),
        ("optimizer.lr=1e-3", ["optimizer", "lr"], "1e-3"),  # YAML 1.1 reads it as a string ...
        ("optimizer.lr=1.0e-3", ["optimizer", "lr"], 1.0e-3),
        ("lora.quantize=null", ["lora", "quantize"], None),
        ("lora.quantize=", ["lora", "quantize"], None),
        ("model.path=some/dir", ["model", "path"], "some/dir"),
        ("lora.target_modules=[query, value]", ["lora", "target_modules"], ["query", "value"]),
        ("training.progress=false", ["training", "progress"], False),
        ("output.name=a=b", ["output", "name"], "a=b"),
    ],
)
def test_override_values_are_read_as_yaml(text: str, path: list[str], value: object) -> None:
    assert parse_override(text) == (path, value)


def test_a_scientific_lr_given_as_text_still_validates_as_a_number() -> None:
    # ... and the schema turns "1e-3" into 0.001, so `optimizer.lr=1e-3` works as people expect
    assert load_config(None, ["optimizer.lr=1e-3"]).optimizer.lr == pytest.approx(1e-3)


def test_overrides_apply_in_order_and_create_sections() -> None:
    raw = apply_overrides({"lora": {"r": 4}}, ["lora.r=8", "lora.r=16", "training.early_stopping.patience=5"])
    assert raw == {"lora": {"r": 16}, "training": {"early_stopping": {"patience": 5}}}
    config = validate_config(raw)
    assert config.training.early_stopping is not None and config.training.early_stopping.patience == 5
    assert config_diff(RunConfig(), config) == ["lora.r", "training.early_stopping"]  # null -> a section


def test_overrides_do_not_change_the_input() -> None:
    raw = {"lora": {"r": 4}}
    apply_overrides(raw, ["lora.r=8"])
    assert raw == {"lora": {"r": 4}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("lora.alpah=4", "override 'lora.alpah=4': lora.alpah: unknown key (did you mean 'lora.alpha'?)"),
        ("lora.r.x=1", "override 'lora.r.x=1': lora.r is a value, not a section"),
        ("loar.r=1", "loar: unknown section (did you mean 'lora'?)"),
        ("lora.r", "expected KEY=VALUE with a dotted key"),
        ("=3", "expected KEY=VALUE"),
        ("lora..r=3", "expected KEY=VALUE"),
        ("lora.r=[1", "the value is not valid YAML"),
    ],
)
def test_a_bad_override_is_an_error_naming_it(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [text])
    assert expected in str(info.value)


def test_an_override_into_a_value_that_is_not_a_section() -> None:
    with pytest.raises(ConfigError, match="training is 3 in the config, not a section"):
        apply_overrides({"training": 3}, ["training.epochs=1"])


def test_an_override_with_a_wrong_type_names_the_override() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["lora.r=many"])
    assert "with overrides lora.r=many" in str(
        info.value
    ) and "lora.r: Input should be a valid integer" in str(info.value)
