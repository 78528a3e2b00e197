"""Run configs: one YAML schema (pydantic), dotted command-line overrides, errors that name the key.

    from entrenar.config import load_config
    cfg = load_config("run.yaml", ["lora.r=16", "training.epochs=2"])   # a RunConfig
    cfg.lora.r, cfg.training.epochs, cfg.output.name

`entrenar/configs/minilm-sentiment-qlora.yaml` is the shipped default (`load_config(None)`), every
field written out with a comment; `entrenar init` copies it. See `schema` for what each field means.
"""

from entrenar.config.load import (
    DEFAULT_CONFIG,
    ConfigError,
    apply_overrides,
    config_diff,
    default_config_path,
    default_config_text,
    dump_config,
    load_config,
    parse_override,
    read_yaml,
    section_keys,
    validate_config,
)
from entrenar.config.schema import (
    MINILM,
    SMOLLM2,
    CausalLMSection,
    DataSection,
    EarlyStoppingSection,
    LoraSection,
    ModelSection,
    OptimizerSection,
    OutputSection,
    ProbeSection,
    RunConfig,
    ScheduleSection,
    TrainingSection,
)

__all__ = [
    "DEFAULT_CONFIG",
    "MINILM",
    "SMOLLM2",
    "CausalLMSection",
    "ConfigError",
    "DataSection",
    "EarlyStoppingSection",
    "LoraSection",
    "ModelSection",
    "OptimizerSection",
    "OutputSection",
    "ProbeSection",
    "RunConfig",
    "ScheduleSection",
    "TrainingSection",
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
