"""Model configs claiming huge or malformed sizes are refused before anything is allocated, with an
error naming the file, the field and the limit: Hugging Face config.json for BERT and Llama, and
GGUF metadata (see entrenar.models.limits)."""

from __future__ import annotations

import json
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_fuzz_gguf import write_gguf
from test_fuzz_json_readers import HF_CONFIG

from entrenar.io import FormatError
from entrenar.models import llama_from_pretrained, read_bert_config
from entrenar.models.gguf import llama_from_gguf
from entrenar.models.limits import MAX_PARAMETERS, MAX_SIZES

LLAMA_CONFIG = {
    "model_type": "llama",
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
HOSTILE = [
    ("vocab_size", 10**12),
    ("hidden_size", 10**9),
    ("num_hidden_layers", 10**6),
    ("num_attention_heads", 2**40),
    ("intermediate_size", -1),
    ("vocab_size", 0),
    ("hidden_size", 32.0),
    ("num_hidden_layers", True),
    ("intermediate_size", "48"),
    ("max_position_embeddings", 2**31),
]


def refused_cheaply(read: Callable[[], Any], error: type[BaseException], match: str) -> None:
    """`read` raises `error` matching `match` within a second, having allocated under 16 MB."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(error, match=match):
            read()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 1.0
    assert peak < 16 * 2**20, f"{peak / 2**20:.1f} MB allocated before refusing"


def _limit(field: str) -> str:
    return f"{MAX_SIZES[field]:,}"


@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.mark.parametrize(("field", "value"), HOSTILE)
def test_bert_config_json_with_a_hostile_size(hf_dir: Path, field: str, value: Any) -> None:
    (hf_dir / "config.json").write_text(json.dumps({**HF_CONFIG, field: value}))
    message = rf"{hf_dir / 'config.json'}: {field} must be an int in \[1, {_limit(field)}\], got {value!r}"
    refused_cheaply(lambda: read_bert_config(hf_dir), FormatError, message)


@pytest.mark.parametrize(("field", "value"), HOSTILE)
def test_llama_config_json_with_a_hostile_size(hf_dir: Path, field: str, value: Any) -> None:
    (hf_dir / "config.json").write_text(json.dumps({**LLAMA_CONFIG, field: value}))
    message = rf"{hf_dir / 'config.json'}: {field} must be an int in \[1, {_limit(field)}\], got {value!r}"
    refused_cheaply(lambda: llama_from_pretrained(hf_dir), ValueError, message)


def test_sizes_each_in_range_but_too_many_parameters_together(hf_dir: Path) -> None:
    big = {"vocab_size": 2**22, "hidden_size": 2**16}  # a 2**38-element embedding table alone
    for config, read, error in (
        (HF_CONFIG, lambda: read_bert_config(hf_dir), FormatError),
        (LLAMA_CONFIG, lambda: llama_from_pretrained(hf_dir), ValueError),
    ):
        (hf_dir / "config.json").write_text(json.dumps({**config, **big}))
        message = r"config\.json: the sizes describe a model of [\d,]+ parameters, more than the limit of "
        message += f"{MAX_PARAMETERS:,}"
        refused_cheaply(read, error, message)


@pytest.mark.parametrize(
    ("key", "field", "value"),
    [
        ("embedding_length", "hidden_size", 10**9),
        ("block_count", "num_hidden_layers", 10**6),
        ("vocab_size", "vocab_size", 10**12),
        ("feed_forward_length", "intermediate_size", 2**32 - 1),
        ("attention.head_count", "num_attention_heads", 0),
        ("context_length", "max_position_embeddings", 2**40),
    ],
)
def test_gguf_metadata_claiming_a_huge_size(tmp_path: Path, key: str, field: str, value: int) -> None:
    path = write_gguf(tmp_path / "huge.gguf", {key: value})
    message = rf"{path}: llama\.{key} must be an int in \[1, {_limit(field)}\], got {value}"
    refused_cheaply(lambda: llama_from_gguf(path), ValueError, message)
