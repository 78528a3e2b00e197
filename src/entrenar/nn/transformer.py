"""Feed-forward layers and the pre-LN transformer block.

Naming: the GELU feed-forward is `fc1` (d_model -> d_ff) and `fc2` (d_ff -> d_model), as in
Hugging Face's OPT, CLIP and ViT MLPs; the SwiGLU one is `gate_proj`, `up_proj`, `down_proj`, as
Llama's. The block is `ln_1`, `attn`, `ln_2`, `mlp` (GPT-2's names).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from entrenar import functional as F
from entrenar.nn.attention import MultiheadAttention, _check_p
from entrenar.nn.layers import Dropout, LayerNorm, Linear, RMSNorm
from entrenar.nn.module import Module
from entrenar.tensor import Tensor, TensorLike

__all__ = ["FeedForward", "SwiGLUFeedForward", "TransformerBlock"]


def _dims(owner: str, **dims: int) -> None:
    for name, v in dims.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{owner}: {name} must be a positive int, got {v!r}")


class FeedForward(Module):
    """fc2(gelu(fc1(x))): (*, d_model) -> (*, d_ff) -> (*, d_model).

    approximate is GELU's ("none" exact, "tanh" GPT-2's approximation).
    """

    fc1: Linear
    fc2: Linear

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        bias: bool = True,
        approximate: str = "none",
        *,
        dtype: Any = np.float32,
        generator: np.random.Generator,
    ) -> None:
        super().__init__()
        _dims("FeedForward", d_model=d_model, d_ff=d_ff)
        if approximate not in ("none", "tanh"):
            raise ValueError(f"FeedForward: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate
        self.fc1 = Linear(d_model, d_ff, bias, dtype=dtype, generator=generator)
        self.fc2 = Linear(d_ff, d_model, bias, dtype=dtype, generator=generator)

    def forward(self, x: TensorLike) -> Tensor:
        # (*, d_model) -> (*, d_ff) -> (*, d_model)
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class SwiGLUFeedForward(Module):
    """down_proj(silu(gate_proj(x)) * up_proj(x)): (*, d_model) -> (*, d_ff) -> (*, d_model), as Llama."""

    gate_proj: Linear
    up_proj: Linear
    down_proj: Linear

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        bias: bool = False,
        *,
        dtype: Any = np.float32,
        generator: np.random.Generator,
    ) -> None:
        super().__init__()
        _dims("SwiGLUFeedForward", d_model=d_model, d_ff=d_ff)
        self.gate_proj = Linear(d_model, d_ff, bias, dtype=dtype, generator=generator)
        self.up_proj = Linear(d_model, d_ff, bias, dtype=dtype, generator=generator)
        self.down_proj = Linear(d_ff, d_model, bias, dtype=dtype, generator=generator)

    def forward(self, x: TensorLike) -> Tensor:
        # (*, d_model) -> (*, d_ff) -> (*, d_model)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class TransformerBlock(Module):
    """Pre-LN block: x = x + drop(attn(ln_1(x))); x = x + drop(mlp(ln_2(x))).

    mlp is "gelu" (`FeedForward`, fc1/fc2) or "swiglu" (`SwiGLUFeedForward`); norm is "layernorm" or
    "rmsnorm" (eps `norm_eps`). dropout applies to both residual branches, attn_dropout to the
    attention weights; the masks come from `generator`, which also draws the initial weights.
    forward(x (B, T, C), attention_mask=None, is_causal=False) -> (B, T, C); attention_mask is (B, T),
    True / 1 for real tokens (Hugging Face's convention).
    """

    ln_1: Module
    attn: MultiheadAttention
    ln_2: Module
    mlp: Module
    drop: Dropout

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        *,
        mlp: str = "gelu",
        norm: str = "layernorm",
        norm_eps: float = 1e-5,
        bias: bool = True,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        gelu_approximate: str = "none",
        dtype: Any = np.float32,
        generator: np.random.Generator,
    ) -> None:
        super().__init__()
        _dims("TransformerBlock", d_model=d_model, num_heads=num_heads, d_ff=d_ff)
        if norm not in ("layernorm", "rmsnorm"):
            raise ValueError(f"TransformerBlock: norm must be 'layernorm' or 'rmsnorm', got {norm!r}")
        if mlp not in ("gelu", "swiglu"):
            raise ValueError(f"TransformerBlock: mlp must be 'gelu' or 'swiglu', got {mlp!r}")
        self.d_model = int(d_model)
        self.ln_1 = self._norm(norm, d_model, norm_eps, bias, dtype)
        self.attn = MultiheadAttention(
            d_model, num_heads, attn_dropout, bias, dtype=dtype, generator=generator
        )
        self.ln_2 = self._norm(norm, d_model, norm_eps, bias, dtype)
        if mlp == "gelu":
            self.mlp = FeedForward(d_model, d_ff, bias, gelu_approximate, dtype=dtype, generator=generator)
        else:
            self.mlp = SwiGLUFeedForward(d_model, d_ff, bias, dtype=dtype, generator=generator)
        self.drop = Dropout(_check_p("TransformerBlock", "dropout", dropout), generator=generator)

    @staticmethod
    def _norm(norm: str, d_model: int, eps: float, bias: bool, dtype: Any) -> Module:
        if norm == "rmsnorm":
            return RMSNorm(d_model, eps=eps, dtype=dtype)
        return LayerNorm(d_model, eps=eps, bias=bias, dtype=dtype)

    def forward(
        self, x: TensorLike, attention_mask: TensorLike | None = None, is_causal: bool = False
    ) -> Tensor:
        xt = x if isinstance(x, Tensor) else Tensor(np.asarray(x))
        if xt.ndim != 3 or xt.shape[-1] != self.d_model:
            raise ValueError(
                f"TransformerBlock: x must be (batch, length, {self.d_model}), got shape {xt.shape}"
            )
        h = self.attn(self.ln_1(xt), attention_mask=attention_mask, is_causal=is_causal)
        xt = xt + self.drop(h)
        return xt + self.drop(self.mlp(self.ln_2(xt)))
