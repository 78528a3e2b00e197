"""A BERT encoder whose module and parameter names are exactly Hugging Face's `BertModel`'s.

    embeddings.{word_embeddings, position_embeddings, token_type_embeddings, LayerNorm}
    encoder.layer.N.attention.self.{query, key, value}
    encoder.layer.N.attention.output.{dense, LayerNorm}
    encoder.layer.N.intermediate.dense
    encoder.layer.N.output.{dense, LayerNorm}
    pooler.dense

`BertForSequenceClassification` wraps it as `bert.` plus `classifier`, so a Hugging Face state dict
loads by name with `load_state_dict`. The layers are post-LN as BERT's: x = LN(x + sublayer(x)).
Attention masks are Hugging Face's: (B, S), 1 / True for real tokens, 0 / False for padding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from entrenar import functional as F
from entrenar.nn import init
from entrenar.nn.attention import _head_dim, multi_head_attention
from entrenar.nn.checkpoint import checkpoint
from entrenar.nn.layers import Dropout, Embedding, LayerNorm, Linear
from entrenar.nn.module import IncompatibleKeys, Module
from entrenar.tensor import Tensor, TensorLike

__all__ = [
    "BaseModelOutputWithPooling",
    "BertConfig",
    "BertForSequenceClassification",
    "BertModel",
    "BertPreTrainedModel",
]

# Hugging Face's ACT2FN names for the activations BERT checkpoints use
_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


@dataclass(frozen=True)
class BertConfig:
    """Hugging Face's `BertConfig` fields (and defaults) that shape the model; validated on construction."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    num_labels: int = 2
    classifier_dropout: float | None = None

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
            "num_labels",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"BertConfig: {name} must be a positive int, got {v!r}")
        _head_dim("BertConfig", self.hidden_size, self.num_attention_heads)
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"BertConfig: hidden_act must be one of {sorted(_ACTIVATIONS)}, got {self.hidden_act!r}"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout"):
            p = getattr(self, name)
            if p is not None and not 0.0 <= p < 1.0:
                raise ValueError(f"BertConfig: {name} must be in [0, 1), got {p!r}")
        if not self.layer_norm_eps > 0 or not self.initializer_range > 0:
            raise ValueError("BertConfig: layer_norm_eps and initializer_range must be positive")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"BertConfig: pad_token_id {self.pad_token_id} must be in [0, vocab_size)")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BertConfig:
        """A config from a Hugging Face config.json dict: known fields taken, unknown keys ignored.

        num_labels, when absent, is the length of id2label if that is present (as HF derives it).
        """
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        if "num_labels" not in kwargs and isinstance(d.get("id2label"), Mapping):
            kwargs["num_labels"] = len(d["id2label"])
        return cls(**kwargs)


class BaseModelOutputWithPooling(NamedTuple):
    """What `BertModel` returns: last_hidden_state (B, T, C) and pooler_output (B, C) or None."""

    last_hidden_state: Tensor
    pooler_output: Tensor | None


def _as_ids(name: str, x: TensorLike, shape: tuple[int, ...] | None = None) -> np.ndarray:
    ids = x.data if isinstance(x, Tensor) else np.asarray(x)
    if ids.dtype.kind not in "iu" or ids.ndim != 2 or (shape is not None and ids.shape != shape):
        want = f"shape {shape}" if shape is not None else "shape (batch, length)"
        raise ValueError(f"Bert: {name} must be integer ids of {want}, got {ids.dtype} {ids.shape}")
    return ids


