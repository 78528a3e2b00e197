"""A run directory: what a fine-tuning run writes, and loading a finished run back as a classifier.

    runs/<name>/
        config.yaml          the config as run (every field; model, data and output paths absolute)
        adapter/             adapter_config.json + adapter_model.safetensors: PEFT's format, keys for
                             Hugging Face's BertModel (base_model.model.encoder.layer.N...)
        head.safetensors     classifier.weight (K, C), classifier.bias (K,); metadata: pooling and
                             label_names (JSON)
        probe.json           accuracy before fine-tuning (the linear probe)
        results.json         accuracy before and after, steps, times, peak memory
        metrics.jsonl        one JSON line per log / evaluation (the Trainer's)
        plot.png             loss and accuracy against step
        checkpoints/         step-N/ folders and `latest`, for --resume

    run = load_run("runs/minilm-sentiment-qlora")      # FinishedRun: config, model, tokenizer, labels
    probabilities = run.predict(["a gorgeous film"])   # (1, K)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from entrenar.assets import minilm_dir
from entrenar.autograd.tape import no_grad
from entrenar.config import MINILM, ConfigError, RunConfig, read_yaml, validate_config
from entrenar.finetune.model import HEAD_FILE, SequenceClassifier, load_encoder, read_head
from entrenar.io import atomic_write_text
from entrenar.lora import PeftModel
from entrenar.models import PretrainedTokenizer, load_tokenizer, read_bert_config
from entrenar.train.checkpoint import CHECKPOINTS_DIR

__all__ = [
    "ADAPTER_DIR",
    "CONFIG_FILE",
    "PROBE_FILE",
    "RESULTS_FILE",
    "FinishedRun",
    "RunError",
    "effective_max_length",
    "load_run",
    "read_json_file",
    "resolve_model_dir",
    "write_json_file",
]

CONFIG_FILE = "config.yaml"
ADAPTER_DIR = "adapter"
PROBE_FILE = "probe.json"
RESULTS_FILE = "results.json"


class RunError(ValueError):
    """A run directory that cannot be used as asked (missing, unfinished, or already there)."""


def resolve_model_dir(path: str) -> Path:
    """The checkpoint folder model.path names ("minilm": the cached all-MiniLM-L6-v2, fetched once),
    after checking that its config.json describes a BERT model (errors name the folder)."""
    folder = minilm_dir() if path == MINILM else Path(path)
    read_bert_config(folder)  # FileNotFoundError / FormatError / UnsupportedModelError naming the file
    return folder


def effective_max_length(config: RunConfig, model_dir: Path) -> tuple[int, str | None]:
    """(data.max_length capped at the model's max_position_embeddings, a note when it was capped)."""
    limit = read_bert_config(model_dir).max_position_embeddings
    wanted = config.data.max_length
    if wanted <= limit:
        return wanted, None
    return limit, (
        f"note: data.max_length {wanted} is above the model's maximum of {limit} positions; "
        f"sequences are truncated to {limit} tokens"
    )


def write_json_file(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def read_json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"{path}: cannot be read as JSON ({exc})") from None


def run_config(run_dir: Path) -> RunConfig:
    """The config a run was made with (its config.yaml); RunError when the folder is no run."""
    if not run_dir.is_dir():
        what = "is a file" if run_dir.exists() else "does not exist"
        raise RunError(f"run directory {run_dir} {what}: expected a folder written by entrenar train")
    file = run_dir / CONFIG_FILE
    if not file.is_file():
        raise RunError(f"{run_dir} is not a run directory: it has no {CONFIG_FILE}")
    try:
        return validate_config(read_yaml(file), f"config {file}")
    except ConfigError as exc:
        raise RunError(str(exc)) from None


@dataclass
class FinishedRun:
    """A trained run loaded back: its config, the classifier (eval mode), tokenizer and label names."""

    path: Path
    config: RunConfig
    model: SequenceClassifier
    tokenizer: PretrainedTokenizer
    label_names: tuple[str, ...]
    model_dir: Path
    max_length: int

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.tokenizer.encode_batch(texts, max_length=self.max_length)

    def predict(self, texts: list[str]) -> np.ndarray:
        """Class probabilities (N, K) of `texts` (softmax of the logits), data.eval_batch_size at a time."""
        chunk = self.config.data.eval_batch_size
        out = []
        for i in range(0, len(texts), chunk):
            ids, mask = self.encode(texts[i : i + chunk])
            with no_grad():
                logits = self.model(ids, mask).data.astype(np.float64)  # (n, K)
            z = np.exp(logits - logits.max(axis=1, keepdims=True))
            out.append(z / z.sum(axis=1, keepdims=True))
        return np.concatenate(out) if out else np.zeros((0, len(self.label_names)))


def load_run(path: str | os.PathLike[str]) -> FinishedRun:
    """The classifier of a finished run: the base model from its config (quantized as trained), the
    adapter from adapter/, the head from head.safetensors."""
    run_dir = Path(path)
    config = run_config(run_dir)
    if config.task == "causal_lm":
        raise RunError(
            f"{run_dir} is a causal_lm run (a language model, not a classifier): load its adapter with "
            f"PeftModel.from_pretrained(llama_from_gguf(<the GGUF>), '{run_dir / ADAPTER_DIR}')"
        )
    adapter, head = run_dir / ADAPTER_DIR, run_dir / HEAD_FILE
    if not adapter.is_dir() or not head.is_file():
        hint = (
            f"; it has checkpoints: continue it with `entrenar train {run_dir / CONFIG_FILE} --resume`"
            if (run_dir / CHECKPOINTS_DIR).is_dir()
            else ""
        )
        raise RunError(f"{run_dir}: the run did not finish (no {ADAPTER_DIR}/ or {HEAD_FILE}){hint}")
    model_dir = resolve_model_dir(config.model.path)
    bert = load_encoder(config, model_dir, np.random.default_rng(config.training.seed))
    head_state, pooling, labels = read_head(head, bert.config.hidden_size)
    s = config.lora
    encoder = PeftModel.from_pretrained(
        bert,
        adapter,
        quantize=s.quantize,
        double_quant=s.double_quant if s.quantize else False,
        block_size=s.block_size,
    )
    model = SequenceClassifier(
        encoder, bert.config.hidden_size, len(labels), pooling, generator=np.random.default_rng(0)
    )
    model.classifier.load_state_dict(head_state)
    model.eval()
    max_length, _ = effective_max_length(config, model_dir)
    return FinishedRun(run_dir, config, model, load_tokenizer(model_dir), labels, model_dir, max_length)
