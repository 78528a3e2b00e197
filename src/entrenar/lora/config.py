"""LoraConfig: PEFT's LoRA configuration (field names, defaults, JSON form), validated on construction.

The adapter scales its update by s = lora_alpha / r (rsLoRA: lora_alpha / sqrt(r)); per-module ranks
and alphas come from `rank_pattern` / `alpha_pattern`, whose keys are regular expressions matched
against the end of the dotted module name, as PEFT's `get_pattern_key`:
re.match(rf"(.*\\.)?({key})$", name).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TASK_TYPES", "LoraConfig"]

TASK_TYPES = ("SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION")
_BIAS_MODES = ("none", "all", "lora_only")
ALL_LINEAR = "all-linear"

# PEFT features that change what an adapter computes and that entrenar does not implement: a file that
# turns one of them on is refused rather than silently loaded as something else. Value: the "off" values.
_UNSUPPORTED_PEFT_FIELDS: dict[str, tuple[Any, ...]] = {
    "use_qalora": (False, None),
    "layer_replication": (None, []),
    "megatron_config": (None,),
    "loftq_config": (None, {}),
    "eva_config": (None,),
    "corda_config": (None,),
    "lora_ga_config": (None,),
    "velora_config": (None,),
    "kasa_config": (None,),
    "monteclora_config": (None,),
    "arrow_config": (None,),
    "use_bdlora": (None, False),
    "alora_invocation_tokens": (None,),
    "target_parameters": (None, []),
    "trainable_token_indices": (None,),
    "ensure_weight_tying": (False, None),
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _str_list(name: str, value: Any, allow_str: bool) -> list[str] | str | None:
    """None, a regex string (if allowed), or a list of strings (a set or tuple is taken as a list)."""
    if value is None:
        return None
    if isinstance(value, str):
        if allow_str:
            return value
        return [value]
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) for v in value):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    form = "a list of module-name suffixes or a regex string" if allow_str else "a list of strings"
    raise ValueError(f"LoraConfig: {name} must be {form}, got {value!r}")


@dataclass
class LoraConfig:
    """PEFT's `LoraConfig` fields that entrenar implements, with PEFT's defaults.

    target_modules: a list of module-name suffixes (a name matches when it equals one or ends with
    "." + one), a regex string matched with re.fullmatch on the dotted name, or "all-linear" (every
    Linear layer except the model's output layer). exclude_modules: the same forms, names to skip.
    bias: "none" (no bias trained), "all" (every bias in the model trained and saved) or "lora_only"
    (the biases of the adapted layers). init_lora_weights: True (A ~ kaiming-uniform, i.e.
    U(-1/sqrt(in), 1/sqrt(in)), B = 0, so the adapter starts as a no-op), "gaussian" (A ~ N(0, 1/r^2),
    B = 0) or False (A and B both keep nn.Linear's default init, so the adapter is not a no-op).
    modules_to_save: modules (name suffixes) trained in full and saved with the adapter; task_type
    "SEQ_CLS" adds the classifier head ("classifier", "score") as PEFT does.
    """

    r: int = 8
    target_modules: list[str] | str | None = None
    exclude_modules: list[str] | str | None = None
    lora_alpha: float = 8
    lora_dropout: float = 0.0
    fan_in_fan_out: bool = False
    bias: str = "none"
    use_rslora: bool = False
    modules_to_save: list[str] | None = None
    init_lora_weights: bool | str = True
    layers_to_transform: list[int] | int | None = None
    layers_pattern: list[str] | str | None = None
    rank_pattern: dict[str, int] = field(default_factory=dict)
    alpha_pattern: dict[str, float] = field(default_factory=dict)
    use_dora: bool = False
    lora_bias: bool = False
    task_type: str | None = None
    base_model_name_or_path: str | None = None
    revision: str | None = None
    inference_mode: bool = False
    peft_type: str = "LORA"

    def __post_init__(self) -> None:
        if not _is_int(self.r) or self.r <= 0:
            raise ValueError(f"LoraConfig: r must be a positive int, got {self.r!r}")
        if not _is_real(self.lora_alpha) or self.lora_alpha <= 0:
            raise ValueError(f"LoraConfig: lora_alpha must be a positive number, got {self.lora_alpha!r}")
        if not _is_real(self.lora_dropout) or not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(
                f"LoraConfig: lora_dropout must be a number in [0, 1), got {self.lora_dropout!r}"
            )
        if self.bias not in _BIAS_MODES:
            raise ValueError(f"LoraConfig: bias must be one of {list(_BIAS_MODES)}, got {self.bias!r}")
        if not (
            self.init_lora_weights is True
            or self.init_lora_weights is False
            or self.init_lora_weights == "gaussian"
        ):
            raise ValueError(
                "LoraConfig: init_lora_weights must be True, False or 'gaussian', "
                f"got {self.init_lora_weights!r}"
            )
        for flag in ("fan_in_fan_out", "use_rslora", "use_dora", "lora_bias", "inference_mode"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"LoraConfig: {flag} must be a bool, got {getattr(self, flag)!r}")
        if self.fan_in_fan_out:
            raise ValueError(
                "LoraConfig: fan_in_fan_out=True is for GPT-2's Conv1D layers (weight stored (in, out)); "
                "entrenar's Linear stores weight (out, in), so it must be False"
            )
        if self.peft_type != "LORA":
            raise ValueError(f"LoraConfig: peft_type must be 'LORA', got {self.peft_type!r}")
        if self.task_type is not None and self.task_type not in TASK_TYPES:
            raise ValueError(
                f"LoraConfig: task_type must be None or one of {list(TASK_TYPES)}, got {self.task_type!r}"
            )
        self.target_modules = _str_list("target_modules", self.target_modules, allow_str=True)
        self.exclude_modules = _str_list("exclude_modules", self.exclude_modules, allow_str=True)
        mts = _str_list("modules_to_save", self.modules_to_save, allow_str=False)
        self.modules_to_save = None if mts is None else list(mts)
        for name in ("target_modules", "exclude_modules"):
            value = getattr(self, name)
            if isinstance(value, str) and value != ALL_LINEAR:
                _check_regex(name, value)
        self._check_layers()
        self._check_patterns()
        if self.lora_bias and self.use_dora:
            raise ValueError("LoraConfig: lora_bias=True is not supported with use_dora=True (as in PEFT)")
        for key in ("base_model_name_or_path", "revision"):
            v = getattr(self, key)
            if v is not None and not isinstance(v, str):
                raise ValueError(f"LoraConfig: {key} must be a string or None, got {v!r}")

    def _check_layers(self) -> None:
        lt = self.layers_to_transform
        if lt is not None:
            if isinstance(lt, (list, tuple)) and all(_is_int(i) and i >= 0 for i in lt):
                self.layers_to_transform = list(lt)
            elif not (isinstance(lt, int) and not isinstance(lt, bool) and lt >= 0):
                raise ValueError(
                    "LoraConfig: layers_to_transform must be a non-negative int or a list of them, "
                    f"got {lt!r}"
                )
            if isinstance(self.target_modules, str):
                raise ValueError(
                    "LoraConfig: layers_to_transform cannot be used when target_modules is a str"
                )
        lp = self.layers_pattern
        if lp is not None:
            self.layers_pattern = _str_list("layers_pattern", lp, allow_str=True)
            if isinstance(self.target_modules, str):
                raise ValueError("LoraConfig: layers_pattern cannot be used when target_modules is a str")
            if lt is None:
                raise ValueError("LoraConfig: when layers_pattern is given, layers_to_transform must be too")

    def _check_patterns(self) -> None:
        for name, positive_int in (("rank_pattern", True), ("alpha_pattern", False)):
            pattern = getattr(self, name)
            if pattern is None:
                setattr(self, name, {})
                continue
            if not isinstance(pattern, Mapping):
                raise ValueError(f"LoraConfig: {name} must be a dict of regex -> value, got {pattern!r}")
            for key, v in pattern.items():
                if not isinstance(key, str):
                    raise ValueError(f"LoraConfig: {name} keys must be strings, got {key!r}")
                _check_regex(f"{name} key", key)
                ok = (_is_int(v) and v > 0) if positive_int else (_is_real(v) and v > 0)
                if not ok:
                    want = "a positive int" if positive_int else "a positive number"
                    raise ValueError(f"LoraConfig: {name}[{key!r}] must be {want}, got {v!r}")
            setattr(self, name, dict(pattern))

    # ------------------------------------------------------------------------------ per module
    def rank_and_alpha(self, module_name: str) -> tuple[int, float]:
        """(r, lora_alpha) of one module: from its first matching rank_pattern / alpha_pattern key."""
        return (
            int(self.rank_pattern.get(_pattern_key(self.rank_pattern, module_name), self.r)),
            self.alpha_pattern.get(_pattern_key(self.alpha_pattern, module_name), self.lora_alpha),
        )

    def scaling(self, module_name: str) -> float:
        """s = alpha / r, or alpha / sqrt(r) with use_rslora."""
        r, alpha = self.rank_and_alpha(module_name)
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r

    # ------------------------------------------------------------------------------ JSON form
    def to_dict(self) -> dict[str, Any]:
        """The fields as PEFT writes them to adapter_config.json (target_modules a sorted list or a str)."""
        d = dataclasses.asdict(self)
        for key in ("target_modules", "exclude_modules"):
            if isinstance(d[key], list):
                d[key] = sorted(set(d[key]))
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LoraConfig:
        """A config from an adapter_config.json dict; unknown keys are ignored, as PEFT does.

        peft_type must be "LORA". A PEFT feature that changes what the adapter computes and that
        entrenar does not implement (e.g. use_qalora, layer_replication) is an error naming the key.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"LoraConfig.from_dict: expected a dict, got {type(d).__name__}")
        if d.get("peft_type") != "LORA":
            raise ValueError(f"LoraConfig.from_dict: peft_type must be 'LORA', got {d.get('peft_type')!r}")
        for key, off in _UNSUPPORTED_PEFT_FIELDS.items():
            value = d.get(key)
            if value is not None and not any(type(value) is type(v) and value == v for v in off):
                raise ValueError(
                    f"LoraConfig.from_dict: {key}={value!r} selects a PEFT feature "
                    "entrenar does not implement"
                )
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def _check_regex(name: str, pattern: str) -> None:
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"LoraConfig: {name} {pattern!r} is not a valid regular expression: {e}") from None


def _pattern_key(pattern_keys: Mapping[str, Any], name: str) -> str:
    """The first key (a regex) matching the end of `name` at a dot boundary, else `name` (PEFT's rule)."""
    for key in pattern_keys:
        if re.match(rf"(.*\.)?({key})$", name):
            return key
    return name
