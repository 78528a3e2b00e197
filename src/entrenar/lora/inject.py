"""Finding and replacing modules by dotted name: target matching, "all-linear", modules_to_save.

Matching follows PEFT's `check_target_module_exists`: a list of targets matches a name that equals
one or ends with "." + one (then `layers_to_transform` filters by the first numbered path segment);
a string is a regex for re.fullmatch on the whole name. A name matched by `exclude_modules`, or lying
in a module listed in `modules_to_save`, is excluded. "all-linear" becomes the explicit list of
Linear layers minus the output layer, as PEFT resolves it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from entrenar.lora.base import is_linear
from entrenar.lora.config import ALL_LINEAR, LoraConfig
from entrenar.lora.layer import LoraLinear
from entrenar.lora.wrappers import ModulesToSaveWrapper
from entrenar.nn.module import Module

__all__ = [
    "EXCLUDED",
    "find_targets",
    "get_module",
    "inject_adapter",
    "match_target",
    "named_modules_outside_adapters",
    "output_layer_names",
    "prepare_config",
    "replace_module",
    "resolve_all_linear",
    "wrap_modules_to_save",
]

SEQ_CLS_HEAD_NAMES = ("classifier", "score")
EXCLUDED = "excluded"
_SHOWN = 40  # module names listed in an error before "... and N more"


def named_modules_outside_adapters(model: Module) -> list[tuple[str, Module]]:
    """model.named_modules(), leaving out what lies inside a LoraLinear or ModulesToSaveWrapper."""
    out: list[tuple[str, Module]] = []
    wrapped: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(w + ".") for w in wrapped):
            continue
        out.append((name, module))
        if name and isinstance(module, (LoraLinear, ModulesToSaveWrapper)):
            wrapped.append(name)
    return out


def match_target(config: LoraConfig, key: str) -> bool | str:
    """True if `config` targets module `key`, EXCLUDED if it is excluded, else False."""
    ex = config.exclude_modules
    if ex:
        if isinstance(ex, str):
            if re.fullmatch(ex, key):
                return EXCLUDED
        elif key in ex or any(key.endswith(f".{e}") for e in ex):
            return EXCLUDED
    if config.modules_to_save and any(re.match(rf"(^|.*\.){m}($|\..*)", key) for m in config.modules_to_save):
        return EXCLUDED
    targets = config.target_modules
    if targets is None:
        return False
    if isinstance(targets, str):
        return re.fullmatch(targets, key) is not None
    if key in targets:
        return True
    if not any(key.endswith(f".{t}") for t in targets):
        return False
    return _layer_selected(config, key)


def _layer_selected(config: LoraConfig, key: str) -> bool:
    """layers_to_transform: the first numbered segment (after layers_pattern, if given) must be listed."""
    wanted = config.layers_to_transform
    if wanted is None or (isinstance(wanted, list) and not wanted):
        return True
    pattern = config.layers_pattern
    match = None
    if not pattern:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    else:
        for p in [pattern] if isinstance(pattern, str) else pattern:
            match = re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", key)
            if match is not None:
                break
    if match is None:
        return False
    idx = int(match.group("idx"))
    return idx == wanted if isinstance(wanted, int) else idx in wanted


def output_layer_names(model: Module, task_type: str | None) -> set[str]:
    """The output layer "all-linear" leaves out: get_output_embeddings() or `lm_head`, else SEQ_CLS's head."""
    getter = getattr(model, "get_output_embeddings", None)
    out = getter() if callable(getter) else getattr(model, "lm_head", None)
    candidates: list[Any] = []
    if isinstance(out, Module):
        candidates = [out]
    elif task_type == "SEQ_CLS":
        candidates = [
            h for h in (getattr(model, n, None) for n in SEQ_CLS_HEAD_NAMES) if isinstance(h, Module)
        ][:1]
    return {name for name, m in model.named_modules() if any(m is c for c in candidates)}


def resolve_all_linear(config: LoraConfig, model: Module) -> LoraConfig:
    """`config`, or for target_modules="all-linear" a copy listing every Linear but the output layer."""
    if not (isinstance(config.target_modules, str) and config.target_modules.lower() == ALL_LINEAR):
        return config
    skip = output_layer_names(model, config.task_type)
    names = [
        name
        for name, m in named_modules_outside_adapters(model)
        if name and (is_linear(m) or isinstance(m, LoraLinear)) and name not in skip
    ]
    d = config.to_dict()
    d["target_modules"] = sorted(names)
    return LoraConfig.from_dict(d)


# ----------------------------------------------------------------------------------- replacing
def _locate(root: Module, name: str) -> tuple[Module, str, Module]:
    """(parent, the child's name within the parent as named_children gives it, child) for dotted `name`."""
    parent, rest = root, name
    while True:
        for child_name, child in parent.named_children():
            if rest == child_name:
                return parent, child_name, child
            if rest.startswith(child_name + "."):
                parent, rest = child, rest[len(child_name) + 1 :]
                break
        else:
            raise KeyError(f"{type(root).__name__} has no sub-module named {name!r}")


