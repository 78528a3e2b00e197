"""from_pretrained / save_pretrained on small random checkpoints: keys, prefixes, shards, dtypes, heads."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from bert_checkpoints import TINY, batch, saved, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from entrenar.io import load_safetensors, read_safetensors_header, save_safetensors
from entrenar.models import checkpoint_key, from_pretrained, load_pretrained, save_pretrained
from entrenar.models.bert import ENCODER_PARTS
from entrenar.nn.bert import BertForSequenceClassification, BertModel


def _same_state(model: BertModel | BertForSequenceClassification, want: dict[str, np.ndarray]) -> None:
    got = model.state_dict()
    assert list(got) == list(want)
    for k, v in want.items():
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_bert_model_round_trip(tmp_path: Path) -> None:
    want = saved(tmp_path, seed=3)
    keys = set(read_safetensors_header(tmp_path / "model.safetensors")[0])
    assert "embeddings.word_embeddings.weight" in keys and not any(k.startswith("bert.") for k in keys)
    model, report = load_pretrained(tmp_path)
    assert isinstance(model, BertModel) and not model.training
    assert report.prefix == "" and not (report.missing or report.unexpected or report.ignored)
    _same_state(model, want)
    ids, mask = batch()
    a = model(ids, mask).last_hidden_state.data
    b = tiny_model(3)(ids, mask).last_hidden_state.data
    np.testing.assert_array_equal(a, b)


def test_classifier_round_trip_keeps_its_head(tmp_path: Path) -> None:
    want = saved(tmp_path, seed=4, num_labels=3)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["BertForSequenceClassification"] and config["num_labels"] == 3
    model, report = load_pretrained(tmp_path, num_labels=3, generator=99)
    assert isinstance(model, BertForSequenceClassification)
    assert report.prefix == "bert." and report.initialised == ()
    _same_state(model, want)


def test_encoder_checkpoint_gets_a_fresh_seeded_classifier(tmp_path: Path) -> None:
    want = saved(tmp_path, seed=5)
    a, report = load_pretrained(tmp_path, num_labels=2, generator=7)
    assert set(report.initialised) == {"classifier.weight", "classifier.bias"}
    for k, v in want.items():
        np.testing.assert_array_equal(a.state_dict()[f"bert.{k}"], v)
    b = from_pretrained(tmp_path, num_labels=2, generator=np.random.default_rng(7))
    c = from_pretrained(tmp_path, num_labels=2, generator=8)
    w = a.state_dict()["classifier.weight"]
    assert w.shape == (2, TINY["hidden_size"]) and w.std() == pytest.approx(0.02, rel=0.5)
    np.testing.assert_array_equal(w, b.state_dict()["classifier.weight"])
    assert not np.array_equal(w, c.state_dict()["classifier.weight"])
    assert not a.state_dict()["classifier.bias"].any()


def test_classifier_checkpoint_into_bert_model_leaves_the_head_out(tmp_path: Path) -> None:
    want = saved(tmp_path, seed=6, num_labels=2)
    model, report = load_pretrained(tmp_path)
    assert report.prefix == "bert."
    assert dict(report.ignored) == {"classifier.weight": (2, 16), "classifier.bias": (2,)}
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, want[f"bert.{k}"])


def test_other_heads_and_position_ids_are_left_out(tmp_path: Path) -> None:
    want = saved(tmp_path, seed=1)
    tensors = load_safetensors(tmp_path / "model.safetensors")
    tensors = {f"bert.{k}": v for k, v in tensors.items()}  # as BertForPreTraining saves it
    tensors["cls.predictions.bias"] = np.zeros(TINY["vocab_size"], dtype=np.float32)
    tensors["bert.embeddings.position_ids"] = np.arange(20, dtype=np.int64)[None]
    save_safetensors(tmp_path / "model.safetensors", tensors)
    model, report = load_pretrained(tmp_path)
    assert report.ignored == (("cls.predictions.bias", (TINY["vocab_size"],)),)
    _same_state(model, want)


def test_checkpoint_without_pooler(tmp_path: Path) -> None:
    saved(tmp_path, seed=2)
    tensors = load_safetensors(tmp_path / "model.safetensors")
    save_safetensors(tmp_path / "model.safetensors", {k: v for k, v in tensors.items() if "pooler" not in k})
    model = from_pretrained(tmp_path)
    assert model.pooler is None and model(*batch()).pooler_output is None
    _, report = load_pretrained(tmp_path, num_labels=2)
    assert set(report.initialised) == {
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
        "classifier.weight",
        "classifier.bias",
    }


@pytest.mark.parametrize("half", ["float16", "bfloat16"])
def test_half_precision_checkpoints_widen_exactly(tmp_path: Path, half: str) -> None:
    want = saved(tmp_path, seed=8)
    dt = np.dtype(ml_dtypes.bfloat16) if half == "bfloat16" else np.dtype(np.float16)
    halves = {k: v.astype(dt) for k, v in load_safetensors(tmp_path / "model.safetensors").items()}
    save_safetensors(tmp_path / "model.safetensors", halves)
    assert {i.dtype for i in read_safetensors_header(tmp_path / "model.safetensors")[0].values()} == {
        "BF16" if half == "bfloat16" else "F16"
    }
    for dtype in (np.float32, np.float64):
        model = from_pretrained(tmp_path, dtype=dtype)
        for k, v in model.state_dict().items():
            assert v.dtype == dtype
            np.testing.assert_array_equal(v, want[k].astype(dt).astype(dtype), err_msg=k)
            assert np.abs(v - want[k]).max() <= np.abs(want[k]).max() * 2.0**-8  # a half's rounding


@pytest.mark.parametrize("num_labels", [None, 2])
def test_sharded_round_trip(tmp_path: Path, num_labels: int | None) -> None:
    model = tiny_model(9, num_labels=num_labels)
    files = save_pretrained(model, tmp_path, max_shard_bytes=4096)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
    assert {p.name for p in files} == {"config.json", "model.safetensors.index.json", *shards}
    for shard in shards:  # every shard within the limit unless it holds one tensor
        infos = read_safetensors_header(tmp_path / shard)[0]
        size = sum(i.data_offsets[1] - i.data_offsets[0] for i in infos.values())
        assert size <= 4096 or len(infos) == 1
    loaded = from_pretrained(tmp_path, num_labels=num_labels, generator=123)
    _same_state(loaded, model.state_dict())
    # writing the single-file form again replaces the index, so the folder reads as written last
    save_pretrained(tiny_model(10), tmp_path)
    assert not (tmp_path / "model.safetensors.index.json").exists()
    _same_state(from_pretrained(tmp_path), tiny_model(10).state_dict())


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.from_regex(r"[a-z_]{1,8}(\.[a-z0-9_]{1,8}){0,4}", fullmatch=True), unique=True, max_size=30)
)
def test_key_mapping_inverse_is_derived_and_one_to_one(names: list[str]) -> None:
    """For BertModel keys and BertForSequenceClassification keys, mapping and inverse agree for both
    prefixes; encoder keys gain exactly the prefix, head keys are unchanged."""
    encoder = [f"{p}{n}" for p in ENCODER_PARTS for n in names]
    heads = [f"classifier.{n}" for n in names]
    for ours, strip in ((encoder, ""), ([f"bert.{k}" for k in encoder] + heads, "bert.")):
        for prefix in ("", "bert."):
            mapped = {checkpoint_key(k, prefix): k for k in ours}
            assert len(mapped) == len(ours)
            for ck, k in mapped.items():
                body = k.removeprefix(strip)
                assert ck == (prefix + body if body.startswith(ENCODER_PARTS) else k)
