"""Write a tiny random Llama as a GGUF file the way llama.cpp's converter does (q/k rows permuted)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch
import transformers

from entrenar.models.gguf import gguf_rope_order, hf_to_gguf_name

CFG = {
    "vocab_size": 64,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 48,
    "rms_norm_eps": 1e-5,
    "rope_theta": 2000.0,
}


def tiny_hf(tie: bool = True, seed: int = 0) -> transformers.LlamaForCausalLM:
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**CFG, tie_word_embeddings=tie)).eval()


def add_hparams(w: gguf.GGUFWriter, c: transformers.LlamaConfig) -> None:
    """The Llama shape keys every test GGUF carries (callers add rope base / vocab size as they need)."""
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)


def add_weights(w: gguf.GGUFWriter, hf: transformers.LlamaForCausalLM, types: dict[str, str]) -> None:
    """hf's weights under GGUF names, q/k rows in GGUF's rope order; `types` maps a GGUF name part
    (e.g. 'attn_q') to a GGML type, default F32."""
    c = hf.config
    for name, p in hf.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        arr = p.detach().numpy().astype(np.float32)
        heads = {"q_proj": c.num_attention_heads, "k_proj": c.num_key_value_heads}
        for proj, n in heads.items():
            if name.endswith(f"{proj}.weight"):
                arr = arr[gguf_rope_order(arr.shape[0], n)]
        gname = hf_to_gguf_name(name)
        kind = next((t for suffix, t in types.items() if f".{suffix}." in f".{gname}"), "F32")
        qtype = gguf.GGMLQuantizationType[kind]
        if kind == "F16":
            w.add_tensor(gname, arr.astype(np.float16))
        elif kind == "F32":
            w.add_tensor(gname, arr)
        else:
            w.add_tensor(gname, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)


def finish(w: gguf.GGUFWriter, path: Path) -> Path:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_tiny_gguf(
    path: Path, hf: transformers.LlamaForCausalLM, types: dict[str, str], arch: str = "llama"
) -> Path:
    """hf's weights into `path`; types maps a GGUF name suffix (e.g. 'attn_q') to a type, default F32."""
    c = hf.config
    w = gguf.GGUFWriter(str(path), arch)
    add_hparams(w, c)
    w.add_rope_freq_base(CFG["rope_theta"])
    w.add_vocab_size(c.vocab_size)
    add_weights(w, hf, types)
    return finish(w, path)


def write_tiny_tokenizer_gguf(path: Path, pre: str = "smollm", chat_template: str | None = None) -> Path:
    """The tiny model plus a byte-level BPE vocabulary: 256 byte symbols, a few merges, one control token
    (and `tokenizer.chat_template` when given)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    merges = ["h e", "l l", "he ll", "Ġ w", "o r", "Ġw or", "1 2"]
    tokens = ["<|end|>", *symbols, *(m.replace(" ", "") for m in merges)]
    types = [3] + [1] * (len(tokens) - 1)
    cfg = {**CFG, "vocab_size": len(tokens)}
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg, tie_word_embeddings=True))
    w = gguf.GGUFWriter(str(path), "llama")
    add_hparams(w, model.config)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(0)
    w.add_bos_token_id(0)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    add_weights(w, model, {})
    return finish(w, path)
