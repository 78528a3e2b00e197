"""The causal-LM fine-tuning job on a tiny GGUF model: perplexity and the PEFT adapter against
transformers + peft (the oracle), the three bases, exact resume, and bad input.

The oracle loads the same GGUF file in transformers (dequantized to float32) and entrenar's adapter
with peft 0.21.2; its token-weighted perplexity over the job's validation blocks must equal the
job's BEFORE (no adapter) and AFTER (adapter) values, and its logits entrenar's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import peft
import pytest
import safetensors.numpy
import torch
import transformers
import yaml
from lm_gguf import lm_config, write_lm_gguf, write_texts

from entrenar.autograd.tape import no_grad
from entrenar.config import load_config
from entrenar.data.text import IGNORE_INDEX, LMBlocks
from entrenar.finetune import execute_job, prepare_job, run_job
from entrenar.finetune.causal import PreparedCausalJob
from entrenar.finetune.data import DataError
from entrenar.finetune.rundir import RunError, load_run
from entrenar.lora import PeftModel
from entrenar.models.gguf import llama_from_gguf
from entrenar.quant.ggml import GGMLLinear

PACKED = {
    "attn_q": "Q4_1",
    "attn_k": "Q8_0",
    "attn_v": "Q4_0",
    "attn_output": "Q4_1",
    "ffn_gate": "Q8_0",
    "ffn_up": "Q4_1",
    "ffn_down": "Q4_0",
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("lm")
    return {
        "tmp": tmp,
        "gguf": write_lm_gguf(tmp / "tiny.gguf", PACKED),
        "texts": write_texts(tmp / "texts"),
    }


@pytest.fixture(scope="module")
def job(files: dict[str, Path]) -> dict[str, Any]:
    """One run on the packed base: the prepared job (its model trained in place) and the result."""
    config = load_config(lm_config(files["tmp"], files["gguf"], files["texts"], lora__quantize="gguf"))
    prepared = prepare_job(config, log=lambda line: None)
    assert isinstance(prepared, PreparedCausalJob)
    return {"prepared": prepared, "result": execute_job(prepared, log=lambda line: None)}


def _hf(gguf_path: Path) -> Any:
    return transformers.AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    ).eval()


def _torch_perplexity(model: Any, blocks: LMBlocks) -> float:
    """exp(sum of token NLL / predicted tokens), torch's cross-entropy with ignore_index -100."""
    with torch.no_grad():
        logits = model(torch.from_numpy(blocks.input_ids)).logits  # (N, T, V)
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).double(),
            torch.from_numpy(blocks.labels).reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
    return float(np.exp(nll.item() / blocks.tokens))


def test_the_base_stays_packed_and_only_adapters_train(job: dict[str, Any]) -> None:
    model = job["prepared"].model
    kinds = {type(m.base_layer).__name__ for n, m in model.named_modules() if hasattr(m, "base_layer")}
    assert kinds == {"GGMLLinear"}
    assert sum(isinstance(m, GGMLLinear) for m in model.modules()) == 2 * 7
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)


def test_perplexity_before_and_after_equal_transformers_with_the_peft_adapter(
    files: dict[str, Path], job: dict[str, Any]
) -> None:
    result, prepared = job["result"], job["prepared"]
    val = prepared.data.validation
    hf = _hf(files["gguf"])
    before = result.before["validation"]["perplexity"]
    assert before == pytest.approx(_torch_perplexity(hf, val), rel=1e-4)
    tuned = peft.PeftModel.from_pretrained(hf, str(result.run_dir / "adapter")).eval()
    after = result.after["validation"]["perplexity"]
    assert after == pytest.approx(_torch_perplexity(tuned, val), rel=1e-4)
    assert after < 0.9 * before  # the repetitive tiny language is learnt quickly
    saved = json.loads((result.run_dir / "results.json").read_text())
    assert saved["before"]["validation"]["perplexity"] == pytest.approx(before)
    assert saved["after"]["validation"]["perplexity"] == pytest.approx(after)
    assert saved["steps"] == 12 and saved["data"]["validation_works"] == ["work_2"]
    with pytest.raises(RunError, match="is a causal_lm run"):
        load_run(result.run_dir)  # the classifier loader refuses it, naming what to do instead


