"""Llama models and tokenizers from GGUF files (llama.cpp's format), read with the `gguf` package.

Names. One table maps GGUF tensor names to Hugging Face's (`blk.N.attn_q.weight` ->
`model.layers.N.self_attn.q_proj.weight`); the inverse is derived from it.

Rotary layout. llama.cpp's converter permutes the rows of q_proj and k_proj so that its rope,
which rotates adjacent pairs (2i, 2i + 1), computes what Hugging Face's `rotate_half` computes on
pairs (i, i + D/2). Per head of D rows (convert_hf_to_gguf.py, `LlamaModel.permute`)::

    gguf = hf.reshape(n_head, 2, D / 2, cols).swapaxes(1, 2).reshape(rows, cols)

`gguf_rope_order` gives that as a row order (gguf = hf[order]); reading applies its inverse, which
for packed blocks is exact (a row is whole blocks). k_proj uses the number of KV heads.

Tensors. F32 and F16 become float arrays; Q4_0, Q4_1 and Q8_0 stay packed as `GGMLTensor` (the
frozen base of `GGMLLinear`), or are converted to NF4 (`base="nf4"`) or to float (`base="float"`).
Any other tensor type, or an architecture other than llama, is an error naming it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from entrenar.models.limits import check_parameter_count, check_sizes, llama_parameter_count
from entrenar.models.llama import LlamaConfig, LlamaForCausalLM
from entrenar.nn.layers import Linear
from entrenar.quant.ggml import GGML_TYPE_BYTES, GGMLEmbedding, GGMLLinear, GGMLTensor
from entrenar.quant.linear import QuantLinear

__all__ = [
    "GGUF_TO_HF",
    "HF_TO_GGUF",
    "gguf_config",
    "gguf_rope_order",
    "gguf_to_hf_name",
    "hf_to_gguf_name",
    "llama_from_gguf",
    "open_gguf",
    "read_gguf_tensors",
]

GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
HF_TO_GGUF = {hf: gg for gg, hf in GGUF_TO_HF.items()}
_FLOAT_TYPES = ("F32", "F16")
SUPPORTED_TYPES = (*_FLOAT_TYPES, *GGML_TYPE_BYTES)
_LAYER = {"gguf": re.compile(r"^blk\.(\d+)\.(.+)$"), "hf": re.compile(r"^model\.layers\.(\d+)\.(.+)$")}


def _rename(name: str, table: dict[str, str], side: str) -> str:
    m = _LAYER[side].match(name)
    key = name if m is None else name.replace(f".{m.group(1)}.", ".{i}.", 1)
    if key not in table:
        raise KeyError(f"no {side} -> {'hf' if side == 'gguf' else 'gguf'} name for tensor {name!r}")
    return table[key] if m is None else table[key].replace("{i}", m.group(1))


def gguf_to_hf_name(name: str) -> str:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight` (KeyError if unknown)."""
    return _rename(name, GGUF_TO_HF, "gguf")


def hf_to_gguf_name(name: str) -> str:
    """The inverse of `gguf_to_hf_name`."""
    return _rename(name, HF_TO_GGUF, "hf")


def gguf_rope_order(rows: int, n_head: int) -> np.ndarray:
    """Row order of llama.cpp's q/k permutation: gguf_weight = hf_weight[order] (see the module doc)."""
    if rows % (2 * n_head):
        raise ValueError(f"gguf_rope_order: {rows} rows do not split into {n_head} heads of even size")
    # (n_head, 2, D/2) -> (n_head, D/2, 2): row (h, i, half) of gguf is row (h, half, i) of hf
    return np.arange(rows).reshape(n_head, 2, rows // n_head // 2).swapaxes(1, 2).reshape(-1)


def open_gguf(path: str | os.PathLike[str]) -> Any:
    """A `gguf.GGUFReader` over the file (memory-mapped, read-only); errors name the file."""
    import gguf

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"GGUF file not found: {p}")
    try:
        return gguf.GGUFReader(p, "r")
    except Exception as exc:  # the reader raises ValueError / struct errors for a malformed file
        raise ValueError(f"{p}: not a readable GGUF file ({exc})") from exc


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


