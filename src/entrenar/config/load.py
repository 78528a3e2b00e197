"""Reading a run config: YAML file -> dotted `key=value` overrides -> validated RunConfig.

    cfg = load_config("my.yaml", ["lora.r=16", "optimizer.lr=1e-3", "training.probe.enabled=false"])
    cfg = load_config(None)                       # the shipped default (entrenar/configs/...)

An override's value is parsed as YAML (`16` an int, `1e-3` a float, `[query, value]` a list,
`null` None, `true` a bool, anything else a string) and set at its dotted path, creating sections
on the way. Every problem is a ConfigError listing each one on its own line with its dotted key:
an unknown key (with the valid keys of its section, and a close match when there is one), a wrong
type or an out-of-range value (with what was expected and what was given), a YAML syntax error
(with line and column).
"""

from __future__ import annotations

import difflib
import os
import typing
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]
from pydantic import BaseModel, ValidationError

from entrenar.config.schema import RunConfig

__all__ = [
    "DEFAULT_CONFIG",
    "ConfigError",
    "apply_overrides",
    "config_diff",
    "default_config_path",
    "default_config_text",
    "dump_config",
    "load_config",
    "parse_override",
    "read_yaml",
    "section_keys",
    "validate_config",
]

DEFAULT_CONFIG = "minilm-sentiment-qlora.yaml"


class ConfigError(ValueError):
    """A config that cannot be used; the message names each offending key (dotted) and what is valid."""


def default_config_path() -> Path:
    """The shipped default config file (inside the installed package)."""
    return Path(str(resources.files("entrenar") / "configs" / DEFAULT_CONFIG))


def default_config_text() -> str:
    """The shipped default config, comments included."""
    return default_config_path().read_text(encoding="utf-8")


# ----------------------------------------------------------------------------------- the schema
def _model_class(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel class in an annotation (X, or X | None), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_class(arg)
        if found is not None:
            return found
    return None


def _section_class(path: Sequence[str]) -> type[BaseModel] | None:
    """The section class at dotted `path` ([] for the top level), or None if `path` is not a section."""
    cls: type[BaseModel] | None = RunConfig
    for part in path:
        if cls is None or part not in cls.model_fields:
            return None
        cls = _model_class(cls.model_fields[part].annotation)
    return cls


def section_keys(path: Sequence[str] = ()) -> list[str]:
    """The valid keys of the section at `path` (() for the section names); [] if it is no section."""
    cls = _section_class(path)
    return [] if cls is None else list(cls.model_fields)


def _where(path: Sequence[str]) -> str:
    return ".".join(path) if path else "the top level"


def _unknown_key_message(path: Sequence[str]) -> str:
    *parent, key = path
    valid = section_keys(parent)
    what = "section" if not parent else "key"
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean {'.'.join([*parent, close[0]])!r}?)" if close else ""
    return f"{'.'.join(path)}: unknown {what}{hint}; valid {what}s in {_where(parent)}: {', '.join(valid)}"


# ----------------------------------------------------------------------------------- YAML
MAX_CONFIG_VALUES = 100_000  # bounds the work of a file whose aliases expand exponentially


