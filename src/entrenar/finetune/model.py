"""The fine-tuned classifier: a BERT encoder (QLoRA adapters on a 4-bit base) -> pooling -> linear head.

    model = build_classifier(run_config, model_dir, num_labels)     # SequenceClassifier
    logits = model(input_ids, attention_mask)                       # (B, T) -> (B, num_labels)

The encoder is the checkpoint's BertModel wrapped by `get_peft_model`, so the adapter it saves has
the keys PEFT expects on Hugging Face's BertModel (`base_model.model.encoder.layer.N...lora_A.weight`)
and loads there with `peft.PeftModel.from_pretrained(AutoModel.from_pretrained(base), adapter)`.
The head is separate (it reads a pooled vector, which Hugging Face's BertFor* heads do not), saved
as head.safetensors with its pooling named in the run's config.

Pooling of the last hidden states h (B, T, C) with the attention mask m (B, T):

    mean     sum_t m[b, t] h[b, t] / sum_t m[b, t]      (sentence-transformers' pooling, MiniLM's own)
    cls      h[b, 0]                                    (the [CLS] token)
    pooler   tanh(W h[b, 0] + b)                        (BERT's pooler; the checkpoint must have one)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from entrenar.config import RunConfig
from entrenar.io import FormatError, load_safetensors, read_safetensors_header, save_safetensors
from entrenar.lora import LoraConfig, get_peft_model
from entrenar.models import from_pretrained
from entrenar.nn.bert import BertModel
from entrenar.nn.layers import Dropout, Linear
from entrenar.nn.module import Module
from entrenar.tensor import Tensor, TensorLike

__all__ = [
    "HEAD_FILE",
    "POOLINGS",
    "SequenceClassifier",
    "build_classifier",
    "load_encoder",
    "lora_config",
    "read_head",
    "write_head",
]

POOLINGS = ("mean", "cls", "pooler")
HEAD_FILE = "head.safetensors"


def _mask(attention_mask: TensorLike | None, shape: tuple[int, ...]) -> np.ndarray:
    if attention_mask is None:
        return np.ones(shape, dtype=np.float32)
    m = attention_mask.data if isinstance(attention_mask, Tensor) else np.asarray(attention_mask)
    if m.shape != shape:
        raise ValueError(f"attention_mask must have the input_ids' shape {shape}, got {m.shape}")
    return m.astype(np.float32)


class SequenceClassifier(Module):
    """`encoder` (a BertModel or a PeftModel over one) -> pooling -> dropout -> `classifier` (Linear).

    forward(input_ids (B, T), attention_mask (B, T) = None, token_type_ids = None) -> logits (B, K).
    """

    def __init__(
        self,
        encoder: Module,
        hidden_size: int,
        num_labels: int,
        pooling: str,
        *,
        dropout: float = 0.0,
        generator: np.random.Generator,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"SequenceClassifier: pooling must be one of {list(POOLINGS)}, got {pooling!r}")
        self.encoder = encoder
        self.pooling = pooling
        self.dropout = Dropout(dropout, generator=generator)
        self.classifier = Linear(hidden_size, num_labels, generator=generator)

    def pool(
        self, input_ids: TensorLike, attention_mask: TensorLike | None = None, token_type_ids: Any = None
    ) -> Tensor:
        """The sentence vectors (B, C) the head reads (see the module docstring)."""
        out = self.encoder(input_ids, attention_mask, token_type_ids)
        h = out.last_hidden_state  # (B, T, C)
        if self.pooling == "pooler":
            if out.pooler_output is None:
                raise ValueError("pooling 'pooler' needs an encoder with a pooler; this one has none")
            pooled: Tensor = out.pooler_output
            return pooled
        if self.pooling == "cls":
            return h[:, 0]  # (B, T, C) -> (B, C)
        m = _mask(attention_mask, tuple(h.shape[:2]))
        weights = m / np.maximum(m.sum(axis=1, keepdims=True), 1.0)  # (B, T): 1 / count on real tokens
        # (B, 1, T) @ (B, T, C) -> (B, 1, C) -> (B, C)
        return (Tensor(weights[:, None, :]) @ h).reshape(h.shape[0], h.shape[2])

    def forward(
        self, input_ids: TensorLike, attention_mask: TensorLike | None = None, token_type_ids: Any = None
    ) -> Tensor:
        logits: Tensor = self.classifier(self.dropout(self.pool(input_ids, attention_mask, token_type_ids)))
        return logits


def lora_config(config: RunConfig, base_model: str | None = None) -> LoraConfig:
    """PEFT's LoraConfig for the run's `lora` section (task FEATURE_EXTRACTION: the encoder alone)."""
    s = config.lora
    return LoraConfig(
        r=s.r,
        lora_alpha=s.alpha,
        lora_dropout=s.dropout,
        target_modules=list(s.target_modules),
        task_type="FEATURE_EXTRACTION",
        base_model_name_or_path=base_model,
    )


def _set_dropout(model: Module, p: float) -> None:
    """Every dropout inside `model` (Dropout layers and attention-probability dropout) set to p."""
    for m in model.modules():
        if isinstance(m, Dropout):
            m.p = float(p)
        elif hasattr(m, "dropout_p"):
            m.dropout_p = float(p)


def load_encoder(config: RunConfig, model_dir: Path, generator: np.random.Generator) -> BertModel:
    """The checkpoint's BertModel, its pooler dropped unless pooling is "pooler", dropout as configured."""
    bert = from_pretrained(model_dir, generator=generator)
    if config.model.pooling == "pooler":
        if bert.pooler is None:
            raise ValueError(
                f"model.pooling is 'pooler' but {model_dir} has no pooler weights "
                "(pooler.dense.*): use pooling 'mean' or 'cls'"
            )
    else:
        bert.pooler = None  # never used: no need to compute, quantize or count it
    if config.model.encoder_dropout is not None:
        _set_dropout(bert, config.model.encoder_dropout)
    return bert


