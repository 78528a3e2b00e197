"""One test per crash the fuzzers found (each failed with an unrelated exception before its fix)."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from entrenar.data import read_examples
from entrenar.io import FormatError, load_safetensors
from entrenar.lora.formats import read_adapter
from entrenar.models import read_bert_config
from entrenar.train import read_events
from entrenar.train.state import from_json_tree

DEEP = "[" * 100_000 + "]" * 100_000  # RecursionError in json.loads before the fixes


@pytest.mark.parametrize(
    ("name", "read"),
    [
        ("config.json", lambda p: read_bert_config(p.parent)),
        ("adapter.json", lambda p: read_adapter(p.parent)),
        ("data.jsonl", read_examples),
        ("metrics.jsonl", read_events),
    ],
)
def test_json_nested_deeper_than_the_parser_is_a_format_error(
    tmp_path: Path, name: str, read: Callable[[Path], Any]
) -> None:
    path = tmp_path / name
    path.write_text(DEEP + "\n")
    with pytest.raises(FormatError, match=rf"{path}: .*nested too deeply"):
        read(path)


def test_a_peft_adapter_config_nested_too_deeply(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(DEEP)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(FormatError, match=r"adapter_config\.json: JSON nested too deeply"):
        read_adapter(tmp_path)


@pytest.mark.parametrize("dtype", [[], {}, ["F32"], 7, None])
def test_a_safetensors_dtype_that_is_not_a_string(tmp_path: Path, dtype: Any) -> None:
    """Was TypeError: unhashable type: 'list' (the dtype was looked up in a dict)."""
    header = json.dumps({"w": {"dtype": dtype, "shape": [1], "data_offsets": [0, 4]}}).encode()
    path = tmp_path / "w.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(FormatError, match=rf"{path}: tensor 'w': dtype .* is not a safetensors dtype"):
        load_safetensors(path)


@pytest.mark.parametrize(
    "tree",
    [
        {"__items__": [[{}, 1]]},  # was TypeError: unhashable type: 'dict'
        {"__items__": [[1, 2, 3]]},  # was ValueError from unpacking, with no word about the file
        {"__items__": 5},  # was TypeError: 'int' object is not iterable
        {"__tuple__": 5},
        {"__array__": []},  # was TypeError: unhashable type: 'list'
        {"__ndarray__": [1], "dtype": "object", "shape": [1]},
        {"__ndarray__": [1, 2], "dtype": "float32", "shape": [3]},
        {"__ndarray__": [1], "dtype": "float32"},  # was KeyError: 'shape'
        {"__ndarray__": "AACAfw==", "dtype": "float32", "shape": [2]},  # 4 bytes for 2 values
        {"__ndarray__": "AACAfw", "dtype": "float32", "shape": [1]},  # base64 without its padding
        {"__ndarray__": "AQ==", "dtype": "uint8", "shape": [1]},  # bytes are for float arrays only
    ],
)
def test_malformed_state_tags_are_value_errors(tree: Any) -> None:
    with pytest.raises(ValueError, match=r"^state: "):
        from_json_tree(tree, {})


def test_a_json_adapter_value_too_large_for_its_dtype(tmp_path: Path) -> None:
    """Was accepted as inf, with a RuntimeWarning (overflow in the float64 -> float16 cast)."""
    from entrenar.lora.config import LoraConfig

    doc = {
        "format": "entrenar-lora",
        "version": 1,
        "config": LoraConfig(r=1, target_modules=["q"]).to_dict(),
        "tensors": {"base_model.model.q.lora_A.weight": {"dtype": "float16", "shape": [1], "data": [1e300]}},
    }
    (tmp_path / "adapter.json").write_text(json.dumps(doc))
    with pytest.raises(FormatError, match=r"adapter\.json: tensor .* a value is too large for float16"):
        read_adapter(tmp_path)


# ------------------------------------------------------------------------------ second round (issue 7)
LLAMA = {
    "model_type": "llama",
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"rope_scaling": [1]}, r"rope_parameters / rope_scaling must be an object"),  # was AttributeError
        ({"rope_theta": [1]}, r"float\(\) argument must be"),  # was TypeError
        ({"rope_theta": "abc"}, r"could not convert string to float"),  # was a ValueError naming no file
        ({"rms_norm_eps": "x"}, r"not supported between"),  # was TypeError
        ({"vocab_size": "64"}, r"vocab_size must be an int in \[1, 4,194,304\], got '64'"),  # named no file
        ({"vocab_size": None}, r"vocab_size must be an int in \[1, 4,194,304\], got None"),
        ({"hidden_size": 10**9}, r"hidden_size must be an int in \[1, 131,072\]"),  # was accepted
    ],
)
def test_a_hostile_llama_config_json_is_a_value_error_naming_the_file(
    extra: dict[str, Any], message: str
) -> None:
    from entrenar.models import LlamaConfig

    with pytest.raises(ValueError, match=rf"^/x/config\.json: .*{message}"):
        LlamaConfig.from_dict({**LLAMA, **extra}, "/x/config.json")


def test_a_gguf_tensor_with_an_unknown_name_is_a_value_error(tmp_path: Path) -> None:
    """Was KeyError: "no gguf -> hf name for tensor 'blk.0.ffn_Norm.weight'" (a flipped bit in a name)."""
    from test_fuzz_gguf import write_gguf

    from entrenar.models.gguf import llama_from_gguf

    path = write_gguf(tmp_path / "m.gguf")
    blob = path.read_bytes()
    path.write_bytes(blob.replace(b"blk.0.ffn_norm.weight", b"blk.0.ffn_Norm.weight"))
    with pytest.raises(ValueError, match=rf"{path}: tensor 'blk\.0\.ffn_Norm\.weight': no gguf -> hf name"):
        llama_from_gguf(path)
