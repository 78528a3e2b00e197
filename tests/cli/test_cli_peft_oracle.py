"""A run's files in the reference stack: peft loads the adapter on Hugging Face's BertModel, and
transformers loads the merged checkpoint; both compute what entrenar computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_run import TinySetup

from entrenar.cli import main
from entrenar.config import load_config
from entrenar.finetune.model import load_encoder
from entrenar.lora import PeftModel
from entrenar.models import from_pretrained, load_tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

SENTENCES = ["the movie was great fun", "a dull and boring plot ."]


def _batch(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    return load_tokenizer(folder).encode_batch(SENTENCES, max_length=16)


def _hf_hidden(model: object, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))  # type: ignore[operator]
    return out.last_hidden_state.numpy()


def test_peft_loads_the_adapter_on_the_hugging_face_model(finished: TinySetup) -> None:
    config = load_config(finished.run_dir / "config.yaml")
    ids, mask = _batch(finished.model_dir)
    hf = transformers.AutoModel.from_pretrained(finished.model_dir, attn_implementation="eager").eval()
    hf_lora = peft.PeftModel.from_pretrained(hf, finished.run_dir / "adapter").eval()
    got = _hf_hidden(hf_lora, ids, mask)
    # the same adapter on entrenar's float BertModel (PEFT has no NF4 on CPU: both bases are float)
    bert = load_encoder(config, finished.model_dir, np.random.default_rng(0))
    ours = PeftModel.from_pretrained(bert, finished.run_dir / "adapter").eval()
    want = ours(ids, mask).last_hidden_state.data
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    plain = transformers.AutoModel.from_pretrained(finished.model_dir, attn_implementation="eager").eval()
    without = _hf_hidden(plain, ids, mask)  # (peft injected the adapter into `hf` itself)
    assert np.abs(got - without).max() > 1e-4  # the adapter changes what the model computes


def test_transformers_loads_the_merged_checkpoint(finished: TinySetup, tmp_path: Path) -> None:
    out = tmp_path / "merged"
    assert main(["merge", str(finished.run_dir), str(out)]) == 0
    ids, mask = _batch(out)
    hf = transformers.AutoModel.from_pretrained(out, attn_implementation="eager").eval()
    ours = from_pretrained(out)
    np.testing.assert_allclose(
        _hf_hidden(hf, ids, mask), ours(ids, mask).last_hidden_state.data, rtol=1e-4, atol=1e-5
    )
