"""Fuzzing the JSON-based and text readers: a PEFT adapter's adapter_config.json, entrenar's JSON adapter
(adapter.json), a Hugging Face config.json (BERT's reader and Llama's), and JSON Lines / CSV / TSV data
files. Each is fed truncated, bit-flipped and spliced copies of a valid file and valid files with one
value made hostile; each must accept the file or refuse it with its own error naming the file.

Allowed errors: adapters and data files FormatError; BERT's config.json FormatError or
UnsupportedModelError; Llama's config.json ValueError (all three ValueError subclasses or itself)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fuzzing import EXAMPLES, PER_READER, SWEEP, check_reader, fuzz, hostile_docs, mutations, run_sweep
from hypothesis import given
from hypothesis import strategies as st

from entrenar.data import read_examples
from entrenar.io import FormatError, save_safetensors
from entrenar.lora.config import LoraConfig
from entrenar.lora.formats import read_adapter
from entrenar.models import LlamaConfig, UnsupportedModelError, read_bert_config
from entrenar.models.checkpoint import read_json

DEEP = '{"a": ' * 50_000 + "1" + "}" * 50_000
PEFT_CONFIG = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"]).to_dict()
JSON_ADAPTER = {
    "format": "entrenar-lora",
    "version": 1,
    "config": PEFT_CONFIG,
    "tensors": {
        "base_model.model.q.lora_A.weight": {
            "dtype": "float32",
            "shape": [2, 3],
            "data": [0, 1, 2, 3, 4, 5.5],
        },
        "base_model.model.q.lora_B.weight": {"dtype": "float32", "shape": [3, 2], "data": [0.0] * 6},
    },
}
HF_CONFIG = {
    "architectures": ["BertModel"],
    "model_type": "bert",
    "vocab_size": 30,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 24,
    "type_vocab_size": 2,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "position_embedding_type": "absolute",
}
ROWS = [
    {"text": "a good film", "label": "pos"},
    {"text": "dull, awful", "label": "neg"},
    {"text": "ok", "label": 1},
]


def dumps(doc: Any) -> bytes:
    return json.dumps(doc).encode()


# ------------------------------------------------------------------------------ PEFT adapter
@pytest.fixture(scope="module")
def peft_dir(folder: Path) -> Path:
    d = folder / "peft"
    d.mkdir()
    save_safetensors(
        d / "adapter_model.safetensors", {"base_model.model.q.lora_A.weight": np.ones((2, 3), np.float32)}
    )
    (d / "adapter_config.json").write_bytes(dumps(PEFT_CONFIG))
    read_adapter(d)  # the valid one reads
    return d


@fuzz(EXAMPLES)
@given(
    data=st.one_of(
        mutations(dumps(PEFT_CONFIG)), hostile_docs(PEFT_CONFIG).map(dumps), st.just(DEEP.encode())
    )
)
def test_fuzz_peft_adapter_config(peft_dir: Path, data: bytes) -> None:
    path = peft_dir / "adapter_config.json"
    path.write_bytes(data)
    check_reader(lambda: read_adapter(peft_dir), path, (FormatError,), "peft-adapter")


# ------------------------------------------------------------------------------ JSON adapter
@pytest.fixture(scope="module")
def json_dir(folder: Path) -> Path:
    d = folder / "json"
    d.mkdir()
    (d / "adapter.json").write_bytes(dumps(JSON_ADAPTER))
    read_adapter(d)
    return d


@fuzz(EXAMPLES)
@given(
    data=st.one_of(
        mutations(dumps(JSON_ADAPTER)), hostile_docs(JSON_ADAPTER).map(dumps), st.just(DEEP.encode())
    )
)
def test_fuzz_json_adapter(json_dir: Path, data: bytes) -> None:
    path = json_dir / "adapter.json"
    path.write_bytes(data)
    check_reader(lambda: read_adapter(json_dir), path, (FormatError,), "json-adapter")


def test_a_json_adapter_claiming_a_huge_tensor_is_refused_without_allocating(json_dir: Path) -> None:
    doc = json.loads(json.dumps(JSON_ADAPTER))
    doc["tensors"]["base_model.model.q.lora_A.weight"]["shape"] = [2**40, 2**40]
    (json_dir / "adapter.json").write_bytes(dumps(doc))
    with pytest.raises(FormatError, match=r"data must be a flat list of \d+ numbers, got 6"):
        read_adapter(json_dir)


# ------------------------------------------------------------------------------ HF config.json
@pytest.fixture(scope="module")
def hf_dir(folder: Path) -> Path:
    d = folder / "hf"
    d.mkdir()
    (d / "config.json").write_bytes(dumps(HF_CONFIG))
    read_bert_config(d)
    return d


@fuzz(EXAMPLES)
@given(
    data=st.one_of(mutations(dumps(HF_CONFIG)), hostile_docs(HF_CONFIG).map(dumps), st.just(DEEP.encode()))
)
def test_fuzz_hf_config_json(hf_dir: Path, data: bytes) -> None:
    path = hf_dir / "config.json"
    path.write_bytes(data)
    check_reader(
        lambda: read_bert_config(hf_dir), path, (FormatError, UnsupportedModelError), "hf-config-bert"
    )


# ------------------------------------------------------------------------------ data files
def jsonl(rows: list[Any]) -> bytes:
    return b"".join(dumps(r) + b"\n" for r in rows)


CSV = b'text,label\n"a good film",pos\n"dull, awful",neg\nfine,pos\n'
TSV = b'text\tlabel\na good film\tpos\n"dull\tawful"\tneg\nfine\t1\n'


@fuzz(EXAMPLES)
@given(
    data=st.one_of(
        mutations(jsonl(ROWS)),
        st.tuples(st.integers(0, 2), hostile_docs(ROWS[0])).map(
            lambda t: jsonl([*ROWS[: t[0]], t[1], *ROWS[t[0] :]])
        ),
        st.just(DEEP.encode() + b"\n"),
    )
)
def test_fuzz_jsonl_data(folder: Path, data: bytes) -> None:
    path = folder / "data.jsonl"
    path.write_bytes(data)
    check_reader(lambda: read_examples(path), path, (FormatError,), "data-jsonl")


@fuzz(EXAMPLES)
@given(data=st.one_of(mutations(CSV), st.binary(max_size=64), st.text(max_size=64).map(str.encode)))
def test_fuzz_csv_data(folder: Path, data: bytes) -> None:
    path = folder / "data.csv"
    path.write_bytes(data)
    check_reader(lambda: read_examples(path), path, (FormatError,), "data-csv")


@fuzz(EXAMPLES)
@given(data=st.one_of(mutations(TSV), st.binary(max_size=64), st.text(max_size=64).map(str.encode)))
def test_fuzz_tsv_data(folder: Path, data: bytes) -> None:
    path = folder / "data.tsv"
    path.write_bytes(data)
    check_reader(lambda: read_examples(path), path, (FormatError,), "data-tsv")


# ------------------------------------------------------------------------------ Llama config.json
LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "max_position_embeddings": 64,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": [2, 3],
}


def read_llama_config(folder: Path) -> LlamaConfig:
    """What `llama_from_pretrained` does with config.json before it builds anything."""
    file = folder / "config.json"
    return LlamaConfig.from_dict(read_json(file, "config"), str(file))


@pytest.fixture(scope="module")
def llama_dir(folder: Path) -> Path:
    d = folder / "llama"
    d.mkdir()
    (d / "config.json").write_bytes(dumps(LLAMA_CONFIG))
    read_llama_config(d)
    return d


@fuzz(EXAMPLES)
@given(
    data=st.one_of(
        mutations(dumps(LLAMA_CONFIG)), hostile_docs(LLAMA_CONFIG).map(dumps), st.just(DEEP.encode())
    )
)
def test_fuzz_llama_config_json(llama_dir: Path, data: bytes) -> None:
    path = llama_dir / "config.json"
    path.write_bytes(data)
    check_reader(lambda: read_llama_config(llama_dir), path, (ValueError,), "hf-config-llama")


# ------------------------------------------------------------------------------ byte sweeps
SWEEPS = [
    "peft-adapter",
    "json-adapter",
    "hf-config-bert",
    "hf-config-llama",
    "data-jsonl",
    "data-csv",
    "data-tsv",
]


@pytest.mark.parametrize("reader", SWEEPS)
def test_byte_sweep(
    folder: Path, peft_dir: Path, json_dir: Path, hf_dir: Path, llama_dir: Path, reader: str
) -> None:
    """Thousands of seeded mutations of each valid file: accepted, or refused by the reader's own error."""
    assert EXAMPLES + SWEEP >= PER_READER
    path, valid, read, allowed = {
        "peft-adapter": (
            peft_dir / "adapter_config.json",
            dumps(PEFT_CONFIG),
            lambda: read_adapter(peft_dir),
            (FormatError,),
        ),
        "json-adapter": (
            json_dir / "adapter.json",
            dumps(JSON_ADAPTER),
            lambda: read_adapter(json_dir),
            (FormatError,),
        ),
        "hf-config-bert": (
            hf_dir / "config.json",
            dumps(HF_CONFIG),
            lambda: read_bert_config(hf_dir),
            (FormatError, UnsupportedModelError),
        ),
        "hf-config-llama": (
            llama_dir / "config.json",
            dumps(LLAMA_CONFIG),
            lambda: read_llama_config(llama_dir),
            (ValueError,),
        ),
        "data-jsonl": (
            folder / "s.jsonl",
            jsonl(ROWS),
            lambda: read_examples(folder / "s.jsonl"),
            (FormatError,),
        ),
        "data-csv": (folder / "s.csv", CSV, lambda: read_examples(folder / "s.csv"), (FormatError,)),
        "data-tsv": (folder / "s.tsv", TSV, lambda: read_examples(folder / "s.tsv"), (FormatError,)),
    }[reader]
    accepted = run_sweep(valid, path, read, allowed, reader)
    assert accepted < SWEEP  # the sweep does reach the refusals