class BertEmbeddings(Module):
    """word + position + token-type embeddings, then LayerNorm and dropout."""

    def __init__(self, c: BertConfig, dtype: Any, rng: np.random.Generator) -> None:
        super().__init__()
        self.max_positions = c.max_position_embeddings
        self.word_embeddings = Embedding(
            c.vocab_size, c.hidden_size, c.pad_token_id, dtype=dtype, generator=rng
        )
        self.position_embeddings = Embedding(
            c.max_position_embeddings, c.hidden_size, dtype=dtype, generator=rng
        )
        self.token_type_embeddings = Embedding(c.type_vocab_size, c.hidden_size, dtype=dtype, generator=rng)
        self.LayerNorm = LayerNorm(c.hidden_size, eps=c.layer_norm_eps, dtype=dtype)
        self.dropout = Dropout(c.hidden_dropout_prob, generator=rng)

    def forward(self, input_ids: np.ndarray, token_type_ids: np.ndarray) -> Tensor:
        T = input_ids.shape[1]
        if self.max_positions < T:
            raise ValueError(
                f"Bert: sequence length {T} exceeds max_position_embeddings {self.max_positions}"
            )
        pos = np.arange(T, dtype=np.int64)
        # (B, T, C) + (T, C) + (B, T, C)
        x = (
            self.word_embeddings(input_ids)
            + self.position_embeddings(pos)
            + self.token_type_embeddings(token_type_ids)
        )
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(Module):
    """query, key, value projections and multi-head attention (no output projection: see BertSelfOutput)."""

    def __init__(self, c: BertConfig, dtype: Any, rng: np.random.Generator) -> None:
        super().__init__()
        self.num_attention_heads = c.num_attention_heads
        self.query = Linear(c.hidden_size, c.hidden_size, dtype=dtype, generator=rng)
        self.key = Linear(c.hidden_size, c.hidden_size, dtype=dtype, generator=rng)
        self.value = Linear(c.hidden_size, c.hidden_size, dtype=dtype, generator=rng)
        self.dropout_p = c.attention_probs_dropout_prob
        self.generator = rng

    def forward(self, x: Tensor, attention_mask: TensorLike | None) -> Tensor:
        # (B, T, C) -> (B, T, C), heads split and merged inside
        return multi_head_attention(
            self.query(x),
            self.key(x),
            self.value(x),
            self.num_attention_heads,
            attention_mask=attention_mask,
            dropout_p=self.dropout_p if self.training else 0.0,
            generator=self.generator,
        )


class BertSelfOutput(Module):
    """LayerNorm(dropout(dense(h)) + x): the attention's output projection and post-LN residual."""

    def __init__(self, c: BertConfig, dtype: Any, rng: np.random.Generator) -> None:
        super().__init__()
        self.dense = Linear(c.hidden_size, c.hidden_size, dtype=dtype, generator=rng)
        self.LayerNorm = LayerNorm(c.hidden_size, eps=c.layer_norm_eps, dtype=dtype)
        self.dropout = Dropout(c.hidden_dropout_prob, generator=rng)

    def forward(self, h: Tensor, x: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + x)


class BertAttention(Module):
    """`self` (BertSelfAttention) then `output` (BertSelfOutput), Hugging Face's nesting."""

    def __init__(self, c: BertConfig, dtype: Any, rng: np.random.Generator) -> None:
        super().__init__()
        self.self = BertSelfAttention(c, dtype, rng)
        self.output = BertSelfOutput(c, dtype, rng)

    def forward(self, x: Tensor, attention_mask: TensorLike | None) -> Tensor:
        return self.output(self.self(x, attention_mask), x)


class BertIntermediate(Module):
    """act(dense(x)): (B, T, hidden) -> (B, T, intermediate)."""

    def __init__(self, c: BertConfig, dtype: Any, rng: np.random.Generator) -> None:
        super().__init__()
        self.dense = Linear(c.hidden_size, c.intermediate_size, dtype=dtype, generator=rng)
        self.hidden_act = c.hidden_act

    def forward(self, x: Tensor) -> Tensor:
        return _ACTIVATIONS[self.hidden_act](self.dense(x))


class BertOutput(Module):
    """LayerNorm(dropout(dense(h)) + x): (B, T, intermediate) -> (B, T, hidden), post-LN residual."""

    def __init__(self, c: BertConfig, dtype: Any, rng: np.random.Generator) -> None:
        super().__init__()
        self.dense = Linear(c.intermediate_size, c.hidden_size, dtype=dtype, generator=rng)
        self.LayerNorm = LayerNorm(c.hidden_size, eps=c.layer_norm_eps, dtype=dtype)
        self.dropout = Dropout(c.hidden_dropout_prob, generator=rng)

    def forward(self, h: Tensor, x: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + x)


