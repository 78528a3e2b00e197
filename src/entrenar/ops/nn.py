"""Neural-network ops: softmax, normalization, embedding, dropout, attention.

Each is one fused primitive with a hand-written backward (torch.nn.functional semantics). Forwards
are numerically stable (max-subtracted exponentials) and keep the input's dtype; random draws come
only from an explicitly passed `np.random.Generator`.

This file holds embedding, dropout and scaled_dot_product_attention; softmax, log_softmax,
layer_norm and rms_norm are in normalization.py and re-exported here, so this module still names
every neural-network op.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from entrenar.autograd.registry import Arg, Gen, case, defop, public
from entrenar.kernels import attention_fused, dropout_fused, nn_fused
from entrenar.ops.normalization import _data, _float_data, layer_norm, log_softmax, rms_norm, softmax
from entrenar.tensor import Tensor, TensorLike

__all__ = [
    "dropout",
    "embedding",
    "layer_norm",
    "log_softmax",
    "rms_norm",
    "scaled_dot_product_attention",
    "softmax",
]

A = Arg


# ----------------------------------------------------------------------------------- embedding
@defop("embedding")
def _Embedding(idx: np.ndarray, w: np.ndarray, *, padding_idx: int | None) -> Any:
    return w[idx], (idx, w.shape, padding_idx)


@_Embedding.defbackward
def _embedding_backward(g: np.ndarray, saved: Any) -> Any:
    idx, shape, padding_idx = saved
    flat, rows = idx.reshape(-1), g.reshape(-1, shape[1])  # (*idx.shape, D) -> (N, D)
    if nn_fused.supports_scatter_rows(rows, shape[0]):
        gw = nn_fused.scatter_add_rows(flat, rows, shape[0])  # one pass, as the reference below
    else:
        gw = np.zeros(shape, dtype=g.dtype)
        # rows scatter-added into their weight rows; repeated indices accumulate in order
        np.add.at(gw, flat, rows)
    if padding_idx is not None:
        gw[padding_idx] = 0
    return None, gw


@public(
    "torch.nn.functional.embedding",
    [
        case(A((3, 4), 0, 6, kind="int"), A((6, 5))),
        # the padding row gets no gradient by definition, which finite differences cannot confirm:
        # here the indices avoid it (tests/test_nn_ops.py checks the padding row against PyTorch)
        case(A((4, 5), 0, 3, kind="int"), A((4, 3)), 3),
        case(A((7,), 0, 3, kind="int"), A((4, 3)), padding_idx=-1),
        case(A((), 0, 4, kind="int"), A((4, 3))),
    ],
)
def embedding(input: TensorLike, weight: TensorLike, padding_idx: int | None = None) -> Tensor:
    """Rows of weight (num_embeddings, dim) picked by the integer indices in input (any shape).

    The gradient is scatter-added into weight; the padding_idx row gets none (a negative
    padding_idx counts from the end, as in PyTorch).
    """
    idx = _data(input)
    w = _float_data("embedding", weight, "weight")
    if idx.dtype.kind not in "iu":
        raise TypeError(f"embedding: input must hold integer indices, got dtype {idx.dtype}")
    if w.ndim != 2:
        raise ValueError(f"embedding: weight must be 2-D (num_embeddings, dim), got shape {w.shape}")
    n = w.shape[0]
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        bad = idx.min() if idx.min() < 0 else idx.max()
        raise IndexError(f"embedding: index {bad} is out of range for a weight with {n} rows")
    if padding_idx is not None:
        if not -n <= padding_idx < n:
            raise ValueError(f"embedding: padding_idx {padding_idx} must be within [-{n}, {n})")
        padding_idx = int(padding_idx) % n
    return _Embedding(Tensor(idx), weight, padding_idx=padding_idx)


# ----------------------------------------------------------------------------------- dropout
def _check_generator(op: str, generator: Any) -> np.random.Generator:
    if generator is None:
        raise ValueError(
            f"{op}: drawing a random mask needs an explicit generator=np.random.Generator (randomness "
            "in entrenar is never global state); pass e.g. np.random.default_rng(seed)"
        )
    if not isinstance(generator, np.random.Generator):
        raise TypeError(f"{op}: generator must be an np.random.Generator, got {type(generator).__name__}")
    return generator


def _keep_scale(shape: tuple[int, ...], p: float, rng: np.random.Generator | None, dtype: Any) -> np.ndarray:
    """The inverted-dropout multiplier: 0 where dropped (probability p), 1 / (1 - p) elsewhere.

    rng is None only for p == 1, where nothing is drawn. The mask is dropout_fused's counter-based one,
    keyed by one draw from rng (the reference, in NumPy).
    """
    if rng is None:
        return np.zeros(shape, dtype=dtype)
    keep = dropout_fused.keep_reference(dropout_fused.draw_key(rng), math.prod(shape), p).reshape(shape)
    return keep * np.asarray(1.0 / (1.0 - p), dtype=dtype)


@defop("dropout")
def _Dropout(x: np.ndarray, *, p: float, generator: np.random.Generator | None) -> Any:
    if generator is None:  # p == 1: everything dropped (x * 0, so NaN stays NaN)
        return x * np.zeros((), dtype=x.dtype), (None, 1.0)
    key = dropout_fused.draw_key(generator)
    if dropout_fused.supports(x):
        out, keep = dropout_fused.dropout_forward(x, key, p)
        return out, (keep, p)
    keep = dropout_fused.keep_reference(key, x.size, p).reshape(x.shape)
    return x * (keep * np.asarray(1.0 / (1.0 - p), dtype=x.dtype)), (keep, p)


@_Dropout.defbackward
def _dropout_backward(g: np.ndarray, saved: tuple[np.ndarray | None, float]) -> Any:
    keep, p = saved
    if keep is None:  # p == 1
        return (g * np.zeros((), dtype=g.dtype),)
    if dropout_fused.supports(g):
        return (dropout_fused.dropout_backward(g, keep, p),)
    return (g * (keep * np.asarray(1.0 / (1.0 - p), dtype=g.dtype)),)


def _check_p(op: str, name: str, p: float) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{op}: {name} has to be between 0 and 1, but got {p}")
    return p


@public(
    "torch.nn.functional.dropout",
    [
        case(A((40, 50)), 0.3, generator=Gen(0), oracle=False, reason="the random mask is not PyTorch's"),
        case(A((3, 4)), 0.3, False),
        case(A((3, 4)), 1.0),
        case(A((3, 4)), 0.0),
    ],
)
def dropout(
    input: TensorLike, p: float = 0.5, training: bool = True, generator: np.random.Generator | None = None
) -> Tensor:
    """Zero each element with probability p and scale the rest by 1 / (1 - p) (inverted dropout).

    Identity when not training or p == 0; zeros when p == 1. Otherwise the mask is drawn from
    `generator`, which must be given (an explicit np.random.Generator).
    """
    p = _check_p("dropout", "dropout probability", p)
    x = input if isinstance(input, Tensor) else Tensor(np.asarray(input))
    _float_data("dropout", x)
    if not training or p == 0.0:
        return x
    rng = None if p == 1.0 else _check_generator("dropout", generator)
    return _Dropout(x, p=p, generator=rng)


# ----------------------------------------------------------------------------------- attention
@defop("scaled_dot_product_attention", broadcasts=True, needs_mask=True)
def _Attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    *,
    bias: np.ndarray | None,
    scale: float,
    dropout_p: float,
    generator: np.random.Generator | None,
    is_causal: bool = False,
) -> Any:
    if attention_fused.supports(q, k, v, bias is not None, is_causal, dropout_p):
        # one task per (batch, head) pair, causal keys only (kernels/attention_fused.py); below: the reference
        out, p = attention_fused.attention_forward(q, k, v, scale, is_causal)
        return out, ("fused", q, k, v, p, is_causal, scale)
    s = q @ np.swapaxes(k, -1, -2)  # (..., L, E) @ (..., E, S) -> (..., L, S)
    s *= scale
    if bias is not None:
        if np.broadcast_shapes(s.shape, bias.shape) == s.shape:
            s += bias
        else:  # the mask carries batch dims that only value has
            s = s + bias
        m = s.max(axis=-1, keepdims=True)
        m[~np.isfinite(m)] = 0  # a fully masked row attends to nothing: output 0, as PyTorch
    else:
        m = s.max(axis=-1, keepdims=True)
    s -= m
    p = np.exp(s, out=s)
    total = p.sum(axis=-1, keepdims=True)
    if bias is not None:
        total[total == 0] = 1
    p /= total
    drop = None
    pd = p
    if dropout_p > 0.0:
        drop = _keep_scale(p.shape, dropout_p, generator, p.dtype)
        pd = p * drop
    out = pd @ v  # (..., L, S) @ (..., S, Ev) -> (..., L, Ev)
    return out, ("reference", q, k, v, p, pd, drop, scale)


@_Attention.defbackward
def _attention_backward(g: np.ndarray, saved: Any, needs: tuple[bool, ...]) -> Any:
    if saved[0] == "fused":
        _, q, k, v, p, is_causal, scale = saved
        grads = attention_fused.attention_backward(g, q, k, v, p, scale, is_causal)
        return tuple(gr if need else None for gr, need in zip(grads, needs, strict=True))
    _, q, k, v, p, pd, drop, scale = saved
    gq = gk = gv = None
    if needs[2]:
        gv = np.swapaxes(pd, -1, -2) @ g  # (..., S, L) @ (..., L, Ev) -> (..., S, Ev)
    if needs[0] or needs[1]:
        gp = g @ np.swapaxes(v, -1, -2)  # (..., L, Ev) @ (..., Ev, S) -> (..., L, S)
        if drop is not None:
            gp *= drop
        # softmax backward, then the scale: d scores = p (gp - sum(gp p))
        gs = gp * p
        gs -= p * gs.sum(axis=-1, keepdims=True)
        gs *= scale
        if needs[0]:
            gq = gs @ k  # (..., L, S) @ (..., S, E) -> (..., L, E)
        if needs[1]:
            gk = np.swapaxes(gs, -1, -2) @ q  # (..., S, L) @ (..., L, E) -> (..., S, E)
    return gq, gk, gv


@public(
    "torch.nn.functional.scaled_dot_product_attention",
    [
        case(A((2, 3, 4)), A((2, 5, 4)), A((2, 5, 6))),
        case(A((2, 2, 3, 4)), A((1, 2, 5, 4)), A((2, 1, 5, 3)), A((3, 5), kind="bool")),
        case(A((2, 4, 3)), A((2, 4, 3)), A((2, 4, 2)), is_causal=True),
        case(A((2, 3, 5)), A((2, 6, 5)), A((2, 6, 2)), is_causal=True, scale=0.3),
        case(A((2, 3, 4)), A((2, 5, 4)), A((2, 5, 4)), A((2, 3, 5), kind="const")),
        case(A((3, 4)), A((5, 4)), A((5, 2)), A((3, 5), kind="bool")),
        case(
            A((2, 3, 4)),
            A((2, 5, 4)),
            A((2, 5, 6)),
            dropout_p=0.4,
            generator=Gen(0),
            oracle=False,
            reason="the random dropout mask is not PyTorch's",
        ),
    ],
)
def scaled_dot_product_attention(
    query: TensorLike,
    key: TensorLike,
    value: TensorLike,
    attn_mask: TensorLike | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    generator: np.random.Generator | None = None,
) -> Tensor:
    """softmax(query @ key^T * scale + mask) @ value, as one fused op.

    Shapes (..., L, E), (..., S, E), (..., S, Ev) -> (..., L, Ev), batch dims broadcasting.
    attn_mask is a constant: bool (True = may attend) or float (added to the scores), broadcastable
    to (..., L, S). is_causal uses the top-left-aligned lower-triangular mask. scale defaults to
    1 / sqrt(E). dropout_p > 0 drops attention weights with a mask drawn from `generator`. A row
    that may attend to nothing gives 0, as PyTorch.
    """
    op = "scaled_dot_product_attention"
    q = _float_data(op, query, "query")
    k = _float_data(op, key, "key")
    v = _float_data(op, value, "value")
    if q.ndim < 2 or k.ndim < 2 or v.ndim < 2:
        raise ValueError(
            f"{op}: query, key and value need at least 2 dims, got {q.shape}, {k.shape}, {v.shape}"
        )
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"{op}: query, key and value must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"{op}: expected query (..., L, E), key (..., S, E), value (..., S, Ev); got {q.shape}, "
            f"{k.shape}, {v.shape}"
        )
    try:
        batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except ValueError:
        raise ValueError(
            f"{op}: the batch dims of query {q.shape}, key {k.shape} and value {v.shape} do not broadcast"
        ) from None
    L, S = q.shape[-2], k.shape[-2]
    dropout_p = _check_p(op, "dropout_p", dropout_p)
    bias: np.ndarray | None = None
    if is_causal:
        if attn_mask is not None:
            raise ValueError(f"{op}: pass either attn_mask or is_causal=True, not both")
        bias = np.where(np.tri(L, S, dtype=bool), 0.0, -np.inf).astype(q.dtype)
    elif attn_mask is not None:
        mask = _data(attn_mask)
        try:
            fits = np.broadcast_shapes(mask.shape, (*batch, L, S)) == (*batch, L, S)
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f"{op}: attn_mask of shape {mask.shape} does not broadcast to {(*batch, L, S)}")
        if mask.dtype == np.bool_:
            bias = np.where(mask, 0.0, -np.inf).astype(q.dtype)
        elif mask.dtype.kind == "f":
            bias = mask.astype(q.dtype, copy=False)
        else:
            raise TypeError(f"{op}: attn_mask must be bool or floating, got dtype {mask.dtype}")
    rng = _check_generator(op, generator) if 0.0 < dropout_p < 1.0 else None
    s = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return _Attention(
        query, key, value, bias=bias, scale=s, dropout_p=dropout_p, generator=rng, is_causal=is_causal
    )
