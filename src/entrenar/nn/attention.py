"""Multi-head attention: projections, head split and merge, masks, and one fused attention op.

The masks follow Hugging Face's convention, not `torch.nn.MultiheadAttention`'s: an
`attention_mask` is a (B, S) array of bools or 0/1 integers in which True / 1 marks a real token and
False / 0 a padding token that no query may attend to (torch's `key_padding_mask` is the opposite).
`is_causal=True` lets query t attend to keys 0..t only. Both may be given together.

`multi_head_attention` is the shared core (split heads, `F.scaled_dot_product_attention`, merge
heads); `MultiheadAttention` wraps it with `q_proj`/`k_proj`/`v_proj`/`o_proj`, and the BERT model
(`entrenar.nn.bert`) reuses it under Hugging Face's module names.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from entrenar import functional as F
from entrenar.nn.layers import Linear
from entrenar.nn.module import Module
from entrenar.tensor import Tensor, TensorLike

__all__ = ["MultiheadAttention", "attention_bias", "merge_heads", "multi_head_attention", "split_heads"]


def _head_dim(owner: str, embed_dim: int, num_heads: int) -> int:
    for name, v in (("embed_dim", embed_dim), ("num_heads", num_heads)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{owner}: {name} must be a positive int, got {v!r}")
    if embed_dim % num_heads:
        raise ValueError(
            f"{owner}: embed_dim {embed_dim} must be divisible by num_heads {num_heads} (head_dim = "
            "embed_dim / num_heads)"
        )
    return int(embed_dim) // int(num_heads)


def _check_p(owner: str, name: str, p: float) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) or not 0 <= p <= 1:
        raise ValueError(f"{owner}: {name} must be a probability in [0, 1], got {p!r}")
    return float(p)


def _tensor(x: TensorLike) -> Tensor:
    return x if isinstance(x, Tensor) else Tensor(np.asarray(x))


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    """(B, T, C) -> (B, H, T, C / H)."""
    B, T, C = x.shape
    # (B, T, C) -> (B, T, H, D) -> (B, H, T, D)
    return x.reshape(B, T, num_heads, C // num_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, T, D) -> (B, T, H * D), the inverse of `split_heads`."""
    B, H, T, D = x.shape
    # (B, H, T, D) -> (B, T, H, D) -> (B, T, C)
    return x.transpose(1, 2).reshape(B, T, H * D)


def attention_bias(
    attention_mask: TensorLike | None, batch: int, query_len: int, key_len: int, is_causal: bool
) -> np.ndarray | None:
    """The boolean attn_mask for `F.scaled_dot_product_attention` (True = may attend), or None.

    attention_mask is (B, S), True / 1 for real tokens (Hugging Face's convention); it becomes
    (B, 1, 1, S), and with is_causal it is combined with the lower triangle into (B, 1, T, S).
    """
    causal = np.tri(query_len, key_len, dtype=np.bool_) if is_causal else None
    if attention_mask is None:
        return causal
    m = attention_mask.data if isinstance(attention_mask, Tensor) else np.asarray(attention_mask)
    if m.shape != (batch, key_len):
        raise ValueError(
            f"attention_mask must have shape (batch, key_len) = {(batch, key_len)} with True / 1 for real "
            f"tokens and False / 0 for padding, got shape {m.shape}"
        )
    if m.dtype != np.bool_:
        if m.dtype.kind not in "iuf" or not np.isin(m, (0, 1)).all():
            raise ValueError(
                "attention_mask must hold bools or 0/1 (1 = real token, 0 = padding), got dtype "
                f"{m.dtype} with values {np.unique(m)[:8].tolist()}"
            )
        m = m != 0
    keys = m[:, None, None, :]  # (B, S) -> (B, 1, 1, S)
    return keys if causal is None else keys & causal  # (B, 1, 1, S) & (T, S) -> (B, 1, T, S)


