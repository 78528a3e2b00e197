"""Autoregressive generation with a KV cache: greedy, temperature, top-k and top-p sampling.

Each step feeds only the new tokens and keeps past keys and values in a `KVCache` (the prompt once,
then one token per step), so that step t costs O(t) attention instead of re-running the prefix.
Sampling from logits z at temperature tau > 0::

    p = softmax(z / tau) restricted to the top_k largest, then to the smallest set whose
    probability mass reaches top_p (the most likely token is always kept), renormalised

temperature 0 is greedy (argmax, ties to the lowest id). Draws come from the `generator` passed in.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

from entrenar.autograd.tape import no_grad
from entrenar.models.llama import KVCache
from entrenar.tensor import Tensor

__all__ = ["generate", "sample_next"]


class CausalLM(Protocol):
    config: Any

    def __call__(
        self, input_ids: Any, attention_mask: Any = None, cache: KVCache | None = None
    ) -> Tensor: ...

    def new_cache(self) -> KVCache: ...


def sample_next(
    logits: np.ndarray,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: np.random.Generator | None = None,
) -> np.ndarray:
    """The next token of each row of logits (B, V) -> (B,) int64; see the module docstring."""
    if temperature == 0:
        return np.argmax(logits, axis=-1).astype(np.int64)
    if generator is None:
        raise ValueError("sample_next: sampling (temperature > 0) needs an np.random.Generator")
    z = logits.astype(np.float64) / temperature
    if top_k is not None and top_k < z.shape[-1]:
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]  # (B, 1): the k-th largest
        z = np.where(z < kth, -np.inf, z)
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(-p, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(p, order, axis=-1)
        before = np.cumsum(sorted_p, axis=-1) - sorted_p  # mass of the tokens ranked above each
        drop = np.zeros_like(p, dtype=np.bool_)
        np.put_along_axis(drop, order, before >= top_p, axis=-1)
        p = np.where(drop, 0.0, p)
        p /= p.sum(axis=-1, keepdims=True)
    u = generator.random((p.shape[0], 1))
    idx = (np.cumsum(p, axis=-1) < u).sum(axis=-1)
    return np.minimum(idx, p.shape[-1] - 1).astype(np.int64)


def generate(
    model: CausalLM,
    input_ids: Any,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Iterable[int] = (),
    generator: np.random.Generator | None = None,
    *,
    use_cache: bool = True,
) -> np.ndarray:
    """The prompt (B, T) followed by up to max_new_tokens generated tokens: (B, T + n) int64.

    A row that produced a stop token keeps it and is padded with it afterwards; generation ends
    when every row has stopped. use_cache=False re-runs the whole sequence each step (the reference
    the cache is tested against). The prompt plus max_new_tokens must fit the model's context.
    """
    ids = np.asarray(input_ids.data if isinstance(input_ids, Tensor) else input_ids)
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2 or ids.dtype.kind not in "iu" or ids.shape[1] == 0:
        raise ValueError(
            f"generate: input_ids must be a non-empty integer (batch, length) array, got {ids.dtype} "
            f"{ids.shape}"
        )
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
    if not temperature >= 0:
        raise ValueError(f"generate: temperature must be >= 0 (0 = greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"generate: top_k must be a positive int or None, got {top_k!r}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"generate: top_p must be in (0, 1] or None, got {top_p!r}")
    context = int(model.config.max_position_embeddings)
    if ids.shape[1] + max_new_tokens > context:
        raise ValueError(
            f"generate: the prompt of {ids.shape[1]} tokens plus max_new_tokens {max_new_tokens} exceeds the "
            f"model's context of {context} tokens (max_position_embeddings)"
        )
    stops = np.array(sorted({int(t) for t in stop_tokens}), dtype=np.int64)
    out = ids.astype(np.int64)
    done = np.zeros(out.shape[0], dtype=np.bool_)
    cache = model.new_cache() if use_cache else None
    feed = out
    with no_grad():
        for _ in range(max_new_tokens):
            logits = model(feed if use_cache else out, cache=cache).data[:, -1, :]  # (B, T, V) -> (B, V)
            nxt = sample_next(logits, temperature, top_k, top_p, generator)
            if stops.size:
                prev = out[:, -1]
                nxt = np.where(done, prev, nxt)
                done |= np.isin(nxt, stops)
            out = np.concatenate([out, nxt[:, None]], axis=1)
            feed = nxt[:, None]
            if stops.size and done.all():
                break
    return out
