"""Fuzzing the GGUF loader (`llama_from_gguf`) with a tiny one-layer Llama written by the `gguf` package.

Two levels, so that thousands of cases stay cheap (parsing a GGUF file costs ~15 ms in the `gguf`
package, whatever its size):
- parsed: the valid file is parsed once; each case replaces one metadata value, or one tensor's name,
  type, shape or data, with something hostile, and loads the model from that reader (what
  `llama_from_gguf` does after `open_gguf`);
- bytes: seeded mutations of the file's header (metadata and tensor table; the tensor data after it is
  kept), each written and loaded from disk.

Allowed error: ValueError (FormatError is one) naming the file (or "GGUF" for a reader object).
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import gguf
import numpy as np
import pytest
from fuzzing import EXAMPLES, PER_READER, SCALARS, SWEEP, check_reader, fuzz, sweep
from hypothesis import given
from hypothesis import strategies as st

from entrenar.models.gguf import hf_to_gguf_name, llama_from_gguf, open_gguf

PARSED = EXAMPLES  # hypothesis cases on the parsed file (~20 ms each: drawing a reader is not cheap)
BYTES = SWEEP  # seeded header mutations written to disk and parsed (~6 ms each)
H, I, V, HEADS, KV = 32, 64, 32, 2, 1
D = H // HEADS
SHAPES = {
    "model.embed_tokens.weight": (V, H),
    "model.norm.weight": (H,),
    "model.layers.0.input_layernorm.weight": (H,),
    "model.layers.0.post_attention_layernorm.weight": (H,),
    "model.layers.0.self_attn.q_proj.weight": (HEADS * D, H),
    "model.layers.0.self_attn.k_proj.weight": (KV * D, H),
    "model.layers.0.self_attn.v_proj.weight": (KV * D, H),
    "model.layers.0.self_attn.o_proj.weight": (H, HEADS * D),
    "model.layers.0.mlp.gate_proj.weight": (I, H),
    "model.layers.0.mlp.up_proj.weight": (I, H),
    "model.layers.0.mlp.down_proj.weight": (H, I),
}
QUANTIZED = {"gate_proj": "Q4_0", "up_proj": "Q8_0"}


def write_gguf(path: Path, metadata: dict[str, Any] | None = None) -> Path:
    """A tiny random Llama (1 layer, hidden 32) as GGUF: F32 tensors, gate Q4_0, up Q8_0. `metadata`
    overrides the uint32 `llama.*` sizes (for the tests of huge sizes)."""
    rng = np.random.default_rng(0)
    sizes = {
        "block_count": 1,
        "context_length": 16,
        "embedding_length": H,
        "feed_forward_length": I,
        "attention.head_count": HEADS,
        "attention.head_count_kv": KV,
        "vocab_size": V,
        **(metadata or {}),
    }
    w = gguf.GGUFWriter(str(path), "llama")
    for key, value in sizes.items():
        w.add_uint32(f"llama.{key}", value) if value < 2**32 else w.add_uint64(f"llama.{key}", value)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    for name, shape in SHAPES.items():
        arr = rng.standard_normal(shape).astype(np.float32)
        kind = next((k for proj, k in QUANTIZED.items() if proj in name), None)
        if kind is None:
            w.add_tensor(hf_to_gguf_name(name), arr)
        else:
            qtype = gguf.GGMLQuantizationType[kind]
            w.add_tensor(hf_to_gguf_name(name), gguf.quants.quantize(arr, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def valid(folder: Path) -> Path:
    path = write_gguf(folder / "tiny.gguf")
    llama_from_gguf(path)  # the valid file loads
    return path


# ------------------------------------------------------------------------------ parsed level
@dataclass
class Field:
    value: Any

    def contents(self) -> Any:
        return self.value


def parsed(path: Path) -> tuple[dict[str, Any], list[SimpleNamespace]]:
    """The metadata values and the tensors (name, type name, shape, data) of a GGUF file, copied."""
    reader = open_gguf(path)
    fields = {k: f.contents() for k, f in reader.fields.items()}
    tensors = [
        SimpleNamespace(
            name=t.name, kind=t.tensor_type.name, shape=[int(s) for s in t.shape], data=np.array(t.data)
        )
        for t in reader.tensors
    ]
    return fields, tensors


def as_reader(fields: dict[str, Any], tensors: list[SimpleNamespace]) -> Any:
    """An object with the parts of `gguf.GGUFReader` the loader reads."""
    return SimpleNamespace(
        fields={k: Field(v) for k, v in fields.items()},
        tensors=[
            SimpleNamespace(
                name=t.name,
                tensor_type=SimpleNamespace(name=t.kind),
                shape=np.array(t.shape, dtype=object),  # any ints, beyond what uint64 holds too
                data=t.data,
            )
            for t in tensors
        ],
    )


HUGE = st.sampled_from([0, -1, 2**31, 2**32 + 1, 2**63, 10**12, 10**30])
VALUES = st.one_of(SCALARS, HUGE, st.lists(st.integers(-3, 70), max_size=4), st.just(np.float32(np.nan)))
KINDS = st.sampled_from(["F32", "F16", "Q4_0", "Q4_1", "Q8_0", "Q5_K", "I8", "BF16"])


@st.composite
def hostile_reader(draw: st.DrawFn, fields: dict[str, Any], tensors: list[SimpleNamespace]) -> Any:
    fields = dict(fields)
    tensors = [SimpleNamespace(**vars(t)) for t in tensors]
    what = draw(st.sampled_from(["field", "drop-field", "name", "kind", "shape", "data", "drop-tensor"]))
    if what in ("field", "drop-field"):
        key = draw(st.sampled_from(sorted(k for k in fields if not k.startswith("GGUF."))))
        if what == "field":
            fields[key] = draw(VALUES)
        else:
            del fields[key]
        return as_reader(fields, tensors)
    i = draw(st.integers(0, len(tensors) - 1))
    t = tensors[i]
    if what == "name":
        t.name = draw(st.one_of(st.text(max_size=24), st.sampled_from([x.name for x in tensors])))
    elif what == "kind":
        t.kind = draw(KINDS)
    elif what == "shape":
        t.shape = draw(st.lists(st.one_of(st.integers(0, 70), HUGE), min_size=0, max_size=3))
    elif what == "data":
        t.data = t.data.reshape(-1)[: draw(st.integers(0, t.data.size - 1))]
    else:
        del tensors[i]
    return as_reader(fields, tensors)


@pytest.fixture(scope="module")
def parts(valid: Path) -> tuple[dict[str, Any], list[SimpleNamespace]]:
    return parsed(valid)


@fuzz(PARSED)
@given(data=st.data())
def test_fuzz_gguf_parsed(parts: tuple[dict[str, Any], list[SimpleNamespace]], data: st.DataObject) -> None:
    reader = data.draw(hostile_reader(*parts))
    with np.errstate(all="ignore"):  # a hostile float16 tensor may hold inf; loading it is no error
        check_reader(lambda: llama_from_gguf(reader), "GGUF", (ValueError,), "gguf")


# ------------------------------------------------------------------------------ byte level
def test_fuzz_gguf_header_bytes(valid: Path, folder: Path) -> None:
    """Seeded mutations of the header (everything before the first tensor's data), the data kept."""
    blob = valid.read_bytes()
    start = int(open_gguf(valid).data_offset)
    header, body = blob[:start], blob[start:]
    path = folder / "sweep.gguf"
    assert PARSED + BYTES >= PER_READER
    ran = 0
    for mutated in sweep(header, BYTES):
        path.write_bytes(mutated + body)
        with np.errstate(all="ignore"):
            check_reader(lambda: llama_from_gguf(path), path, (ValueError,), "gguf")
        ran += 1
    assert ran == BYTES


def test_gguf_tensor_and_field_counts_beyond_the_file_are_refused_at_once(valid: Path, folder: Path) -> None:
    blob = bytearray(valid.read_bytes())
    for offset in (8, 16):  # the header's uint64 tensor count, then its metadata count
        hostile = bytearray(blob)
        hostile[offset : offset + 8] = struct.pack("<Q", 2**60)
        path = folder / f"counts{offset}.gguf"
        path.write_bytes(bytes(hostile))
        t0 = time.perf_counter()
        with pytest.raises(ValueError, match=rf"{path}: not a readable GGUF file"):
            llama_from_gguf(path)
        assert time.perf_counter() - t0 < 2.0