def get_module(root: Module, name: str) -> Module:
    """The sub-module at dotted `name` (list indices and dict keys included); `root` for ""."""
    return root if not name else _locate(root, name)[2]


def replace_module(root: Module, name: str, new: Module) -> None:
    """Put `new` where sub-module `name` is: an attribute, or an entry of a list, tuple or dict attribute."""
    parent, child_name, _ = _locate(root, name)
    attr, _, key = child_name.partition(".")
    if not key:
        setattr(parent, attr, new)
        return
    container = getattr(parent, attr)
    if isinstance(container, list):
        container[int(key)] = new
    elif isinstance(container, tuple):
        setattr(parent, attr, tuple(new if i == int(key) else v for i, v in enumerate(container)))
    else:
        container[key] = new


# ----------------------------------------------------------------------------------- injection
def find_targets(model: Module, config: LoraConfig) -> list[tuple[str, Module]]:
    """(name, module) of every module `config` targets, checked: each must be a Linear, QuantLinear,
    GGMLLinear or LoraLinear. Raises ValueError when nothing matches, naming the model's Linear layers."""
    if config.target_modules is None:
        raise ValueError(
            "LoraConfig: target_modules is required: a list of module-name suffixes "
            "(e.g. ['query', 'value']), a regex string, or 'all-linear'"
        )
    targets: list[tuple[str, Module]] = []
    excluded: list[str] = []
    for name, module in named_modules_outside_adapters(model):
        hit = match_target(config, name) if name else False
        if hit == EXCLUDED:
            excluded.append(name)
        elif hit and not (is_linear(module) or isinstance(module, LoraLinear)):
            raise ValueError(
                f"LoRA: target_modules matched {name!r}, a {type(module).__name__}; only Linear and "
                "QuantLinear (or packed GGMLLinear) layers can be adapted (name the Linear layers inside "
                "it instead)"
            )
        elif hit:
            targets.append((name, module))
    if not targets:
        raise ValueError(_no_match_message(model, config, excluded))
    return targets


def inject_adapter(
    model: Module, config: LoraConfig, adapter_name: str, generator: np.random.Generator
) -> list[str]:
    """Wrap every module `config` targets (see `find_targets`) with LoraLinear, or add the adapter to
    one already wrapped; the targeted names."""
    targets = find_targets(model, config)
    for name, module in targets:
        if isinstance(module, LoraLinear):
            module.update_layer(adapter_name, config, name, generator=generator)
        else:
            replace_module(model, name, LoraLinear(module, adapter_name, config, name, generator=generator))
    return [name for name, _ in targets]


def prepare_config(config: LoraConfig, model: Module) -> LoraConfig:
    """A copy of `config` as an adapter stores it: task_type "SEQ_CLS" adds the classifier heads to
    modules_to_save, and "all-linear" becomes the explicit list of Linear layers (as PEFT stores them)."""
    if not isinstance(config, LoraConfig):
        raise TypeError(f"LoRA: config must be a LoraConfig, got {type(config).__name__}")
    cfg = dataclasses.replace(config)
    if cfg.task_type == "SEQ_CLS":
        have = list(cfg.modules_to_save or [])
        cfg.modules_to_save = have + [h for h in SEQ_CLS_HEAD_NAMES if h not in have]
    return resolve_all_linear(cfg, model)


def _listing(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:_SHOWN])
    return shown + (f", ... and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _no_match_message(model: Module, config: LoraConfig, excluded: list[str]) -> str:
    if excluded:
        return (
            f"LoRA: every module target_modules={config.target_modules!r} matched is excluded "
            "by exclude_modules "
            f"or modules_to_save: {_listing(excluded)}"
        )
    modules = [(n, m) for n, m in named_modules_outside_adapters(model) if n]
    linear = [n for n, m in modules if is_linear(m) or isinstance(m, LoraLinear)]
    extra = (
        f" (layers_to_transform={config.layers_to_transform!r})"
        if config.layers_to_transform is not None
        else ""
    )
    if linear:
        where = f"its Linear layers are: {_listing(linear)}"
    else:
        where = f"it has no Linear layer; its modules are: {_listing(n for n, _ in modules)}"
    return (
        f"LoRA: target_modules={config.target_modules!r}{extra} matched no module of {type(model).__name__}; "
        f"{where}"
    )


def wrap_modules_to_save(model: Module, names: list[str], adapter_name: str) -> list[str]:
    """Wrap each module whose name ends with one of `names` (PEFT's rule) in a ModulesToSaveWrapper."""
    wrapped: list[str] = []
    for key, module in named_modules_outside_adapters(model):
        if (
            not key
            or not any(key.endswith(t) for t in names)
            or any(key.startswith(w + ".") for w in wrapped)
        ):
            continue
        if isinstance(module, ModulesToSaveWrapper):
            module.update(adapter_name)
        else:
            replace_module(model, key, ModulesToSaveWrapper(module, adapter_name))
        wrapped.append(key)
    return wrapped
