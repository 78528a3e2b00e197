"""BERT-family checkpoints in Hugging Face's layout, loaded into (and saved from) `entrenar.nn.bert`.

Keys. Our modules carry Hugging Face's names, so a key maps by one rule, `checkpoint_key`: the
encoder's keys (`embeddings.*`, `encoder.*`, `pooler.*`) carry the checkpoint's prefix, "bert." in a
`BertFor*` checkpoint and "" in a `BertModel` or sentence-transformers one; head keys (`classifier.*`)
are the same on both sides. Loading uses the inverse *derived* from it over the model's own keys, so
loading and saving cannot drift apart.

What loads where: every encoder tensor must be there with the model's shape (strict) and is converted
to the requested dtype (float32, float16 or bfloat16 on disk). Heads the model lacks (`cls.*` of a
pre-training checkpoint, `classifier.*` when a BertModel is asked for) are left out and listed in the
report; `position_ids` buffers are dropped. A checkpoint without a pooler gives a BertModel without
one; a BertForSequenceClassification gets a fresh pooler and, when the checkpoint has none, a fresh
classifier, both drawn from the caller's generator.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, overload

import numpy as np
from numpy.typing import DTypeLike

from entrenar.io import FormatError, atomic_write_text
from entrenar.models.checkpoint import CONFIG_NAME, checkpoint_dir, read_json, read_tensors, write_tensors
from entrenar.models.limits import bert_parameter_count, check_parameter_count, check_sizes
from entrenar.nn.bert import BertConfig, BertForSequenceClassification, BertModel

__all__ = [
    "ENCODER_PARTS",
    "LoadReport",
    "Loaded",
    "UnsupportedModelError",
    "checkpoint_key",
    "from_pretrained",
    "load_pretrained",
    "read_bert_config",
    "save_pretrained",
]

ENCODER_PARTS = ("embeddings.", "encoder.", "pooler.")
SUPPORTED = (
    "model_type 'bert', or architectures naming a Bert* class (BertModel, BertForSequenceClassification, "
    "or another BertFor* whose head is left out)"
)
# no defaults for what sizes the model: bert-base's values would silently build the wrong network
_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
_POOLER = ("pooler.dense.weight", "pooler.dense.bias")

Shape = tuple[int, ...]


class UnsupportedModelError(ValueError):
    """A well-formed checkpoint of a kind entrenar does not implement."""


def checkpoint_key(name: str, prefix: str) -> str:
    """The checkpoint's key for our state-dict key `name`, in a checkpoint whose encoder keys carry
    `prefix` ("bert." or ""). `name` is a BertModel key (`embeddings.*`) or a
    BertForSequenceClassification one (`bert.embeddings.*`, `classifier.*`)."""
    encoder = name.removeprefix("bert.")
    return prefix + encoder if encoder.startswith(ENCODER_PARTS) else name


def _from_checkpoint(model_keys: list[str], prefix: str) -> dict[str, str]:
    """checkpoint key -> our key: the inverse of `checkpoint_key` over the model's own keys."""
    inverse = {checkpoint_key(k, prefix): k for k in model_keys}
    if len(inverse) != len(model_keys):  # two of our keys onto one checkpoint key: a bug, not bad input
        raise AssertionError(f"checkpoint_key is not one-to-one over {len(model_keys)} keys")
    return inverse


def _prefix_of(keys: list[str]) -> str:
    """ "bert." when any encoder key carries it (a BertFor* checkpoint), else "" (BertModel's own keys)."""
    return "bert." if any(k.startswith(tuple("bert." + p for p in ENCODER_PARTS)) for k in keys) else ""