def test_the_adapter_is_peft_s_format_and_its_logits_equal_transformers(
    files: dict[str, Path], job: dict[str, Any]
) -> None:
    adapter = job["result"].run_dir / "adapter"
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["task_type"] == "CAUSAL_LM" and cfg["peft_type"] == "LORA"
    assert cfg["base_model_name_or_path"] == str(files["gguf"]) and (cfg["r"], cfg["lora_alpha"]) == (4, 8)
    assert set(cfg["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    tensors = safetensors.numpy.load_file(str(adapter / "adapter_model.safetensors"))
    assert tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"].shape == (4, 64)
    assert tensors["base_model.model.model.layers.0.mlp.down_proj.lora_B.weight"].shape == (64, 4)
    assert len(tensors) == 2 * 7 * 2 and any(np.abs(v).max() > 0 for k, v in tensors.items() if "lora_B" in k)

    ids = np.random.default_rng(3).integers(0, 200, size=(2, 20))
    tuned = peft.PeftModel.from_pretrained(_hf(files["gguf"]), str(adapter)).eval()
    with torch.no_grad():
        want = tuned(torch.from_numpy(ids)).logits.numpy()
    ours = PeftModel.from_pretrained(llama_from_gguf(files["gguf"], base="float"), adapter)
    trained = job["prepared"].model
    trained.eval()
    with no_grad():
        np.testing.assert_allclose(ours(ids).data, want, atol=1e-3, rtol=0)
        np.testing.assert_allclose(trained(ids).data, want, atol=1e-3, rtol=0)  # the packed base


@pytest.mark.parametrize("quantize", [None, "nf4"])
def test_float_and_nf4_bases_train(files: dict[str, Path], job: dict[str, Any], quantize: str | None) -> None:
    name = f"base-{quantize}"
    path = lm_config(
        files["tmp"], files["gguf"], files["texts"], lora__quantize=quantize, training__max_steps=3
    )
    result = run_job(load_config(path, [f"output.name={name}"]), log=lambda line: None)
    before = result.before["validation"]["perplexity"]
    packed = job["result"].before["validation"]["perplexity"]
    if quantize is None:  # the same dequantized weights as the packed base
        assert before == pytest.approx(packed, rel=1e-5)
    else:  # re-quantized to NF4: close, not equal
        assert before != packed and before == pytest.approx(packed, rel=0.05)
    assert result.after["validation"]["perplexity"] < before
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").is_file()


def test_an_interrupted_run_resumes_to_the_same_adapter(files: dict[str, Path], job: dict[str, Any]) -> None:
    straight = job["result"].run_dir
    cut = straight.with_name("tiny-lm-cut")
    shutil.copytree(straight, cut)
    shutil.rmtree(cut / "checkpoints" / "step-12")
    (cut / "checkpoints" / "latest").write_text("step-6\n")
    shutil.rmtree(cut / "adapter")
    (cut / "results.json").unlink()
    saved = yaml.safe_load((cut / "config.yaml").read_text())
    saved["output"]["name"] = cut.name
    (cut / "config.yaml").write_text(yaml.safe_dump(saved))
    config = load_config(lm_config(files["tmp"], files["gguf"], files["texts"], lora__quantize="gguf"))
    config = config.model_copy(update={"output": config.output.model_copy(update={"name": cut.name})})
    run_job(config, resume=True, log=lambda line: None)
    want = safetensors.numpy.load_file(str(straight / "adapter" / "adapter_model.safetensors"))
    got = safetensors.numpy.load_file(str(cut / "adapter" / "adapter_model.safetensors"))
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_bad_input_is_refused_before_anything_is_written(files: dict[str, Path]) -> None:
    tmp, gguf, texts = files["tmp"], files["gguf"], files["texts"]

    def prepare(**over: Any) -> None:
        prepare_job(
            load_config(lm_config(tmp, gguf, texts, **over), ["output.name=bad"]), log=lambda line: None
        )

    with pytest.raises(DataError, match="exceeds the model's context of 48 positions"):
        prepare(causal_lm__max_length=64)
    with pytest.raises(DataError, match="validation_works 5 leaves none of its 5 works"):
        prepare(causal_lm__validation_works=5)
    with pytest.raises(DataError, match="does not exist"):
        prepare(causal_lm__texts=str(tmp / "missing"))
    with pytest.raises(FileNotFoundError, match=r"model.path .*nope\.gguf does not exist"):
        prepare(model__path=str(tmp / "nope.gguf"))
    assert not (tmp / "runs" / "bad").exists()
