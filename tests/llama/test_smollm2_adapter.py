"""The shipped causal-LM recipe's adapter on the real SmolLM2-135M-Instruct, against transformers + peft.

entrenar builds the job's model (build_causal_model: the GGUF's Q4_1 / Q8_0 blocks kept packed,
LoRA r 16 on every projection), sets every B to random values (a trained adapter's stand-in: B = 0
would make the check vacuous) and saves the adapter; peft 0.21.2 loads it on transformers'
LlamaForCausalLM from the same GGUF file, and the next-token logits must agree within 1e-3.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import peft
import pytest
import torch
from smollm2_oracle import transformers_smollm2

from entrenar.assets import AssetError, smollm2_gguf
from entrenar.autograd.tape import no_grad
from entrenar.config import load_config
from entrenar.finetune.causal import SMOLLM2_HUB_ID, build_causal_model
from entrenar.models.gguf import open_gguf
from entrenar.models.gguf_tokenizer import gguf_tokenizer

CONFIG = (
    Path(__file__).resolve().parents[2] / "src" / "entrenar" / "configs" / "smollm2-shakespeare-qlora.yaml"
)


def test_the_recipe_s_adapter_loads_in_peft_and_gives_the_same_logits(tmp_path: Path) -> None:
    try:
        path = smollm2_gguf()
    except AssetError as exc:
        pytest.skip(f"SmolLM2 GGUF not available: {exc}")
    reader = open_gguf(path)
    model = build_causal_model(load_config(CONFIG), reader, SMOLLM2_HUB_ID)
    rng = np.random.default_rng(0)
    for name, p in model.named_parameters():
        if ".lora_B." in name:
            p.data[...] = rng.standard_normal(p.shape).astype(np.float32) * 0.01
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert (cfg["task_type"], cfg["r"], cfg["lora_alpha"]) == ("CAUSAL_LM", 16, 32.0)
    assert cfg["base_model_name_or_path"] == SMOLLM2_HUB_ID

    ids = np.asarray([gguf_tokenizer(reader).tokenizer.encode("To be, or not to be, that is").ids])
    hf, _ = transformers_smollm2(path)
    tuned = peft.PeftModel.from_pretrained(hf, str(tmp_path)).eval()
    with torch.no_grad():
        want = tuned(torch.from_numpy(ids)).logits.numpy()  # (1, T, V)
        with tuned.disable_adapter():
            plain = tuned(torch.from_numpy(ids)).logits.numpy()
    model.eval()
    with no_grad():
        got = model(ids).data
    assert np.abs(got - want).max() < 1e-3
    assert np.abs(plain - want).max() > 1e-2  # the adapter changes the logits: the check means something