def read_bert_config(path: str | os.PathLike[str]) -> BertConfig:
    """The BertConfig in `<path>/config.json`, after checking it describes a model we implement.

    FormatError (naming the file) for a malformed file or missing size keys; UnsupportedModelError
    naming the model_type / architectures (or option) and what is supported.
    """
    file = checkpoint_dir(path) / CONFIG_NAME
    raw = read_json(file, "config.json")
    model_type, archs = raw.get("model_type"), raw.get("architectures")
    if archs is not None and (not isinstance(archs, list) or not all(isinstance(a, str) for a in archs)):
        raise FormatError(file, f"'architectures' must be a list of class names, got {archs!r}")
    if model_type is None and archs is None:
        raise FormatError(file, "missing keys 'model_type' and 'architectures': cannot tell what model it is")
    if model_type != "bert" and not any(a.startswith("Bert") for a in archs or []):
        raise UnsupportedModelError(
            f"{file}: unsupported model: model_type {model_type!r}, architectures {archs!r}; "
            f"supported: {SUPPORTED}"
        )
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise FormatError(file, f"missing key(s) {', '.join(map(repr, missing))}, which size the model")
    if raw.get("position_embedding_type", "absolute") != "absolute":
        raise UnsupportedModelError(
            f"{file}: position_embedding_type {raw['position_embedding_type']!r} is not supported; "
            "supported: 'absolute'"
        )
    for flag in ("is_decoder", "add_cross_attention"):
        if raw.get(flag):
            raise UnsupportedModelError(f"{file}: {flag}=true is not supported; supported: encoders only")
    try:
        check_sizes("", raw)  # before anything is allocated: see entrenar.models.limits
        check_parameter_count("", bert_parameter_count(raw))
        return BertConfig.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise FormatError(file, str(exc)) from None


def _check_dtype(dtype: DTypeLike) -> np.dtype[Any]:
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"from_pretrained: dtype must be float16, float32 or float64, got {dt}")
    return dt


def _generator(generator: np.random.Generator | int) -> np.random.Generator:
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, bool) or not isinstance(generator, int) or generator < 0:
        raise TypeError(
            f"from_pretrained: generator must be a numpy Generator or a seed >= 0, got {generator!r}"
        )
    return np.random.default_rng(generator)


@dataclass(frozen=True)
class LoadReport:
    """What loading did beyond copying matching tensors; keys come with their shapes.

    missing:     our keys absent from the checkpoint, left freshly initialised (strict=False only)
    unexpected:  checkpoint keys in the encoder's namespace the model lacks, not loaded (strict=False only)
    ignored:     checkpoint keys of heads the model does not have (`cls.*`, `classifier.*`), not loaded
    initialised: our keys freshly initialised by design (a classifier or pooler the checkpoint lacks)
    """

    prefix: str
    missing: tuple[tuple[str, Shape], ...]
    unexpected: tuple[tuple[str, Shape], ...]
    ignored: tuple[tuple[str, Shape], ...]
    initialised: tuple[str, ...]


class Loaded(NamedTuple):
    model: BertModel | BertForSequenceClassification
    report: LoadReport


def _named(items: list[tuple[str, Shape]]) -> str:
    return ", ".join(f"{k} {s}" for k, s in items)


def load_pretrained(
    path: str | os.PathLike[str],
    *,
    dtype: DTypeLike = np.float32,
    num_labels: int | None = None,
    generator: np.random.Generator | int = 0,
    strict: bool = True,
) -> Loaded:
    """`from_pretrained`, also returning the LoadReport. With strict=False, missing and unexpected
    encoder keys are reported (and warned about) instead of raising KeyError."""
    dt = _check_dtype(dtype)
    rng = _generator(generator)
    if num_labels is not None and (
        isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1
    ):
        raise ValueError(f"from_pretrained: num_labels must be a positive int or None, got {num_labels!r}")
    folder = checkpoint_dir(path)
    config = read_bert_config(folder)
    ckpt = read_tensors(folder)
    keys = [k for k in ckpt.tensors if k.rpartition(".")[2] != "position_ids"]
    prefix = _prefix_of(keys)
    has_pooler = all(prefix + p in ckpt.tensors for p in _POOLER)
    model: BertModel | BertForSequenceClassification
    if num_labels is None:
        model = BertModel(config, add_pooling_layer=has_pooler, dtype=dt, generator=rng)
    else:
        config = dataclasses.replace(config, num_labels=num_labels)
        model = BertForSequenceClassification(config, dtype=dt, generator=rng)
    own = model.state_dict()
    inverse = _from_checkpoint(list(own), prefix)

    found = {k: inverse[k] for k in keys if k in inverse}
    fresh_by_design = (
        ("classifier.", "bert.pooler.") if isinstance(model, BertForSequenceClassification) else ()
    )
    absent = [ours for ck, ours in inverse.items() if ck not in ckpt.tensors]
    initialised = tuple(k for k in absent if k.startswith(fresh_by_design))
    missing = [(k, own[k].shape) for k in absent if k not in initialised]
    outside = [k for k in keys if k not in inverse]
    in_encoder = tuple(prefix + p for p in ENCODER_PARTS)
    unexpected = [(k, ckpt.tensors[k].shape) for k in outside if k.startswith(in_encoder)]
    ignored = [(k, ckpt.tensors[k].shape) for k in outside if not k.startswith(in_encoder)]

    mismatched = [
        f"{ck} in {ckpt.source[ck].name}: checkpoint {ckpt.tensors[ck].shape}, model {own[ours].shape}"
        for ck, ours in found.items()
        if ckpt.tensors[ck].shape != own[ours].shape
    ]
    if mismatched:
        raise ValueError(f"{folder}: shape mismatch for " + "; ".join(mismatched))
    if missing or unexpected:
        parts = [f"missing {_named(missing)}"] if missing else []
        parts += [f"unexpected {_named(unexpected)}"] if unexpected else []
        message = f"{folder}: checkpoint and {type(model).__name__} disagree: " + "; ".join(parts)
        if strict:
            raise KeyError(message)
        warnings.warn(message + " (strict=False: missing ones keep their fresh values)", stacklevel=2)
    state = {ours: _as_weight(ckpt.tensors[ck], dt, ck, ckpt.source[ck]) for ck, ours in found.items()}
    model.load_state_dict(state, strict=False)
    model.eval()
    return Loaded(model, LoadReport(prefix, tuple(missing), tuple(unexpected), tuple(ignored), initialised))