class BertLayer(Module):
    """attention, then intermediate and output: one post-LN encoder layer."""

    def __init__(self, c: BertConfig, dtype: Any, rng: np.random.Generator) -> None:
        super().__init__()
        self.attention = BertAttention(c, dtype, rng)
        self.intermediate = BertIntermediate(c, dtype, rng)
        self.output = BertOutput(c, dtype, rng)

    def forward(self, x: Tensor, attention_mask: TensorLike | None) -> Tensor:
        a = self.attention(x, attention_mask)
        return self.output(self.intermediate(a), a)


class BertEncoder(Module):
    """`layer`: a list of num_hidden_layers BertLayers. With `gradient_checkpointing` set, each layer
    runs under `entrenar.nn.checkpoint.checkpoint` while training (recomputed in backward)."""

    def __init__(self, c: BertConfig, dtype: Any, rng: np.random.Generator) -> None:
        super().__init__()
        self.layer = [BertLayer(c, dtype, rng) for _ in range(c.num_hidden_layers)]
        self.gradient_checkpointing = False

    def forward(self, x: Tensor, attention_mask: TensorLike | None) -> Tensor:
        recompute = self.gradient_checkpointing and self.training
        for layer in self.layer:
            x = checkpoint(layer, x, attention_mask) if recompute else layer(x, attention_mask)
        return x


class BertPooler(Module):
    """tanh(dense(x[:, 0])): the first ([CLS]) token's hidden state, (B, T, C) -> (B, C)."""

    def __init__(self, c: BertConfig, dtype: Any, rng: np.random.Generator) -> None:
        super().__init__()
        self.dense = Linear(c.hidden_size, c.hidden_size, dtype=dtype, generator=rng)

    def forward(self, x: Tensor) -> Tensor:
        return self.dense(x[:, 0]).tanh()  # (B, T, C) -> (B, C)


def _hf_init(module: Module, std: float, rng: np.random.Generator) -> None:
    """Hugging Face's BERT `_init_weights`: Linear and Embedding N(0, std), padding row and biases 0,
    LayerNorm 1 and 0."""
    for m in module.modules():
        if isinstance(m, (Linear, Embedding)):
            init.normal_(m.weight, 0.0, std, generator=rng)
            if isinstance(m, Linear) and m.bias is not None:
                init.zeros_(m.bias)
            if isinstance(m, Embedding) and m.padding_idx is not None:
                m.weight.data[m.padding_idx] = 0
        elif isinstance(m, LayerNorm):
            m.reset_parameters()


class BertPreTrainedModel(Module):
    """Loads state dicts as Hugging Face does: a `position_ids` key (a buffer that older checkpoints
    saved, e.g. `embeddings.position_ids`) is ignored rather than reported as unexpected."""

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True) -> IncompatibleKeys:
        kept = {k: v for k, v in state_dict.items() if k.rpartition(".")[2] != "position_ids"}
        return super().load_state_dict(kept, strict)

    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict[str, Any] | None = None
    ) -> None:
        """Recompute each encoder layer in backward while training (Hugging Face's method name);
        only {"use_reentrant": False} may be given as gradient_checkpointing_kwargs."""
        kwargs = dict(gradient_checkpointing_kwargs or {})
        if kwargs.pop("use_reentrant", False) or kwargs:
            raise ValueError(
                f"gradient_checkpointing_enable: unsupported gradient_checkpointing_kwargs "
                f"{gradient_checkpointing_kwargs!r}; only {{'use_reentrant': False}} is accepted"
            )
        self._set_checkpointing(True)

    def gradient_checkpointing_disable(self) -> None:
        self._set_checkpointing(False)

    @property
    def is_gradient_checkpointing(self) -> bool:
        return any(m.gradient_checkpointing for m in self.modules() if isinstance(m, BertEncoder))

    def _set_checkpointing(self, on: bool) -> None:
        for m in self.modules():
            if isinstance(m, BertEncoder):
                m.gradient_checkpointing = on