_SIZE_KEYS = {  # LlamaConfig field -> the GGUF metadata key that holds it
    "num_hidden_layers": "llama.block_count",
    "hidden_size": "llama.embedding_length",
    "intermediate_size": "llama.feed_forward_length",
    "num_attention_heads": "llama.attention.head_count",
    "num_key_value_heads": "llama.attention.head_count_kv",
    "max_position_embeddings": "llama.context_length",
    "vocab_size": "llama.vocab_size",
}


def gguf_config(reader: Any, where: str = "GGUF") -> LlamaConfig:
    """A LlamaConfig from the `llama.*` metadata; an architecture other than llama is an error. Sizes
    are checked against `entrenar.models.limits` (ValueError naming the metadata key and the limit)
    before anything is allocated."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"{where}: architecture {arch!r} is not supported (only 'llama')")
    names = {t.name for t in reader.tensors}
    sizes = {name: _field(reader, key) for name, key in _SIZE_KEYS.items()}
    required = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads")
    missing = [_SIZE_KEYS[k] for k in required if sizes[k] is None]
    if missing:
        raise ValueError(f"{where}: metadata lacks {', '.join(missing)}")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    if sizes["vocab_size"] is None:
        if not isinstance(tokens, list):
            raise ValueError(f"{where}: metadata lacks llama.vocab_size and tokenizer.ggml.tokens")
        sizes["vocab_size"] = len(tokens)
    sizes["num_key_value_heads"] = sizes["num_key_value_heads"] or sizes["num_attention_heads"]
    sizes["max_position_embeddings"] = sizes["max_position_embeddings"] or 2048
    tied = "output.weight" not in names
    check_sizes(f"{where}: ", sizes, _SIZE_KEYS)
    check_parameter_count(f"{where}: ", llama_parameter_count({**sizes, "tie_word_embeddings": tied}))
    heads, hidden = sizes["num_attention_heads"], sizes["hidden_size"]
    rope_dim = _field(reader, "llama.rope.dimension_count")
    if rope_dim is not None and rope_dim != hidden // heads:
        raise ValueError(
            f"{where}: partial rotary (llama.rope.dimension_count {rope_dim!r}) is not supported"
        )
    if _field(reader, "llama.rope.scaling.type", "none") not in ("none", None):
        raise ValueError(
            f"{where}: rope scaling {_field(reader, 'llama.rope.scaling.type')!r} is not supported"
        )
    try:
        return LlamaConfig(
            **sizes,
            rms_norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(_field(reader, "llama.rope.freq_base", 10000.0)),
            tie_word_embeddings=tied,
            bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
            eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def read_gguf_tensors(reader: Any, config: LlamaConfig, where: str = "GGUF") -> dict[str, Any]:
    """Every tensor by its Hugging Face name: float32 arrays or GGMLTensors, q/k rows un-permuted.
    ValueError naming `where` and the tensor for an unknown name or type, or data that does not fit
    its shape."""
    out: dict[str, Any] = {}
    for t in reader.tensors:
        kind = t.tensor_type.name
        if kind not in SUPPORTED_TYPES:
            raise ValueError(
                f"{where}: tensor {t.name!r} has type {kind}, which is not supported (supported: "
                f"{', '.join(SUPPORTED_TYPES)})"
            )
        try:
            name, value = _read_tensor(t, config)
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise ValueError(f"{where}: tensor {t.name!r}: {str(exc).strip(chr(34) + chr(39))}") from None
        if name in out:
            raise ValueError(f"{where}: tensor {t.name!r} appears twice")
        out[name] = value
    return out


def _read_tensor(t: Any, config: LlamaConfig) -> tuple[str, Any]:
    kind = t.tensor_type.name
    name = gguf_to_hf_name(t.name)
    shape = tuple(int(s) for s in reversed(t.shape.tolist()))  # GGUF lists ne0 (columns) first
    value: Any
    if kind in _FLOAT_TYPES:
        value = np.asarray(t.data).astype(np.float32).reshape(shape)
    else:
        value = GGMLTensor(kind, np.asarray(t.data), shape)  # type: ignore[arg-type]
    heads = {"q_proj": config.num_attention_heads, "k_proj": config.kv_heads}
    for proj, n in heads.items():
        if name.endswith(f"self_attn.{proj}.weight"):
            inverse = np.argsort(gguf_rope_order(shape[0], n))  # hf = gguf[inverse]
            value = value[inverse] if isinstance(value, np.ndarray) else value.take_rows(inverse)
    return name, value


def llama_from_gguf(
    path: str | os.PathLike[str] | Any,
    *,
    base: str = "packed",
    nf4_block_size: int = 64,
    dtype: Any = np.float32,
) -> LlamaForCausalLM:
    """A LlamaForCausalLM from a GGUF file.

    base: "packed" keeps Q4_0 / Q4_1 / Q8_0 projections in their blocks (GGMLLinear), "nf4"
    re-quantizes them to NF4 (QuantLinear), "float" dequantizes them. Norms are always float. With
    "packed", a quantized tied embedding stays packed too: one GGMLTensor serves as the input table
    (GGMLEmbedding, rows dequantized as they are looked up) and as the output projection (a GGMLLinear
    lm_head, which decoding multiplies by the fused matvec kernel); otherwise embeddings and the lm_head
    are float. `path` may also be a reader from `open_gguf` (parsing the metadata of a large
    vocabulary takes seconds).
    """
    if base not in ("packed", "nf4", "float"):
        raise ValueError(f"llama_from_gguf: base must be 'packed', 'nf4' or 'float', got {base!r}")
    is_path = isinstance(path, (str, os.PathLike))
    reader = open_gguf(path) if is_path else path
    where = str(path) if is_path else "GGUF"
    config = gguf_config(reader, where)
    tensors = read_gguf_tensors(reader, config, where)
    model = LlamaForCausalLM(config, dtype=dtype)
    floats: dict[str, np.ndarray] = {}
    embed = tensors.get("model.embed_tokens.weight")
    packed_embedding = base == "packed" and config.tie_word_embeddings and isinstance(embed, GGMLTensor)
    try:
        if packed_embedding:
            _tie_packed(model, tensors.pop("model.embed_tokens.weight"), dtype)
        for name, value in tensors.items():
            if isinstance(value, np.ndarray):
                floats[name] = value
            elif not name.endswith("_proj.weight") or base == "float":
                floats[name] = value.dequantize(dtype)
            else:
                _replace_linear(model, name.removesuffix(".weight"), value, base, nf4_block_size)
        model.load_state_dict(floats, strict=False)
    except (KeyError, ValueError, TypeError, IndexError, AttributeError) as exc:
        raise ValueError(f"{where}: the tensors do not fit the model its metadata describes: {exc}") from None
    missing = [
        n
        for n, _ in model.named_parameters()
        if n not in floats
        and not (config.tie_word_embeddings and n == "lm_head.weight")
        and not (packed_embedding and n == "model.embed_tokens.weight")
    ]
    if missing:
        raise ValueError(f"{where}: the file lacks tensors for {', '.join(missing[:5])}")
    return model


def _tie_packed(model: LlamaForCausalLM, q: GGMLTensor, dtype: Any) -> None:
    """The tied embedding kept packed: one GGMLTensor for embed_tokens and lm_head (see llama_from_gguf)."""
    emb = model.model.embed_tokens
    if (emb.num_embeddings, emb.embedding_dim) != q.shape:
        raise ValueError(f"GGUF tensor for model.embed_tokens has shape {q.shape}, the model expects {emb}")
    model.model.embed_tokens = GGMLEmbedding(q, dtype=dtype)  # type: ignore[assignment]
    model.lm_head = GGMLLinear(q)  # type: ignore[assignment]


def _replace_linear(model: LlamaForCausalLM, path: str, q: GGMLTensor, base: str, block: int) -> None:
    *parents, leaf = path.split(".")
    owner: Any = model
    for part in parents:
        owner = owner[int(part)] if part.isdigit() else getattr(owner, part)
    old = getattr(owner, leaf)
    if not isinstance(old, Linear) or (old.out_features, old.in_features) != q.shape:
        raise ValueError(f"GGUF tensor for {path} has shape {q.shape}, the model expects {old}")
    layer = GGMLLinear(q) if base == "packed" else QuantLinear(q.to_nf4(block))
    setattr(owner, leaf, layer)
