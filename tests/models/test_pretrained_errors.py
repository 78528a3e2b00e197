"""Bad checkpoint folders: every failure names the file, the key and what was expected."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bert_checkpoints import edit_config, saved, tiny_model

from entrenar.io import FormatError, load_safetensors, save_safetensors
from entrenar.models import UnsupportedModelError, from_pretrained, load_pretrained, save_pretrained


def test_missing_folder_and_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere does not exist"):
        from_pretrained(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"file is a file, not a folder"):
        from_pretrained(tmp_path / "file")
    saved(tmp_path / "m")
    (tmp_path / "m" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json: no config\.json there .*model\.safetensors"):
        from_pretrained(tmp_path / "m")


def test_missing_weights_are_named(tmp_path: Path) -> None:
    saved(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no weights: expected model\.safetensors or model\.safe"):
        from_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(FileNotFoundError, match=r"pickle-based \.bin checkpoints are not read"):
        from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b'{"model_type": "bert",', r"config\.json: config\.json is not valid JSON: .* line 1 column 23"),
        (b"\xff\xfe{}", r"config\.json: config\.json is not UTF-8 text \(byte 0\)"),
        (b"[1, 2]", r"config\.json: config\.json must hold a JSON object, found list"),
    ],
)
def test_corrupt_config(tmp_path: Path, content: bytes, match: str) -> None:
    saved(tmp_path)
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(FormatError, match=match) as info:
        from_pretrained(tmp_path)
    assert info.value.path == str(tmp_path / "config.json")


def test_wrong_architecture_names_it_and_the_supported_ones(tmp_path: Path) -> None:
    saved(tmp_path)
    edit_config(tmp_path, model_type="gpt2", architectures=["GPT2LMHeadModel"])
    with pytest.raises(
        UnsupportedModelError, match=r"model_type 'gpt2', architectures \['GPT2LMHeadModel'\]"
    ):
        from_pretrained(tmp_path)
    with pytest.raises(UnsupportedModelError, match=r"supported: model_type 'bert'"):
        from_pretrained(tmp_path)
    edit_config(tmp_path, model_type=None, architectures=None)
    with pytest.raises(FormatError, match=r"missing keys 'model_type' and 'architectures'"):
        from_pretrained(tmp_path)
    edit_config(tmp_path, architectures=["BertForMaskedLM"])  # no model_type: the class name is enough
    assert from_pretrained(tmp_path).config.hidden_size == 16
    edit_config(tmp_path, position_embedding_type="relative_key")
    with pytest.raises(UnsupportedModelError, match=r"position_embedding_type 'relative_key'.*'absolute'"):
        from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"hidden_size": None}, r"missing key\(s\) 'hidden_size', which size the model"),
        ({"hidden_act": "tanh"}, r"config\.json: BertConfig: hidden_act must be one of"),
        (
            {"num_attention_heads": "4"},
            r"config\.json: num_attention_heads must be an int in \[1, 4,096\], got .4.",
        ),
        ({"architectures": "BertModel"}, r"'architectures' must be a list of class names"),
    ],
)
def test_invalid_config_values(tmp_path: Path, changes: dict[str, object], match: str) -> None:
    saved(tmp_path)
    edit_config(tmp_path, **changes)
    with pytest.raises(FormatError, match=match):
        from_pretrained(tmp_path)


def test_shape_mismatch_names_key_and_both_shapes(tmp_path: Path) -> None:
    saved(tmp_path)
    edit_config(tmp_path, vocab_size=41, intermediate_size=25)
    with pytest.raises(ValueError, match=r"shape mismatch") as info:
        from_pretrained(tmp_path)
    text = str(info.value)
    assert (
        "embeddings.word_embeddings.weight in model.safetensors: checkpoint (40, 16), model (41, 16)" in text
    )
    assert (
        "encoder.layer.1.intermediate.dense.bias in model.safetensors: checkpoint (24,), model (25,)" in text
    )


def test_classifier_of_another_size_is_a_shape_mismatch(tmp_path: Path) -> None:
    saved(tmp_path, num_labels=3)
    with pytest.raises(
        ValueError, match=r"classifier\.weight in model\.safetensors: checkpoint \(3, 16\), model"
    ):
        from_pretrained(tmp_path, num_labels=2)


def test_missing_and_unexpected_keys(tmp_path: Path) -> None:
    saved(tmp_path)
    tensors = load_safetensors(tmp_path / "model.safetensors")
    del tensors["encoder.layer.1.output.dense.weight"]
    tensors["encoder.layer.2.output.dense.weight"] = np.zeros((16, 24), dtype=np.float32)
    save_safetensors(tmp_path / "model.safetensors", tensors)
    with pytest.raises(
        KeyError, match=r"missing encoder\.layer\.1\.output\.dense\.weight \(16, 24\)"
    ) as info:
        from_pretrained(tmp_path)
    assert "unexpected encoder.layer.2.output.dense.weight (16, 24)" in str(info.value)
    with pytest.warns(UserWarning, match=r"strict=False"):
        model, report = load_pretrained(tmp_path, strict=False)
    assert report.missing == (("encoder.layer.1.output.dense.weight", (16, 24)),)
    assert report.unexpected == (("encoder.layer.2.output.dense.weight", (16, 24)),)
    np.testing.assert_array_equal(
        model.state_dict()["encoder.layer.0.output.dense.weight"],
        tensors["encoder.layer.0.output.dense.weight"],
    )


def test_truncated_or_non_float_weights(tmp_path: Path) -> None:
    saved(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    tensors = load_safetensors(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(FormatError, match=r"model\.safetensors: ") as info:
        from_pretrained(tmp_path)
    assert info.value.path == str(tmp_path / "model.safetensors")
    tensors["pooler.dense.bias"] = np.zeros(16, dtype=np.int32)
    save_safetensors(tmp_path / "model.safetensors", tensors)
    with pytest.raises(
        FormatError, match=r"tensor 'pooler\.dense\.bias' has dtype int32; weights must be floating"
    ):
        from_pretrained(tmp_path)


def _sharded(folder: Path) -> dict[str, str]:
    save_pretrained(tiny_model(0), folder, max_shard_bytes=8192)
    return json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]


def _write_index(folder: Path, index: object) -> None:
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def test_sharded_missing_or_truncated_shard(tmp_path: Path) -> None:
    wmap = _sharded(tmp_path)
    last = sorted(set(wmap.values()))[-1]
    data = (tmp_path / last).read_bytes()
    (tmp_path / last).write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError) as info:
        from_pretrained(tmp_path)
    assert info.value.path == str(tmp_path / last)
    (tmp_path / last).unlink()
    with pytest.raises(FormatError, match=rf"shard file\(s\) {last} named in weight_map do not exist"):
        from_pretrained(tmp_path)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda w: {"metadata": {}}, r"missing key 'weight_map'"),
        (lambda w: {"weight_map": []}, r"'weight_map' must be a non-empty object"),
        (lambda w: {"weight_map": {**w, "x": "../model.safetensors"}}, r"shards must be plain file names"),
        (
            lambda w: {"weight_map": {**w, "x": "model.bin"}},
            r"weight_map\['x'\] must name a \.safetensors shard",
        ),
        (
            lambda w: {"weight_map": {**w, "extra.weight": w["pooler.dense.bias"]}},
            r"lacks tensor\(s\) \['extra",
        ),
        (
            lambda w: {"weight_map": {k: v for k, v in w.items() if k != "pooler.dense.bias"}},
            r"holds tensor\(s\) \['pooler\.dense\.bias'\] that model\.safetensors\.index\.json does not list",
        ),
    ],
)
def test_bad_shard_index(tmp_path: Path, edit: object, match: str) -> None:
    wmap = _sharded(tmp_path)
    _write_index(tmp_path, edit(wmap))  # type: ignore[operator]
    with pytest.raises(FormatError, match=match):
        from_pretrained(tmp_path)


def test_bad_arguments(tmp_path: Path) -> None:
    saved(tmp_path)
    with pytest.raises(ValueError, match=r"dtype must be float16, float32 or float64, got int32"):
        from_pretrained(tmp_path, dtype=np.int32)
    with pytest.raises(ValueError, match=r"num_labels must be a positive int or None, got 0"):
        from_pretrained(tmp_path, num_labels=0)
    with pytest.raises(TypeError, match=r"generator must be a numpy Generator or a seed >= 0, got 'x'"):
        from_pretrained(tmp_path, generator="x")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"save_pretrained: expected a BertModel"):
        save_pretrained(object(), tmp_path)  # type: ignore[arg-type]
