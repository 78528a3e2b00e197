"""The Llama family of decoder language models, under Hugging Face's module names.

    model.embed_tokens (V, C)
    model.layers.N: input_layernorm -> self_attn.{q,k,v,o}_proj (RoPE, grouped-query) -> + residual
                    post_attention_layernorm -> mlp.{gate,up,down}_proj (SwiGLU) -> + residual
    model.norm -> lm_head (C -> V), or the embedding itself when tie_word_embeddings

Rotary position embeddings follow Hugging Face's `rotate_half` convention: within a head of size D,
dimension i < D/2 is paired with i + D/2 and rotated by the angle p * theta_i, theta_i = base^(-2i/D)::

    q' = q * cos + rotate_half(q) * sin,   rotate_half([x1, x2]) = [-x2, x1],   cos = cos([p theta, p theta])

(GGUF files store q/k rows for the interleaved-pair convention instead: see `entrenar.models.gguf`.)
Grouped-query attention: H query heads share Hkv key/value heads, query head h reads kv head
h // (H / Hkv); it is computed by broadcasting, (B, Hkv, G, T, D) queries against (B, Hkv, 1, S, D)
keys, with no copies of k and v. A `KVCache` holds past keys and values for generation.

`gradient_checkpointing_enable()` (Hugging Face's name) runs each decoder layer under
`entrenar.nn.checkpoint.checkpoint` while training without a cache: a layer's activations are
recomputed in backward instead of kept, so training holds one layer's activations plus each
layer's (B, T, C) input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from entrenar import functional as F
from entrenar.models.checkpoint import checkpoint_dir, read_json, read_tensors
from entrenar.models.limits import check_parameter_count, check_sizes, llama_parameter_count
from entrenar.nn.checkpoint import checkpoint
from entrenar.nn.layers import Embedding, Linear, RMSNorm
from entrenar.nn.module import Module
from entrenar.tensor import Tensor, TensorLike

__all__ = [
    "KVCache",
    "LlamaAttention",
    "LlamaConfig",
    "LlamaDecoderLayer",
    "LlamaForCausalLM",
    "LlamaMLP",
    "LlamaModel",
    "apply_rotary",
    "llama_from_pretrained",
    "rotary_tables",
]


@dataclass(frozen=True)
class LlamaConfig:
    """Sizes of a Llama model, with Hugging Face's config.json names. Validated on construction."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None

    def __post_init__(self) -> None:
        ints = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
        for name in (*ints, "num_key_value_heads", "head_dim", "max_position_embeddings"):
            v = getattr(self, name)
            optional = name in ("num_key_value_heads", "head_dim")
            if not (optional and v is None) and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise ValueError(f"LlamaConfig: {name} must be a positive int, got {v!r}")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"LlamaConfig: hidden_size {self.hidden_size} must be divisible by num_attention_heads "
                f"{self.num_attention_heads} (or head_dim must be given)"
            )
        if self.num_attention_heads % self.kv_heads:
            raise ValueError(
                f"LlamaConfig: num_attention_heads {self.num_attention_heads} must be a multiple of "
                f"num_key_value_heads {self.kv_heads}"
            )
        if self.dim_per_head % 2:
            raise ValueError(
                f"LlamaConfig: head_dim must be even for rotary embeddings, got {self.dim_per_head}"
            )
        if not self.rms_norm_eps > 0 or not self.rope_theta > 0:
            raise ValueError(
                f"LlamaConfig: rms_norm_eps and rope_theta must be positive, got {self.rms_norm_eps!r}, "
                f"{self.rope_theta!r}"
            )

    @property
    def kv_heads(self) -> int:
        """num_key_value_heads, or num_attention_heads when not given (no grouping)."""
        return self.num_attention_heads if self.num_key_value_heads is None else self.num_key_value_heads

    @property
    def dim_per_head(self) -> int:
        """head_dim, or hidden_size / num_attention_heads when not given."""
        return self.hidden_size // self.num_attention_heads if self.head_dim is None else self.head_dim

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> LlamaConfig:
        """From a Hugging Face config.json dict (model_type "llama"); unknown keys are ignored."""
        if d.get("model_type", "llama") != "llama":
            raise ValueError(
                f"{where}: model_type {d.get('model_type')!r} is not supported (expected 'llama')"
            )
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"{where}: hidden_act {d['hidden_act']!r} is not supported (expected 'silu')")
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        if not isinstance(rope, dict):
            raise ValueError(f"{where}: rope_parameters / rope_scaling must be an object, got {rope!r}")
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ValueError(f"{where}: rope_type {rope_type!r} is not supported (only 'default' RoPE)")
        theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d and k != "rope_theta"}
        missing = [
            k
            for k in (
                "vocab_size",
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
            )
            if k not in d
        ]
        if missing:
            raise ValueError(f"{where}: missing keys {', '.join(missing)}")
        check_sizes(f"{where}: ", d)  # before anything is allocated: see entrenar.models.limits
        check_parameter_count(f"{where}: ", llama_parameter_count(d))
        try:
            return cls(**fields, rope_theta=float(theta))
        except (TypeError, ValueError, OverflowError) as exc:
            raise ValueError(f"{where}: {exc}") from None


