"""Limits on the sizes a model config may claim, checked before anything is allocated.

A config.json (or GGUF metadata) is a stranger's file: `vocab_size: 10**12` would otherwise become an
embedding table of terabytes, `num_hidden_layers: 10**6` a loop that builds layers until memory runs
out. Each size must be an int (not a bool) in [1, limit], the limits far above any released model
(the largest vocabularies are ~256k tokens, the widest hidden sizes ~25k), and the parameter count
the sizes imply must stay under MAX_PARAMETERS (2**36, 68.7 billion: 275 GB in float32, more than
any machine this library runs on can hold). Errors name the field, the value and the limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = [
    "MAX_PARAMETERS",
    "MAX_SIZES",
    "OPTIONAL",
    "bert_parameter_count",
    "check_parameter_count",
    "check_sizes",
    "llama_parameter_count",
]

MAX_SIZES: dict[str, int] = {
    "vocab_size": 2**22,
    "hidden_size": 2**17,
    "intermediate_size": 2**19,
    "num_hidden_layers": 2**12,
    "num_attention_heads": 2**12,
    "num_key_value_heads": 2**12,
    "head_dim": 2**12,
    "max_position_embeddings": 2**24,
    "type_vocab_size": 2**16,
}
MAX_PARAMETERS = 2**36
OPTIONAL = ("num_key_value_heads", "head_dim")  # null means "derived from the other sizes"


def check_sizes(where: str, sizes: Mapping[str, Any], aliases: Mapping[str, str] | None = None) -> None:
    """ValueError (its message starting with `where`, e.g. "<file>: ") naming the field, its value and
    its limit unless every entry of `sizes` whose name is in MAX_SIZES is an int in [1, limit] (or
    None, for the OPTIONAL ones).
    `aliases` maps a name of MAX_SIZES to the field's name in the file (e.g. a GGUF metadata key)."""
    for name, value in sizes.items():
        limit = MAX_SIZES.get(name)
        if limit is None or (value is None and name in OPTIONAL):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
            field = (aliases or {}).get(name, name)
            raise ValueError(f"{where}{field} must be an int in [1, {limit:,}], got {value!r}")


def check_parameter_count(where: str, count: int) -> None:
    """ValueError (its message starting with `where`) when the sizes imply more than MAX_PARAMETERS
    parameters."""
    if count > MAX_PARAMETERS:
        raise ValueError(
            f"{where}the sizes describe a model of {count:,} parameters, more than the limit of "
            f"{MAX_PARAMETERS:,} (refused before allocating anything)"
        )


def bert_parameter_count(c: Mapping[str, int]) -> int:
    """The weights of a BERT encoder with these (checked) sizes: the embeddings (vocab, position and
    token-type tables, h wide) plus per layer 4 h^2 for attention and 2 h i for the feed-forward."""
    h, i = c["hidden_size"], c["intermediate_size"]
    tables = (c["vocab_size"] + c.get("max_position_embeddings", 512) + c.get("type_vocab_size", 2)) * h
    return tables + c["num_hidden_layers"] * (4 * h * h + 2 * h * i)


def llama_parameter_count(c: Mapping[str, Any]) -> int:
    """The weights of a Llama model with these (checked) sizes: the embedding (twice when the lm_head is
    not tied) plus per layer q, k, v, o (heads of head_dim) and the three h x i SwiGLU projections."""
    h, i, heads = c["hidden_size"], c["intermediate_size"], c["num_attention_heads"]
    kv = c.get("num_key_value_heads") or heads
    d = c.get("head_dim") or max(1, h // heads)
    tables = c["vocab_size"] * h * (1 if c.get("tie_word_embeddings") else 2)
    return tables + c["num_hidden_layers"] * (2 * h * heads * d + 2 * h * kv * d + 3 * h * i)
