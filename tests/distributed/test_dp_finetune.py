"""`entrenar train CONFIG --nproc 2` (LoRA and QLoRA fine-tuning of a tiny BERT, no dropout) gives the
adapter, head and metrics of the one-process run on the same global batches (float32: rtol 1e-5)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from entrenar.cli import main
from entrenar.io import load_safetensors
from entrenar.models import save_pretrained
from entrenar.nn.bert import BertConfig, BertModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))
from tiny_run import TINY, TinySetup, tiny_config, write_config

RTOL = 1e-5


def _setup(root: Path) -> TinySetup:
    """The CLI tests' tiny model, data and tokenizer, with the model's dropout off (ranks draw other
    masks than one process, so only a dropout-free model can match it)."""
    setup = TinySetup(root, n=70)
    config = BertConfig(**TINY, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    save_pretrained(BertModel(config, generator=np.random.default_rng(0)).eval(), setup.model_dir)
    return setup


def _config(setup: TinySetup, name: str, quantize: str | None) -> Path:
    cfg: dict[str, Any] = tiny_config(
        setup.model_dir,
        setup.train_csv,
        setup.out_dir,
        data={"batch_size": 7},  # 42 training sentences: batches of 7, split 3 / 4 over two ranks
        lora={"quantize": quantize},
        training={"max_steps": 6, "eval_every": 3, "save_every": 3},
        output={"name": name},
    )
    return write_config(setup.root / f"{name}.yaml", cfg)


def _assert_close(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    scale = max(float(np.abs(v).max()) for v in a.values())
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=RTOL, atol=RTOL * scale, err_msg=k)


@pytest.mark.parametrize("quantize", [None, "nf4"], ids=["lora", "qlora"])
def test_nproc_2_equals_one_process(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], quantize: str | None
) -> None:
    setup = _setup(tmp_path)
    one, two = _config(setup, "one", quantize), _config(setup, "two", quantize)
    assert main(["train", str(one)]) == 0
    assert main(["train", str(two), "--nproc", "2"]) == 0
    printed = capfd.readouterr().out
    assert printed.count("accuracy AFTER fine-tuning") == 2  # once per run: rank 1 prints nothing
    a, b = setup.out_dir / "one", setup.out_dir / "two"
    for rel in ("adapter/adapter_model.safetensors", "head.safetensors"):
        _assert_close(load_safetensors(a / rel), load_safetensors(b / rel))
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert rb["steps"] == ra["steps"] == 6
    assert (ra["ranks"], rb["ranks"]) == (1, 2)
    for split in ra["after"]:
        for key, value in ra["after"][split].items():
            assert rb["after"][split][key] == pytest.approx(value, rel=1e-4), (split, key)
    events = [json.loads(x) for x in (b / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["split"] == "eval"] == [3, 6]
    assert sorted(p.name for p in (b / "checkpoints").iterdir() if p.is_dir()) == ["step-3", "step-6"]


def test_nproc_propagates_the_ranks_exit_status(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Bad input on every rank: each exits 2 with the message, and so does the launching command."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  no_such_key: 1\n", encoding="utf-8")
    assert main(["train", str(bad), "--nproc", "2"]) == 2
    assert "no_such_key" in capfd.readouterr().err
