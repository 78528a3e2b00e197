"""Autoregressive generation with a KV cache: greedy, temperature, top-k and top-p sampling.

Each step feeds only the new tokens and keeps past keys and values in a `KVCache` (the prompt once,
then one token per step), so that step t costs O(t) attention instead of re-running the prefix.
Sampling from logits z at temperature tau > 0::

    p = softmax(z / tau) restricted to the top_k largest, then to the smallest set whose
    probability mass reaches top_p (the most likely token is always kept), renormalised

temperature 0 is greedy (argmax, ties to the lowest id). Draws come from the `generator` passed in.

Batches of prompts of different lengths are padded on the LEFT (`left_pad`), so that every row's
next token is read at the same last column, with an attention mask that hides the padding from
every query. The positions are those of the padded row, shifted by its padding p; rotary attention
scores depend only on the distance between query and key (q_m . k_n is a function of m - n), so a
row computes what it computes alone, up to rounding (Hugging Face instead passes position_ids =
cumsum(mask) - 1; the two agree to rounding, tested against it). A fully hidden padding query
attends to nothing and gives 0, never NaN, so padding cannot leak into real rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from entrenar.autograd.tape import no_grad
from entrenar.models.llama import KVCache
from entrenar.tensor import Tensor

__all__ = ["generate", "left_pad", "sample_next"]


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


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token lists of any lengths -> ids and attention mask, int64 (B, T_max), padding on the left."""
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
        raise ValueError("left_pad: prompts must be a non-empty list of token-id lists")
    rows = []
    for i, p in enumerate(prompts):
        a = np.asarray(p)
        if a.ndim != 1 or a.size == 0 or a.dtype.kind not in "iu":
            raise ValueError(
                f"left_pad: prompt {i} must be a non-empty list of int token ids, got {a.dtype} {a.shape}"
            )
        rows.append(a.astype(np.int64))
    width = max(r.size for r in rows)
    ids = np.full((len(rows), width), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, width - r.size :] = r
        mask[i, width - r.size :] = 1
    return ids, mask


def _check_left_padded(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The mask as bool (B, T): 0/1, each row's ones one block at the end (left padding), none empty."""
    m = np.asarray(mask)
    if m.shape != shape or not np.isin(m, (0, 1)).all():
        raise ValueError(f"generate: attention_mask must be 0/1 of the prompt's shape {shape}, got {m.shape}")
    m = m.astype(np.bool_)
    # left padding: once a row's ones begin they continue to the end, and the last column is a token
    if not m[:, -1].all() or (np.diff(m.astype(np.int8), axis=1) < 0).any():
        raise ValueError(
            "generate: attention_mask must pad on the LEFT (zeros, then ones up to the last column) "
            "so that every row's next token follows its last real token; use left_pad(prompts, pad_id)"
        )
    return m


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
    attention_mask: Any = None,
    pad_token_id: int | None = None,
    on_step: Callable[[np.ndarray], bool | None] | None = None,
    use_cache: bool = True,
) -> np.ndarray:
    """The prompt (B, T) followed by up to max_new_tokens generated tokens: (B, T + n) int64.

    input_ids: a (B, T) or (T,) integer array, or a list of token lists of different lengths, which
    is left-padded with pad_token_id (default 0) and masked (see the module docstring); or pass a
    left-padded array with its attention_mask (1 = token). A row that produced a stop token keeps it
    and is filled afterwards with pad_token_id (or, when None, the stop token again); generation ends
    when every row has stopped. on_step(tokens (B,)) is called after each step (for streaming);
    when it returns True, generation ends there (e.g. a stop string appeared).
    use_cache=False re-runs the whole sequence each step (the reference the cache is tested against).
    The prompt, padding included, plus max_new_tokens must fit the model's context.
    """
    if isinstance(input_ids, (list, tuple)) and input_ids and not np.isscalar(input_ids[0]):
        if attention_mask is not None:
            raise ValueError(
                "generate: give either token lists (padded here) or an array with its attention_mask"
            )
        input_ids, attention_mask = left_pad(input_ids, 0 if pad_token_id is None else pad_token_id)
    ids = np.asarray(input_ids.data if isinstance(input_ids, Tensor) else input_ids)
    if ids.ndim == 1:
        ids = ids[None, :]
        attention_mask = None if attention_mask is None else np.asarray(attention_mask)[None, :]
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
    mask = None if attention_mask is None else _check_left_padded(attention_mask, ids.shape)
    if mask is not None and mask.all():
        mask = None  # nothing hidden: the plain causal mask
    stops = np.array(sorted({int(t) for t in stop_tokens}), dtype=np.int64)
    out = ids.astype(np.int64)
    done = np.zeros(out.shape[0], dtype=np.bool_)
    cache = model.new_cache() if use_cache else None
    feed = out
    with no_grad():
        for _ in range(max_new_tokens):
            m = None if mask is None else mask.astype(np.int64)  # (B, past + T): the keys each row may see
            logits = model(feed if use_cache else out, attention_mask=m, cache=cache).data[:, -1, :]
            nxt = sample_next(logits, temperature, top_k, top_p, generator)  # (B, T, V) -> (B, V) -> (B,)
            if stops.size:
                fill = out[:, -1] if pad_token_id is None else np.full_like(nxt, pad_token_id)
                nxt = np.where(done, fill, nxt)
                done |= np.isin(nxt, stops)
            out = np.concatenate([out, nxt[:, None]], axis=1)
            if mask is not None:
                mask = np.concatenate([mask, np.ones((mask.shape[0], 1), dtype=np.bool_)], axis=1)
            feed = nxt[:, None]
            if on_step is not None and on_step(nxt):
                break
            if stops.size and done.all():
                break
    return out
