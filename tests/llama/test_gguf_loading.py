"""GGUF loading: names, the rotary row permutation, packed bases.

The oracle is transformers loading the same GGUF file (its own name table and reverse permutation).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from tiny_gguf import CFG, tiny_hf, write_tiny_gguf
from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

from entrenar.autograd.tape import no_grad
from entrenar.models.gguf import (
    GGUF_TO_HF,
    gguf_rope_order,
    gguf_to_hf_name,
    hf_to_gguf_name,
    llama_from_gguf,
)
from entrenar.quant.ggml import GGMLLinear
from entrenar.quant.linear import QuantLinear

TYPES = {
    "attn_q": "Q4_0",
    "attn_k": "Q4_1",
    "attn_v": "Q8_0",
    "ffn_up": "Q8_0",
    "ffn_gate": "Q4_1",
    "ffn_down": "Q4_0",
    "attn_output": "F16",
    "token_embd": "F16",
}


def test_name_mapping_round_trips_every_tensor() -> None:
    hf = tiny_hf(tie=False)
    for name in hf.state_dict():
        g = hf_to_gguf_name(name)
        assert gguf_to_hf_name(g) == name
    assert gguf_to_hf_name("blk.17.attn_q.weight") == "model.layers.17.self_attn.q_proj.weight"
    assert len(set(GGUF_TO_HF.values())) == len(GGUF_TO_HF)
    with pytest.raises(KeyError, match=r"blk\.0\.attn_qkv\.weight"):
        gguf_to_hf_name("blk.0.attn_qkv.weight")


@pytest.mark.parametrize(("rows", "heads"), [(64, 4), (24, 3), (8, 1)])
def test_rope_order_is_llama_cpp_permute_and_transformers_reverses_it(rows: int, heads: int) -> None:
    w = np.random.default_rng(0).standard_normal((rows, 5))
    # llama.cpp convert_hf_to_gguf.py, LlamaModel.permute
    llama_cpp = w.reshape(heads, 2, rows // heads // 2, 5).swapaxes(1, 2).reshape(w.shape)
    order = gguf_rope_order(rows, heads)
    np.testing.assert_array_equal(w[order], llama_cpp)
    back = LlamaTensorProcessor()._reverse_permute_weights(llama_cpp, heads, heads)
    np.testing.assert_array_equal(back, w)
    np.testing.assert_array_equal(llama_cpp[np.argsort(order)], w)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, transformers.LlamaForCausalLM]:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(path, tiny_hf(tie=True), TYPES)
    oracle = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    return path, oracle


@pytest.mark.parametrize("base", ["packed", "float"])
def test_logits_equal_transformers_loading_the_same_gguf(tiny_file: tuple[Path, Any], base: str) -> None:
    path, oracle = tiny_file
    model = llama_from_gguf(path, base=base)
    assert model.config.tie_word_embeddings and model.config.rope_theta == CFG["rope_theta"]
    if base == "packed":
        assert isinstance(model.model.layers[0].self_attn.q_proj, GGMLLinear)
        assert model.model.layers[1].mlp.up_proj.qweight.kind == "Q8_0"
    ids = np.random.default_rng(3).integers(0, CFG["vocab_size"], size=(2, 11))
    with torch.no_grad():
        want = oracle(torch.from_numpy(ids)).logits.numpy()
    with no_grad():
        got = model(ids).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_without_the_unpermutation_the_logits_differ(tiny_file: tuple[Path, Any]) -> None:
    """The permutation matters: re-applying llama.cpp's order to q and k changes the output."""
    path, oracle = tiny_file
    model = llama_from_gguf(path, base="float")
    attn = model.model.layers[0].self_attn
    attn.q_proj.weight.data[...] = attn.q_proj.weight.data[gguf_rope_order(64, 4)]
    ids = np.arange(8).reshape(1, 8)
    with torch.no_grad():
        want = oracle(torch.from_numpy(ids)).logits.numpy()
    with no_grad():
        assert np.abs(model(ids).numpy() - want).max() > 1e-3


def test_nf4_base_is_close(tiny_file: tuple[Path, Any]) -> None:
    path, _ = tiny_file
    packed, nf4 = llama_from_gguf(path), llama_from_gguf(path, base="nf4", nf4_block_size=32)
    assert isinstance(nf4.model.layers[0].mlp.down_proj, QuantLinear)
    assert isinstance(nf4.model.layers[0].self_attn.o_proj.weight.data, np.ndarray)  # F16 stays float
    ids = np.arange(10).reshape(1, 10)
    with no_grad():
        a, b = packed(ids).numpy(), nf4(ids).numpy()
    assert np.abs(a - b).max() < 0.1 * np.abs(a).max()


def test_unsupported_type_and_architecture_are_named(tmp_path: Path) -> None:
    hf = tiny_hf()
    bad_type = write_tiny_gguf(tmp_path / "q5.gguf", hf, {"ffn_down": "Q5_0"})
    with pytest.raises(ValueError, match=r"'blk.0.ffn_down.weight' has type Q5_0, which is not supported"):
        llama_from_gguf(bad_type)
    bad_arch = write_tiny_gguf(tmp_path / "arch.gguf", hf, {}, arch="falcon")
    with pytest.raises(ValueError, match="architecture 'falcon' is not supported"):
        llama_from_gguf(bad_arch)
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        llama_from_gguf(tmp_path / "nope.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        llama_from_gguf(tmp_path / "junk.gguf")
