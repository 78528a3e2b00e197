"""`entrenar merge RUN_DIR OUT_DIR`: a run's adapter merged into its base, as a plain checkpoint folder.

    OUT_DIR/config.json, model.safetensors   a Hugging Face BertModel checkpoint (float32), loaded by
                                             `entrenar.models.from_pretrained` and transformers'
                                             AutoModel.from_pretrained alike
    OUT_DIR/head.safetensors                 the run's classifier head (pooling, label names)
    OUT_DIR/tokenizer.json, ...              the base model's tokenizer files

Each adapted layer gets W = W0 + (alpha / r) B A. What W0 is, `onto` says:

    "dequantized"  (default) the 4-bit base the adapter was trained against, dequantized: the merged
                   model computes what the trained run computes (to float rounding), and every
                   other layer of a 4-bit run holds its dequantized weight too
    "original"     the checkpoint's float weights, as PEFT merges onto an unquantized base: the
                   adapter's update lands on weights it never saw (the 4-bit rounding is undone)

For a run without quantization both are the same. The pooler is left out when the run's pooling
does not use it (transformers then initialises one, with a warning, which the head never reads).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np

from entrenar.finetune.model import HEAD_FILE, load_encoder
from entrenar.finetune.quantized import copy_file, copy_tokenizer_files
from entrenar.finetune.rundir import ADAPTER_DIR, RunError, resolve_model_dir, run_config
from entrenar.lora import PeftModel
from entrenar.lora.inject import replace_module
from entrenar.models import save_pretrained
from entrenar.nn.bert import BertModel
from entrenar.nn.layers import Linear
from entrenar.nn.module import Module
from entrenar.quant import QuantLinear

__all__ = ["MERGE_ONTO", "dequantize_linears", "merge_run"]

MERGE_ONTO = ("dequantized", "original")


def dequantize_linears(model: Module) -> list[str]:
    """Replace every QuantLinear in `model` by a float32 Linear holding its dequantized weight; names."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, QuantLinear)]
    rng = np.random.default_rng(0)  # the fresh layer's weights are overwritten at once
    for name, q in found:
        linear = Linear(q.in_features, q.out_features, bias=q.bias is not None, generator=rng)
        linear.weight.data[...] = q.dequantize_weight(np.float32)
        if q.bias is not None and linear.bias is not None:
            linear.bias.data[...] = q.bias.data
        linear.requires_grad_(False)
        replace_module(model, name, linear)
    return [name for name, _ in found]


def merge_run(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    onto: Literal["dequantized", "original"] = "dequantized",
) -> BertModel:
    """Merge the run's adapter into its base and write OUT_DIR (see the module docstring); the model."""
    if onto not in MERGE_ONTO:
        raise ValueError(f"merge: onto must be one of {list(MERGE_ONTO)}, got {onto!r}")
    run = Path(run_dir)
    config = run_config(run)
    adapter, head = run / ADAPTER_DIR, run / HEAD_FILE
    if not adapter.is_dir() or not head.is_file():
        raise RunError(f"{run}: the run did not finish (no {ADAPTER_DIR}/ or {HEAD_FILE}): nothing to merge")
    model_dir = resolve_model_dir(config.model.path)
    bert = load_encoder(config, model_dir, np.random.default_rng(config.training.seed))
    s = config.lora
    quantize = s.quantize if onto == "dequantized" else None
    peft = PeftModel.from_pretrained(
        bert,
        adapter,
        quantize=quantize,
        double_quant=s.double_quant if quantize else False,
        block_size=s.block_size,
    )
    dequantize_linears(peft)  # the adapted layers' bases and every other 4-bit layer, in float32
    merged = peft.merge_and_unload()
    assert isinstance(merged, BertModel)
    out = Path(out_dir)
    save_pretrained(merged, out)
    copy_file(head, out / HEAD_FILE)
    copy_tokenizer_files(model_dir, out)
    return merged