def multi_head_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    num_heads: int,
    *,
    attention_mask: TensorLike | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    generator: np.random.Generator | None = None,
) -> Tensor:
    """Attention of projected queries (B, T, C) over keys and values (B, S, C) -> (B, T, C).

    Heads are split, attended with `F.scaled_dot_product_attention` (scale 1 / sqrt(C / H)) and
    merged; attention weights are dropped with probability dropout_p, drawing from generator.
    """
    if q.ndim != 3 or k.ndim != 3 or v.ndim != 3:
        raise ValueError(
            f"multi_head_attention: q, k and v must be (batch, length, embed_dim), got shapes {q.shape}, "
            f"{k.shape}, {v.shape}"
        )
    B, T, _ = q.shape
    S = k.shape[1]
    # Without padding, causal attention is asked for as is_causal (the same top-left mask), which
    # the fused kernel takes; a mask array always goes the reference way.
    mask = None if attention_mask is None else attention_bias(attention_mask, B, T, S, is_causal)
    causal = is_causal and mask is None
    # (B, T, C) -> (B, H, T, D), likewise for k and v
    qh, kh, vh = split_heads(q, num_heads), split_heads(k, num_heads), split_heads(v, num_heads)
    out = F.scaled_dot_product_attention(
        qh, kh, vh, attn_mask=mask, dropout_p=dropout_p, is_causal=causal, generator=generator
    )  # (B, H, T, D)
    return merge_heads(out)  # (B, H, T, D) -> (B, T, C)


class MultiheadAttention(Module):
    """Multi-head attention: softmax((x Wq)(x Wk)^T / sqrt(D) + mask) (x Wv), then o_proj.

    Submodules q_proj, k_proj, v_proj, o_proj are `Linear(embed_dim, embed_dim, bias)`, initialised
    as PyTorch's Linear from `generator`. The module keeps `generator` and draws the attention
    dropout masks (probability `dropout`, training mode only) from it.

    forward(x, context=None, attention_mask=None, is_causal=False): x (B, T, C) -> (B, T, C); keys
    and values come from context (B, S, C) if given (cross-attention), else from x. attention_mask is
    (B, S) with True / 1 = real token, False / 0 = padding (Hugging Face's convention).
    """

    q_proj: Linear
    k_proj: Linear
    v_proj: Linear
    o_proj: Linear

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        *,
        dtype: Any = np.float32,
        generator: np.random.Generator,
    ) -> None:
        super().__init__()
        self.head_dim = _head_dim("MultiheadAttention", embed_dim, num_heads)
        self.embed_dim = int(embed_dim)
        self.num_heads = int(num_heads)
        self.dropout = _check_p("MultiheadAttention", "dropout", dropout)
        if not isinstance(generator, np.random.Generator):
            raise TypeError(
                "MultiheadAttention: generator must be an np.random.Generator (e.g. "
                f"np.random.default_rng(seed)), got {type(generator).__name__}"
            )
        self.generator = generator
        self.q_proj = Linear(embed_dim, embed_dim, bias, dtype=dtype, generator=generator)
        self.k_proj = Linear(embed_dim, embed_dim, bias, dtype=dtype, generator=generator)
        self.v_proj = Linear(embed_dim, embed_dim, bias, dtype=dtype, generator=generator)
        self.o_proj = Linear(embed_dim, embed_dim, bias, dtype=dtype, generator=generator)

    def forward(
        self,
        x: TensorLike,
        context: TensorLike | None = None,
        attention_mask: TensorLike | None = None,
        is_causal: bool = False,
    ) -> Tensor:
        xt = _tensor(x)
        kv = xt if context is None else _tensor(context)
        for name, t in (("x", xt), ("context", kv)):
            if t.ndim != 3 or t.shape[-1] != self.embed_dim:
                raise ValueError(
                    f"MultiheadAttention: {name} must be (batch, length, {self.embed_dim}), got shape "
                    f"{t.shape}"
                )
        if kv.shape[0] != xt.shape[0]:
            raise ValueError(f"MultiheadAttention: x has batch {xt.shape[0]} but context {kv.shape[0]}")
        out = multi_head_attention(
            self.q_proj(xt),
            self.k_proj(kv),
            self.v_proj(kv),
            self.num_heads,
            attention_mask=attention_mask,
            is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0,
            generator=self.generator,
        )  # (B, T, C)
        return self.o_proj(out)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}"