def rotary_tables(positions: np.ndarray, head_dim: int, base: float, dtype: Any) -> tuple[Tensor, Tensor]:
    """cos and sin of p * theta_i, duplicated over both halves: (T,) positions -> two (T, D) constants."""
    inv_freq = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))  # (D/2,)
    angles = positions.astype(np.float64)[:, None] * inv_freq[None, :]  # (T, D/2)
    emb = np.concatenate([angles, angles], axis=-1)  # (T, D)
    return Tensor(np.cos(emb).astype(dtype)), Tensor(np.sin(emb).astype(dtype))


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x * cos + rotate_half(x) * sin for x (..., T, D) and tables (T, D), rotate_half([a, b]) = [-b, a]."""
    half = x.shape[-1] // 2
    a, b = F.narrow(x, -1, 0, half), F.narrow(x, -1, half, half)
    return x * cos + F.cat([-b, a], dim=-1) * sin


class KVCache:
    """Past keys and values per layer, (B, Hkv, S, D) each, grown by concatenation along S."""

    def __init__(self, num_layers: int) -> None:
        self.keys: list[Tensor | None] = [None] * num_layers
        self.values: list[Tensor | None] = [None] * num_layers

    @property
    def length(self) -> int:
        k = self.keys[0]
        return 0 if k is None else k.shape[2]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append this step's (B, Hkv, T, D) keys and values; returns the whole (B, Hkv, S + T, D)."""
        pk, pv = self.keys[layer], self.values[layer]
        if pk is not None and pv is not None:
            k, v = F.cat([pk, k], dim=2), F.cat([pv, v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


class LlamaAttention(Module):
    """Causal grouped-query self-attention with rotary embeddings on q and k."""

    q_proj: Linear
    k_proj: Linear
    v_proj: Linear
    o_proj: Linear

    def __init__(self, c: LlamaConfig, *, dtype: Any, generator: np.random.Generator) -> None:
        super().__init__()
        self.num_heads, self.kv_heads, self.head_dim = c.num_attention_heads, c.kv_heads, c.dim_per_head
        h, d, b = c.hidden_size, c.dim_per_head, c.attention_bias
        self.q_proj = Linear(h, self.num_heads * d, b, dtype=dtype, generator=generator)
        self.k_proj = Linear(h, self.kv_heads * d, b, dtype=dtype, generator=generator)
        self.v_proj = Linear(h, self.kv_heads * d, b, dtype=dtype, generator=generator)
        self.o_proj = Linear(self.num_heads * d, h, b, dtype=dtype, generator=generator)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: np.ndarray,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> Tensor:
        B, T, _ = x.shape
        H, Hkv, D = self.num_heads, self.kv_heads, self.head_dim
        # (B, T, H * D) -> (B, T, H, D) -> (B, H, T, D)
        q = self.q_proj(x).reshape(B, T, H, D).transpose(1, 2)
        k = self.k_proj(x).reshape(B, T, Hkv, D).transpose(1, 2)
        v = self.v_proj(x).reshape(B, T, Hkv, D).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, Hkv, S, D)
        S = k.shape[2]
        # query head h reads kv head h // G: (B, H, T, D) -> (B, Hkv, G, T, D); k, v -> (B, Hkv, 1, S, D)
        qg = q.reshape(B, Hkv, H // Hkv, T, D)
        out = F.scaled_dot_product_attention(
            qg, k.reshape(B, Hkv, 1, S, D), v.reshape(B, Hkv, 1, S, D), attn_mask=mask
        )
        # (B, Hkv, G, T, D) -> (B, H, T, D) -> (B, T, H, D) -> (B, T, H * D)
        return self.o_proj(out.reshape(B, H, T, D).transpose(1, 2).reshape(B, T, H * D))


class LlamaMLP(Module):
    """SwiGLU: down_proj(silu(gate_proj(x)) * up_proj(x))."""

    gate_proj: Linear
    up_proj: Linear
    down_proj: Linear

    def __init__(self, c: LlamaConfig, *, dtype: Any, generator: np.random.Generator) -> None:
        super().__init__()
        h, f, b = c.hidden_size, c.intermediate_size, c.mlp_bias
        self.gate_proj = Linear(h, f, b, dtype=dtype, generator=generator)
        self.up_proj = Linear(h, f, b, dtype=dtype, generator=generator)
        self.down_proj = Linear(f, h, b, dtype=dtype, generator=generator)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(Module):
    """x + attn(norm(x)), then + mlp(norm(.)) (pre-norm residual block)."""

    self_attn: LlamaAttention
    mlp: LlamaMLP
    input_layernorm: RMSNorm
    post_attention_layernorm: RMSNorm

    def __init__(self, c: LlamaConfig, *, dtype: Any, generator: np.random.Generator) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(c, dtype=dtype, generator=generator)
        self.mlp = LlamaMLP(c, dtype=dtype, generator=generator)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, dtype=dtype)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps, dtype=dtype)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: np.ndarray,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(Module):
    """embed_tokens -> layers -> norm: forward(input_ids (B, T)) -> hidden states (B, T, C)."""

    embed_tokens: Embedding
    layers: list[LlamaDecoderLayer]
    norm: RMSNorm

    def __init__(self, c: LlamaConfig, *, dtype: Any, generator: np.random.Generator) -> None:
        super().__init__()
        self.config = c
        self.embed_tokens = Embedding(c.vocab_size, c.hidden_size, dtype=dtype, generator=generator)
        self.layers = [
            LlamaDecoderLayer(c, dtype=dtype, generator=generator) for _ in range(c.num_hidden_layers)
        ]
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps, dtype=dtype)
        self.gradient_checkpointing = False

    def forward(
        self, input_ids: TensorLike, attention_mask: TensorLike | None = None, cache: KVCache | None = None
    ) -> Tensor:
        ids = np.asarray(input_ids.data if isinstance(input_ids, Tensor) else input_ids)
        if ids.ndim != 2 or ids.dtype.kind not in "iu":
            raise ValueError(
                f"LlamaModel: input_ids must be an integer (batch, length) array, got {ids.dtype} {ids.shape}"
            )
        B, T = ids.shape
        past = 0 if cache is None else cache.length
        S = past + T
        if self.config.max_position_embeddings < S:
            raise ValueError(
                f"LlamaModel: {S} positions exceed the context of max_position_embeddings = "
                f"{self.config.max_position_embeddings}"
            )
        x = self.embed_tokens(ids)  # (B, T) -> (B, T, C)
        cos, sin = rotary_tables(
            np.arange(past, S), self.config.dim_per_head, self.config.rope_theta, x.dtype
        )
        mask = np.tri(T, S, k=past, dtype=np.bool_)  # query past + t sees keys 0 .. past + t
        if attention_mask is not None:
            m = np.asarray(attention_mask.data if isinstance(attention_mask, Tensor) else attention_mask)
            if m.shape != (B, S):
                raise ValueError(
                    f"LlamaModel: attention_mask must be (batch, past + length) = {(B, S)} with "
                    f"1 for real tokens, got {m.shape}"
                )
            mask = mask & (m != 0)[:, None, None, None, :]  # (B, S) -> (B, 1, 1, 1, S) & (T, S)
        recompute = self.gradient_checkpointing and self.training and cache is None
        for i, layer in enumerate(self.layers):
            x = checkpoint(layer, x, cos, sin, mask) if recompute else layer(x, cos, sin, mask, cache, i)
        return self.norm(x)