def build_classifier(
    config: RunConfig, model_dir: Path, num_labels: int, *, base_name: str | None = None
) -> SequenceClassifier:
    """The run's model, as at step 0: encoder loaded (4-bit when lora.quantize is set) with fresh
    adapters (B = 0) and a fresh head, all drawn from np.random.default_rng(training.seed)."""
    rng = np.random.default_rng(config.training.seed)
    bert = load_encoder(config, model_dir, rng)
    s = config.lora
    encoder = get_peft_model(
        bert,
        lora_config(config, base_name),
        generator=rng,
        quantize=s.quantize,
        double_quant=s.double_quant if s.quantize else False,
        block_size=s.block_size,
    )
    return SequenceClassifier(
        encoder,
        bert.config.hidden_size,
        num_labels,
        config.model.pooling,
        dropout=config.model.classifier_dropout,
        generator=rng,
    )


def write_head(model: SequenceClassifier, path: Path, label_names: tuple[str, ...]) -> None:
    """head.safetensors: classifier.weight (K, C) and classifier.bias (K,), the pooling and the label
    names (JSON) in the metadata."""
    tensors = {f"classifier.{k}": v for k, v in model.classifier.state_dict().items()}
    meta = {"pooling": model.pooling, "label_names": json.dumps(list(label_names))}
    save_safetensors(path, tensors, meta)


def read_head(path: Path, hidden_size: int) -> tuple[dict[str, np.ndarray], str, tuple[str, ...]]:
    """(classifier state dict, pooling, label names) from head.safetensors, checked against the encoder."""
    infos, meta = read_safetensors_header(path)
    want = {"classifier.weight", "classifier.bias"}
    if set(infos) != want:
        raise FormatError(path, f"expected the tensors {sorted(want)}, found {sorted(infos)}")
    try:
        labels = json.loads(meta.get("label_names", ""))
    except json.JSONDecodeError:
        labels = None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels) or not labels:
        raise FormatError(path, "the metadata must hold label_names, a JSON list of strings")
    pooling = meta.get("pooling")
    if pooling not in POOLINGS:
        raise FormatError(path, f"the metadata's pooling must be one of {list(POOLINGS)}, got {pooling!r}")
    tensors = load_safetensors(path)
    w, b = tensors["classifier.weight"], tensors["classifier.bias"]
    if w.shape != (len(labels), hidden_size) or b.shape != (len(labels),):
        raise FormatError(
            path,
            f"classifier.weight {w.shape} and classifier.bias {b.shape} do not fit {len(labels)} labels "
            f"on a hidden size of {hidden_size}",
        )
    return {"weight": w, "bias": b}, str(pooling), tuple(labels)
