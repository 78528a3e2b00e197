"""LoRA (PEFT names) on the Llama decoder: float and NF4 bases from a GGUF file train only the adapters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_gguf import CFG, tiny_hf, write_tiny_gguf

from entrenar import functional as F
from entrenar.lora import LoraConfig, get_peft_model
from entrenar.models.gguf import llama_from_gguf

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.mark.parametrize("base", ["float", "nf4"])
def test_lora_on_llama_trains_only_adapters(tmp_path: Path, base: str) -> None:
    path = write_tiny_gguf(tmp_path / "m.gguf", tiny_hf(), {"ffn_up": "Q8_0", "attn_q": "Q4_1"})
    model = llama_from_gguf(path, base=base, nf4_block_size=32)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS), generator=0)
    names = [n for n, p in peft.named_parameters() if p.requires_grad]
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    assert any("model.model.layers.1.mlp.down_proj.lora_B." in n for n in names)
    ids = np.random.default_rng(0).integers(0, CFG["vocab_size"], size=(2, 6))
    logits = peft(ids)  # (B, T, V)
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, CFG["vocab_size"]), ids[:, 1:].reshape(-1))
    loss.backward()
    grads = {n: p.grad for n, p in peft.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    assert any(np.abs(g).max() > 0 for n, g in grads.items() if ".lora_B." in n)