def _as_weight(array: np.ndarray, dtype: np.dtype[Any], key: str, source: Path) -> np.ndarray:
    if array.dtype.kind != "f" and array.dtype.name != "bfloat16":
        raise FormatError(source, f"tensor {key!r} has dtype {array.dtype}; weights must be floating point")
    return array.astype(dtype)  # bfloat16 (ml_dtypes) and float16 widen exactly to float32


@overload
def from_pretrained(
    path: str | os.PathLike[str],
    *,
    dtype: DTypeLike = ...,
    num_labels: None = None,
    generator: np.random.Generator | int = ...,
    strict: bool = ...,
) -> BertModel: ...
@overload
def from_pretrained(
    path: str | os.PathLike[str],
    *,
    dtype: DTypeLike = ...,
    num_labels: int,
    generator: np.random.Generator | int = ...,
    strict: bool = ...,
) -> BertForSequenceClassification: ...
def from_pretrained(
    path: str | os.PathLike[str],
    *,
    dtype: DTypeLike = np.float32,
    num_labels: int | None = None,
    generator: np.random.Generator | int = 0,
    strict: bool = True,
) -> BertModel | BertForSequenceClassification:
    """A Hugging Face BERT checkpoint folder as entrenar's BertModel, in eval mode, weights in `dtype`.

    With `num_labels`, a BertForSequenceClassification: the encoder loaded, the classifier loaded when
    the checkpoint has one of that size, else freshly initialised (N(0, initializer_range), bias 0)
    from `generator` (a numpy Generator or a seed), which the model also keeps for dropout.
    Raises FileNotFoundError for a missing folder or file, FormatError for a malformed file,
    UnsupportedModelError for another architecture, KeyError naming missing / unexpected keys with
    their shapes (strict), ValueError naming each key whose shape differs, with both shapes.
    """
    return load_pretrained(path, dtype=dtype, num_labels=num_labels, generator=generator, strict=strict).model


def save_pretrained(
    model: BertModel | BertForSequenceClassification,
    path: str | os.PathLike[str],
    *,
    max_shard_bytes: int | None = None,
) -> list[Path]:
    """Write `model` as a Hugging Face checkpoint folder (created if needed): config.json and
    model.safetensors, or shards of at most `max_shard_bytes` plus their index. Keys are
    `checkpoint_key(name, prefix)`: prefix "" for a BertModel, "bert." for a classifier, as Hugging
    Face saves them. Returns the files written."""
    if not isinstance(model, BertModel | BertForSequenceClassification):
        raise TypeError(
            "save_pretrained: expected a BertModel or BertForSequenceClassification, "
            f"got {type(model).__name__}"
        )
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "bert." if isinstance(model, BertForSequenceClassification) else ""
    tensors = {checkpoint_key(k, prefix): v for k, v in model.state_dict().items()}
    config = {
        "architectures": [type(model).__name__],
        "model_type": "bert",
        **dataclasses.asdict(model.config),
    }
    config["position_embedding_type"] = "absolute"
    written = write_tensors(folder, tensors, max_shard_bytes=max_shard_bytes)
    atomic_write_text(folder / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return [folder / CONFIG_NAME, *written]