class BertModel(BertPreTrainedModel):
    """BERT encoder: forward(input_ids (B, T), attention_mask=None, token_type_ids=None)
    -> BaseModelOutputWithPooling(last_hidden_state (B, T, C), pooler_output (B, C) or None).

    attention_mask (B, T): 1 / True for real tokens, 0 / False for padding (none: all real);
    token_type_ids default to zeros. Initialised as Hugging Face's BERT from `generator`, which the
    model keeps for its dropout masks. add_pooling_layer=False leaves out `pooler`.
    """

    def __init__(
        self,
        config: BertConfig,
        add_pooling_layer: bool = True,
        *,
        dtype: Any = np.float32,
        generator: np.random.Generator,
    ) -> None:
        super().__init__()
        if not isinstance(config, BertConfig):
            raise TypeError(f"BertModel: config must be a BertConfig, got {type(config).__name__}")
        self.config = config
        self.embeddings = BertEmbeddings(config, dtype, generator)
        self.encoder = BertEncoder(config, dtype, generator)
        self.pooler = BertPooler(config, dtype, generator) if add_pooling_layer else None
        _hf_init(self, config.initializer_range, generator)

    def forward(
        self,
        input_ids: TensorLike,
        attention_mask: TensorLike | None = None,
        token_type_ids: TensorLike | None = None,
    ) -> BaseModelOutputWithPooling:
        ids = _as_ids("input_ids", input_ids)
        types = (
            np.zeros_like(ids)
            if token_type_ids is None
            else _as_ids("token_type_ids", token_type_ids, ids.shape)
        )
        x = self.embeddings(ids, types)  # (B, T) -> (B, T, C)
        x = self.encoder(x, attention_mask)
        return BaseModelOutputWithPooling(x, None if self.pooler is None else self.pooler(x))


class BertForSequenceClassification(BertPreTrainedModel):
    """`bert` (BertModel) -> dropout -> `classifier` (hidden -> num_labels) on the pooled output.

    forward(input_ids, attention_mask=None, token_type_ids=None, labels=None) -> logits (B, num_labels),
    or (logits, loss) given labels: cross-entropy for integer labels, mean squared error when
    num_labels == 1 (regression), as Hugging Face.
    """

    def __init__(
        self, config: BertConfig, *, dtype: Any = np.float32, generator: np.random.Generator
    ) -> None:
        super().__init__()
        self.config = config
        self.num_labels = config.num_labels
        self.bert = BertModel(config, dtype=dtype, generator=generator)
        p = config.hidden_dropout_prob if config.classifier_dropout is None else config.classifier_dropout
        self.dropout = Dropout(p, generator=generator)
        self.classifier = Linear(config.hidden_size, config.num_labels, dtype=dtype, generator=generator)
        _hf_init(self.classifier, config.initializer_range, generator)

    def forward(
        self,
        input_ids: TensorLike,
        attention_mask: TensorLike | None = None,
        token_type_ids: TensorLike | None = None,
        labels: TensorLike | None = None,
    ) -> Any:
        pooled = self.bert(input_ids, attention_mask, token_type_ids).pooler_output
        logits = self.classifier(self.dropout(pooled))  # (B, C) -> (B, num_labels)
        if labels is None:
            return logits
        y = labels.data if isinstance(labels, Tensor) else np.asarray(labels)
        if y.shape != (logits.shape[0],):
            raise ValueError(f"Bert: labels must have shape ({logits.shape[0]},), got {y.shape}")
        if self.num_labels == 1:
            loss = F.mse_loss(logits.reshape(-1), y.astype(logits.dtype))
        else:
            if y.dtype.kind not in "iu":
                raise ValueError(f"Bert: labels must be integer class ids for num_labels > 1, got {y.dtype}")
            loss = F.cross_entropy(logits, y.astype(np.int64, copy=False))
        return logits, loss