class LlamaForCausalLM(Module):
    """forward(input_ids (B, T), attention_mask=None, cache=None) -> logits (B, T, V)."""

    model: LlamaModel
    lm_head: Linear

    def __init__(
        self, config: LlamaConfig, *, dtype: Any = np.float32, generator: np.random.Generator | int = 0
    ) -> None:
        super().__init__()
        rng = generator if isinstance(generator, np.random.Generator) else np.random.default_rng(generator)
        self.config = config
        self.model = LlamaModel(config, dtype=dtype, generator=rng)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, False, dtype=dtype, generator=rng)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self, input_ids: TensorLike, attention_mask: TensorLike | None = None, cache: KVCache | None = None
    ) -> Tensor:
        return self.lm_head(self.model(input_ids, attention_mask, cache))  # (B, T, C) -> (B, T, V)

    def new_cache(self) -> KVCache:
        return KVCache(self.config.num_hidden_layers)

    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict[str, Any] | None = None
    ) -> None:
        """Recompute each decoder layer in backward while training (see the module docstring).

        gradient_checkpointing_kwargs is accepted for Hugging Face's signature; only
        {"use_reentrant": False} (the only scheme implemented) may be given.
        """
        kwargs = dict(gradient_checkpointing_kwargs or {})
        if kwargs.pop("use_reentrant", False) or kwargs:
            raise ValueError(
                f"gradient_checkpointing_enable: unsupported gradient_checkpointing_kwargs "
                f"{gradient_checkpointing_kwargs!r}; only {{'use_reentrant': False}} is accepted"
            )
        self.model.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.model.gradient_checkpointing = False

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.model.gradient_checkpointing


def llama_from_pretrained(path: str | os.PathLike[str], *, dtype: Any = np.float32) -> LlamaForCausalLM:
    """A LlamaForCausalLM from a Hugging Face folder (config.json + model.safetensors or shards)."""
    folder = checkpoint_dir(path)
    config = LlamaConfig.from_dict(read_json(folder / "config.json", "config"), str(folder / "config.json"))
    model = LlamaForCausalLM(config, dtype=dtype)
    tensors = read_tensors(folder).tensors
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)  # saved by some writers although tied
    model.load_state_dict({k: v.astype(dtype, copy=False) for k, v in tensors.items()})
    return model
