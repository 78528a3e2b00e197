"""bench/bench_finetune.py's PyTorch + PEFT side trains the same model as entrenar's fine-tune job.

On a tiny BERT checkpoint written by transformers: the float32 LoRA runs give the same logits, losses
and adapter weights step by step; the QLoRA run equals torch on its dequantized base; the step-0
check raises when the two sides differ; real tokens count the attention mask.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny_bert import TINY_BERT_NO_DROPOUT as TINY

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import bench_finetune as bf

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
NUM_LABELS = 2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("peft")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_bert")
    transformers.BertModel(transformers.BertConfig(**TINY), add_pooling_layer=False).save_pretrained(folder)
    return folder


def config(folder: Path, quantize: str | None) -> Any:
    from entrenar.config import load_config

    return load_config(None, [f"model.path={folder}", f"lora.quantize={quantize or 'null'}", "lora.r=4"])


def batches(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Random (4, 10) batches, each row padded after a random length in [2, 10]."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        lengths = rng.integers(2, 11, size=4)
        mask = (np.arange(10)[None, :] < lengths[:, None]).astype(np.int64)  # (4, 10)
        ids = rng.integers(1, TINY["vocab_size"], size=(4, 10)).astype(np.int64) * mask
        out.append({"input_ids": ids, "attention_mask": mask, "labels": rng.integers(0, NUM_LABELS, 4)})
    return out


def adapters(run: Any) -> dict[str, np.ndarray]:
    if isinstance(run, bf.TorchRun):
        named = {n: p.detach().numpy() for n, p in run.encoder.named_parameters() if p.requires_grad}
        return named | {"head.weight": run.head.weight.detach().numpy()}
    named = {n: p.data for n, p in run.model.encoder.named_parameters() if p.requires_grad}
    return named | {"head.weight": run.model.classifier.weight.data}


@pytest.mark.parametrize("quantize", [None, "nf4"])
def test_torch_trains_like_entrenar(checkpoint: Path, quantize: str | None) -> None:
    cfg = config(checkpoint, quantize)
    ent = bf.EntrenarRun(cfg, checkpoint, NUM_LABELS)
    ref = bf.TorchRun(torch, cfg, checkpoint, ent, dequantized_base=quantize is not None)
    data = batches(4)
    np.testing.assert_allclose(ent.logits(data[0]), ref.logits(data[0]), atol=1e-5)
    head0 = ent.model.classifier.weight.data.copy()
    ours = [ent.step(b) for b in data]
    theirs = [ref.step(b) for b in data]
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    a, b = adapters(ent), adapters(ref)
    assert set(a) == set(b)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-5, err_msg=name)
    assert not np.allclose(a["head.weight"], head0)  # the steps trained it


def test_quantized_base_differs_from_the_float_one(checkpoint: Path) -> None:
    """Without the dequantized weights, torch computes on the float base: the check must see it."""
    cfg = config(checkpoint, "nf4")
    ent = bf.EntrenarRun(cfg, checkpoint, NUM_LABELS)
    ref = bf.TorchRun(torch, cfg, checkpoint, ent)
    diff = np.abs(ent.logits(batches(1)[0]) - ref.logits(batches(1)[0])).max()
    assert diff > bf.LOGIT_TOL


def test_step0_check_passes_and_fails(checkpoint: Path) -> None:
    configs = {"entrenar QLoRA": config(checkpoint, "nf4"), "entrenar LoRA": config(checkpoint, None)}
    runs: dict[str, Any] = {k: bf.EntrenarRun(c, checkpoint, NUM_LABELS) for k, c in configs.items()}
    runs["torch + PEFT LoRA"] = bf.TorchRun(
        torch, configs["entrenar LoRA"], checkpoint, runs["entrenar LoRA"]
    )
    batch = batches(1)[0]
    diffs = bf.check_step0(torch, configs, checkpoint, runs, batch)
    assert diffs["lora_vs_torch"] <= bf.LOGIT_TOL
    with torch.no_grad():
        runs["torch + PEFT LoRA"].head.bias.add_(1e-3)
    with pytest.raises(AssertionError, match="lora_vs_torch"):
        bf.check_step0(torch, configs, checkpoint, runs, batch)


def test_warm_up_rejects_diverging_losses(checkpoint: Path) -> None:
    cfg = config(checkpoint, None)
    ent = bf.EntrenarRun(cfg, checkpoint, NUM_LABELS)
    ref = bf.TorchRun(torch, cfg, checkpoint, ent)
    bf.warm_up({"entrenar LoRA": ent, "torch + PEFT LoRA": ref}, batches(2))
    with torch.no_grad():
        ref.head.weight.mul_(3.0)
    with pytest.raises(AssertionError, match="warm-up losses differ"):
        bf.warm_up({"entrenar LoRA": ent, "torch + PEFT LoRA": ref}, batches(2, seed=1))


def test_real_tokens_counts_the_mask() -> None:
    data = batches(3, seed=2)
    lengths = [int(np.argmin(np.append(row, 0))) for b in data for row in b["attention_mask"]]
    assert bf.real_tokens(data) == sum(lengths)
    assert bf.real_tokens(data) < sum(b["input_ids"].size for b in data)
