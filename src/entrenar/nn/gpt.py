"""A GPT-style decoder language model (nanoGPT's architecture, pre-LN blocks, learned positions).

    wte (V, C), wpe (block_size, C) -> drop -> blocks.0 .. blocks.{N-1} -> ln_f -> lm_head (C -> V)

With `tie_embeddings` the output projection is the token embedding itself: `lm_head.weight is
wte.weight`, one Parameter, listed once by `parameters()` and saved once (as `wte.weight`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from entrenar import functional as F
from entrenar.autograd.tape import no_grad
from entrenar.nn import init
from entrenar.nn.layers import Dropout, Embedding, LayerNorm, Linear
from entrenar.nn.module import Module
from entrenar.nn.transformer import TransformerBlock
from entrenar.tensor import Tensor, TensorLike

__all__ = ["GPT", "GPTConfig"]


@dataclass(frozen=True)
class GPTConfig:
    """Sizes and options of a `GPT`; d_ff None means 4 * n_embd. Validated on construction."""

    vocab_size: int
    block_size: int
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    d_ff: int | None = None
    dropout: float = 0.0
    bias: bool = True
    tie_embeddings: bool = True
    layer_norm_eps: float = 1e-5
    mlp: str = "gelu"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"GPTConfig: {name} must be a positive int, got {v!r}")
        if self.d_ff is not None and (
            isinstance(self.d_ff, bool) or not isinstance(self.d_ff, int) or self.d_ff <= 0
        ):
            raise ValueError(f"GPTConfig: d_ff must be a positive int or None, got {self.d_ff!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"GPTConfig: n_embd {self.n_embd} must be divisible by n_head {self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig: dropout must be in [0, 1), got {self.dropout!r}")
        if self.mlp not in ("gelu", "swiglu"):
            raise ValueError(f"GPTConfig: mlp must be 'gelu' or 'swiglu', got {self.mlp!r}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"GPTConfig: layer_norm_eps must be positive, got {self.layer_norm_eps!r}")

    @property
    def ff_dim(self) -> int:
        return 4 * self.n_embd if self.d_ff is None else self.d_ff


class GPT(Module):
    """Decoder-only LM: forward(idx (B, T) int, targets=None) -> logits (B, T, V) or (logits, loss).

    Initialised as GPT-2 / nanoGPT from `generator`: Linear and Embedding weights N(0, 0.02), biases
    0, the residual projections (attn.o_proj, mlp.fc2 / down_proj) N(0, 0.02 / sqrt(2 n_layer)),
    LayerNorm 1 and 0. The model keeps `generator` for its dropout masks.
    """

    wte: Embedding
    wpe: Embedding
    drop: Dropout
    blocks: list[TransformerBlock]
    ln_f: LayerNorm
    lm_head: Linear

    def __init__(self, config: GPTConfig, *, dtype: Any = np.float32, generator: np.random.Generator) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT: config must be a GPTConfig, got {type(config).__name__}")
        c = self.config = config
        self.wte = Embedding(c.vocab_size, c.n_embd, dtype=dtype, generator=generator)
        self.wpe = Embedding(c.block_size, c.n_embd, dtype=dtype, generator=generator)
        self.drop = Dropout(c.dropout, generator=generator)
        self.blocks = [
            TransformerBlock(
                c.n_embd,
                c.n_head,
                c.ff_dim,
                mlp=c.mlp,
                norm_eps=c.layer_norm_eps,
                bias=c.bias,
                dropout=c.dropout,
                attn_dropout=c.dropout,
                dtype=dtype,
                generator=generator,
            )
            for _ in range(c.n_layer)
        ]
        self.ln_f = LayerNorm(c.n_embd, eps=c.layer_norm_eps, bias=c.bias, dtype=dtype)
        self.lm_head = Linear(c.n_embd, c.vocab_size, bias=False, dtype=dtype, generator=generator)
        if c.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self._init_weights(generator)

    def _init_weights(self, rng: np.random.Generator) -> None:
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                init.zeros_(p)
            elif ".ln_" in name or name.startswith("ln_f"):
                init.ones_(p)
            elif name.endswith(("attn.o_proj.weight", "mlp.fc2.weight", "mlp.down_proj.weight")):
                init.normal_(p, 0.0, residual_std, generator=rng)
            else:
                init.normal_(p, 0.0, 0.02, generator=rng)

    def forward(self, idx: TensorLike, targets: TensorLike | None = None) -> Any:
        ids = idx.data if isinstance(idx, Tensor) else np.asarray(idx)
        if ids.ndim != 2 or ids.dtype.kind not in "iu":
            raise ValueError(
                f"GPT: idx must be (batch, length) integer token ids, got {ids.dtype} {ids.shape}"
            )
        B, T = ids.shape
        if not 0 < T <= self.config.block_size:
            raise ValueError(f"GPT: sequence length {T} must be in [1, block_size={self.config.block_size}]")
        pos = np.arange(T, dtype=np.int64)
        x = self.drop(self.wte(ids) + self.wpe(pos))  # (B, T, C) + (T, C) -> (B, T, C)
        for block in self.blocks:
            x = block(x, is_causal=True)
        logits = self.lm_head(self.ln_f(x))  # (B, T, C) -> (B, T, V)
        if targets is None:
            return logits
        tg = targets.data if isinstance(targets, Tensor) else np.asarray(targets)
        if tg.shape != (B, T) or tg.dtype.kind not in "iu":
            raise ValueError(
                f"GPT: targets must be integer token ids of shape {(B, T)} (-100 = ignored), got "
                f"{tg.dtype} {tg.shape}"
            )
        # (B, T, V) -> (B * T, V) against (B * T,)
        loss = F.cross_entropy(logits.reshape(B * T, -1), tg.reshape(B * T).astype(np.int64, copy=False))
        return logits, loss

    def generate(
        self,
        idx: TensorLike,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: np.random.Generator | None = None,
    ) -> np.ndarray:
        """Append max_new_tokens tokens to idx (B, T) -> (B, T + max_new_tokens), without recording.

        Greedy (argmax) when generator is None, else sampled from softmax(logits / temperature),
        restricted to the top_k most likely tokens if top_k is given. The context is cropped to the
        last block_size tokens. Call `eval()` first if the model has dropout.
        """
        out = np.array(idx.data if isinstance(idx, Tensor) else idx, dtype=np.int64)
        if out.ndim != 2:
            raise ValueError(f"GPT.generate: idx must be (batch, length) token ids, got shape {out.shape}")
        if generator is not None and not temperature > 0:
            raise ValueError(f"GPT.generate: temperature must be positive, got {temperature!r}")
        if top_k is not None and not top_k > 0:
            raise ValueError(f"GPT.generate: top_k must be a positive int or None, got {top_k!r}")
        with no_grad():
            for _ in range(max_new_tokens):
                logits = self(out[:, -self.config.block_size :]).data[:, -1, :]  # (B, V)
                if generator is None:
                    nxt = logits.argmax(axis=-1)
                else:
                    z = logits.astype(np.float64) / temperature
                    if top_k is not None and top_k < z.shape[-1]:
                        kth = np.partition(z, -top_k, axis=-1)[:, -top_k, None]
                        z = np.where(z < kth, -np.inf, z)
                    p = np.exp(z - z.max(axis=-1, keepdims=True))
                    p /= p.sum(axis=-1, keepdims=True)
                    u = generator.random((len(p), 1))
                    nxt = np.minimum((p.cumsum(axis=-1) < u).sum(axis=-1), p.shape[-1] - 1)
                out = np.concatenate([out, nxt[:, None].astype(np.int64)], axis=1)  # (B, T) -> (B, T + 1)
        return out