def _too_large(raw: Any, limit: int) -> bool:
    """Whether the tree holds more than `limit` values counting every alias's copy; stops counting
    at the limit, so a "billion laughs" file costs `limit` steps, not billions."""
    stack, seen = [raw], 0
    while stack:
        node = stack.pop()
        seen += 1
        if seen > limit:
            return True
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return False


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping in a YAML file (an empty file is {}); ConfigError naming the file otherwise."""
    p = Path(path)
    if not p.is_file():
        what = "is a folder, not a file" if p.is_dir() else "does not exist"
        raise ConfigError(f"config {p} {what}: expected a YAML file (entrenar init writes a starter one)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config {p}: not UTF-8 text (byte {exc.start})") from None
    try:
        raw = yaml.safe_load(text)  # safe_load: plain data only, no !!python/... constructors
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"config {p}: not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"config {p}: nested too deeply to read") from None
    if _too_large(raw, MAX_CONFIG_VALUES):
        raise ConfigError(
            f"config {p}: more than {MAX_CONFIG_VALUES} values once its aliases (*name) are expanded; "
            "a run config holds a few dozen"
        )
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config {p}: expected a mapping of sections ({', '.join(section_keys())}), "
            f"got a {type(raw).__name__}"
        )
    return raw


# ----------------------------------------------------------------------------------- overrides
def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b.c=value' -> (['a', 'b', 'c'], the YAML value of 'value'); ConfigError naming the text."""
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(p.strip() for p in parts):
        raise ConfigError(
            f"override {text!r}: expected KEY=VALUE with a dotted key, e.g. lora.r=16 or optimizer.lr=1e-3"
        )
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"override {text!r}: the value is not valid YAML: {problem}") from None
    return [p.strip() for p in parts], parsed


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A deep copy of `raw` with each 'dotted.key=value' set, in order (a later one wins)."""
    out = _deep_copy(raw)
    for text in overrides:
        path, value = parse_override(text)
        for depth in range(1, len(path)):  # every prefix must be a section
            if _section_class(path[:depth]) is None:
                prefix = path[:depth]
                if prefix[-1] in section_keys(prefix[:-1]):
                    raise ConfigError(
                        f"override {text!r}: {'.'.join(prefix)} is a value, not a section with keys"
                    )
                raise ConfigError(f"override {text!r}: " + _unknown_key_message(prefix))
        if path[-1] not in section_keys(path[:-1]):
            raise ConfigError(f"override {text!r}: " + _unknown_key_message(path))
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):  # absent or null: the section with its defaults
                if child is not None:
                    raise ConfigError(f"override {text!r}: {part} is {child!r} in the config, not a section")
                child = node[part] = {}
            node = child
        node[path[-1]] = value
    return out


def _deep_copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


# ----------------------------------------------------------------------------------- validation
def _problem(error: Mapping[str, Any]) -> str:
    loc = [str(p) for p in error["loc"]]
    kind = error["type"]
    if kind == "extra_forbidden":
        return _unknown_key_message(loc)
    where = ".".join(loc) if loc else "config"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "model_type":
        keys = section_keys(loc)
        return f"{where}: expected a section (a mapping with keys {', '.join(keys)}), got {error['input']!r}"
    if kind == "value_error":  # a section's own check: its message names the keys
        return message
    return f"{where}: {message}; got {error['input']!r}"


def validate_config(raw: Mapping[str, Any], source: str = "config") -> RunConfig:
    """`raw` as a RunConfig; ConfigError listing every problem, each with its dotted key."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        problems = [_problem(e) for e in exc.errors(include_url=False)]
        lines = "\n".join(f"  {p}" for p in problems)
        raise ConfigError(f"{source} has {len(problems)} problem(s):\n{lines}") from None


def load_config(path: str | os.PathLike[str] | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """The config in `path` (None: the shipped default) with `overrides` applied, validated."""
    file = default_config_path() if path is None else Path(path)
    raw = apply_overrides(read_yaml(file), overrides)
    source = f"config {file}" + (f" with overrides {' '.join(overrides)}" if overrides else "")
    return validate_config(raw, source)


def dump_config(config: RunConfig) -> str:
    """Every field of `config` (defaults included) as YAML, in schema order; reads back equal."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, default_flow_style=None)


def config_diff(a: RunConfig, b: RunConfig) -> list[str]:
    """The dotted keys whose values differ between two configs, sorted."""
    out: list[str] = []

    def walk(x: Any, y: Any, path: list[str]) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), [*path, k])
        elif x != y:
            out.append(".".join(path))

    walk(a.model_dump(mode="json"), b.model_dump(mode="json"), [])
    return out
