"""LoraConfig: PEFT's defaults, validation that names the field, the JSON dict form, per-module rank."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from entrenar.lora import LoraConfig


def test_defaults_are_pefts() -> None:
    c = LoraConfig(target_modules=["q"])
    assert (c.r, c.lora_alpha, c.lora_dropout, c.bias, c.init_lora_weights) == (8, 8, 0.0, "none", True)
    assert (c.use_rslora, c.use_dora, c.fan_in_fan_out, c.lora_bias) == (False, False, False, False)
    assert c.modules_to_save is None and c.task_type is None and c.base_model_name_or_path is None
    assert c.rank_pattern == {} and c.alpha_pattern == {} and c.peft_type == "LORA"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"r": 0}, "r must be a positive int, got 0"),
        ({"r": -3}, "r must be a positive int"),
        ({"r": 2.0}, "r must be a positive int"),
        ({"r": True}, "r must be a positive int"),
        ({"lora_alpha": 0}, "lora_alpha must be a positive number, got 0"),
        ({"lora_alpha": -1.5}, "lora_alpha must be a positive number"),
        ({"lora_alpha": float("nan")}, "lora_alpha must be a positive number"),
        ({"lora_dropout": 1.0}, r"lora_dropout must be a number in \[0, 1\), got 1.0"),
        ({"lora_dropout": -0.1}, r"lora_dropout must be a number in \[0, 1\)"),
        ({"bias": "some"}, r"bias must be one of \['none', 'all', 'lora_only'\], got 'some'"),
        ({"init_lora_weights": "pissa"}, "init_lora_weights must be True, False or 'gaussian'"),
        ({"init_lora_weights": 1}, "init_lora_weights must be True, False or 'gaussian'"),
        ({"fan_in_fan_out": True}, "fan_in_fan_out=True is for GPT-2's Conv1D"),
        ({"task_type": "CLS"}, "task_type must be None or one of"),
        ({"target_modules": 3}, "target_modules must be a list of module-name suffixes or a regex string"),
        ({"target_modules": "(("}, "is not a valid regular expression"),
        ({"rank_pattern": {"q": 0}}, r"rank_pattern\['q'\] must be a positive int"),
        ({"alpha_pattern": {"q": -1}}, r"alpha_pattern\['q'\] must be a positive number"),
        ({"use_dora": True, "lora_bias": True}, "lora_bias=True is not supported with use_dora=True"),
        ({"target_modules": ".*q", "layers_to_transform": [0]}, "layers_to_transform cannot be used"),
        ({"layers_pattern": "layer"}, "layers_to_transform must be too"),
        ({"layers_to_transform": [-1]}, "layers_to_transform must be a non-negative int"),
        ({"use_rslora": 1}, "use_rslora must be a bool"),
    ],
)
def test_bad_values_name_the_field(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LoraConfig(**{"target_modules": ["q"], **kwargs})


def test_scaling_and_patterns() -> None:
    c = LoraConfig(
        r=8, lora_alpha=16, target_modules=["q"], rank_pattern={"layer.1.q": 4}, alpha_pattern={"k": 2}
    )
    assert c.scaling("enc.layer.0.q") == 2.0
    assert c.rank_and_alpha("enc.layer.1.q") == (4, 16)
    assert c.scaling("enc.layer.1.q") == 4.0
    assert c.rank_and_alpha("enc.k") == (8, 2)
    assert c.rank_and_alpha("enc.xk") == (8, 16)  # a pattern matches at a dot boundary only
    rs = LoraConfig(r=16, lora_alpha=8, use_rslora=True, target_modules=["q"])
    assert rs.scaling("q") == pytest.approx(8 / math.sqrt(16))


def test_target_modules_forms() -> None:
    assert LoraConfig(target_modules={"v", "q"}).target_modules == ["q", "v"]
    assert LoraConfig(target_modules=".*\\.q").target_modules == ".*\\.q"
    assert LoraConfig(target_modules="all-linear").target_modules == "all-linear"
    assert LoraConfig(modules_to_save="classifier").modules_to_save == ["classifier"]


def test_from_dict_ignores_unknown_keys_and_refuses_unsupported_features() -> None:
    d = LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS").to_dict()
    d.update(
        {
            "peft_version": "0.21.2",
            "auto_mapping": None,
            "megatron_core": "megatron.core",
            "use_qalora": False,
        }
    )
    assert LoraConfig.from_dict(d) == LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS")
    with pytest.raises(
        ValueError, match="use_qalora=True selects a PEFT feature entrenar does not implement"
    ):
        LoraConfig.from_dict({**d, "use_qalora": True})
    with pytest.raises(ValueError, match="layer_replication"):
        LoraConfig.from_dict({**d, "layer_replication": [[0, 2]]})
    with pytest.raises(ValueError, match="peft_type must be 'LORA', got 'IA3'"):
        LoraConfig.from_dict({**d, "peft_type": "IA3"})
    with pytest.raises(ValueError, match="peft_type must be 'LORA', got None"):
        LoraConfig.from_dict({k: v for k, v in d.items() if k != "peft_type"})


@given(
    r=st.integers(1, 64),
    alpha=st.one_of(st.integers(1, 64), st.floats(0.01, 100)),
    dropout=st.floats(0.0, 0.99),
    bias=st.sampled_from(["none", "all", "lora_only"]),
    targets=st.one_of(st.lists(st.sampled_from(["q", "k", "v", "dense"]), min_size=1), st.just("all-linear")),
    flags=st.tuples(st.booleans(), st.booleans()),
    init=st.sampled_from([True, False, "gaussian"]),
)
def test_dict_round_trip(
    r: int, alpha: float, dropout: float, bias: str, targets: Any, flags: tuple[bool, bool], init: Any
) -> None:
    c = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        bias=bias,
        target_modules=targets,
        use_rslora=flags[0],
        use_dora=flags[1],
        init_lora_weights=init,
        rank_pattern={"q": r + 1},
    )
    back = LoraConfig.from_dict(c.to_dict())
    assert back.to_dict() == c.to_dict()
    if isinstance(targets, list):
        assert back.target_modules == sorted(set(targets))
