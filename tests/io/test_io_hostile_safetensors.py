"""Hostile safetensors files: each one raises FormatError naming the file, never another exception type.

The oracle for mutated files is the `safetensors` package itself: whatever this reader accepts, the
package must accept too and read to the same arrays (this reader is the stricter of the two).
"""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from hypothesis import given, settings
from hypothesis import strategies as st

from entrenar.io import FormatError, TensorInfo, load_safetensors, read_safetensors_header, save_safetensors

SAMPLE = {
    "base_model.model.q.lora_A.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
    "ids": np.array([7, -1], dtype=np.int64),
    "mask": np.array([True, False, True]),
    "scale": np.array(0.5, dtype=np.float16),
    "empty": np.zeros((0, 4), dtype=np.float32),
}


@pytest.fixture(scope="module")
def sample_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("sample") / "sample.safetensors"
    save_safetensors(path, SAMPLE, {"format": "pt"})
    return path.read_bytes()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile") / "adapter_model.safetensors"


def _file(header: object, data: bytes = b"", *, length: int | None = None, raw: bytes | None = None) -> bytes:
    """A file from a header (JSON-encoded unless `raw` bytes are given), a data section and optionally a lying
    length prefix."""
    body = raw if raw is not None else json.dumps(header).encode()
    return (len(body) if length is None else length).to_bytes(8, "little") + body + data


def _check(path: Path, content: bytes) -> dict[str, np.ndarray] | None:
    """Load `content` from `path`: the arrays, or None after a FormatError that names the file.

    When this reader accepts the file, the safetensors package must read the same keys, shapes and bytes.
    """
    path.write_bytes(content)
    try:
        header: dict[str, TensorInfo] | None = read_safetensors_header(path)[0]
    except FormatError:
        header = None
    try:
        loaded = load_safetensors(path)
    except FormatError as exc:
        assert exc.path == str(path) and str(exc).startswith(f"{path}: ")
        # the header alone decides, except for BOOL bytes, which only loading reads
        assert header is None or "BOOL bytes must be 0 or 1" in str(exc)
        return None
    assert header is not None and list(loaded) == list(header)
    assert all(loaded[key].shape == info.shape for key, info in header.items())
    reference = safetensors.numpy.load(content)
    assert sorted(loaded) == sorted(reference)
    for key, array in loaded.items():
        assert array.shape == reference[key].shape and array.dtype == reference[key].dtype
        assert array.tobytes() == reference[key].tobytes()
    return loaded


def test_sample_is_valid(sample_bytes: bytes, scratch: Path) -> None:
    loaded = _check(scratch, sample_bytes)
    assert loaded is not None and sorted(loaded) == sorted(SAMPLE)


def test_every_truncation_is_refused(sample_bytes: bytes, scratch: Path) -> None:
    for length in range(len(sample_bytes)):
        assert _check(scratch, sample_bytes[:length]) is None, length


@pytest.mark.parametrize("extra", [b"\x00", b" ", b"\x00" * 64])
def test_trailing_bytes_are_refused(sample_bytes: bytes, scratch: Path, extra: bytes) -> None:
    scratch.write_bytes(sample_bytes + extra)
    with pytest.raises(FormatError, match=r"belong to no tensor"):
        load_safetensors(scratch)


def test_every_single_bit_flip_loads_consistently_or_is_refused(sample_bytes: bytes, scratch: Path) -> None:
    n = int.from_bytes(sample_bytes[:8], "little")
    refused_in_data = 0
    for position in range(len(sample_bytes)):
        for bit in range(8):
            mutated = bytearray(sample_bytes)
            mutated[position] ^= 1 << bit
            loaded = _check(scratch, bytes(mutated))
            if position >= 8 + n:  # a flip in the data section keeps the header: same keys and shapes
                if loaded is None:
                    refused_in_data += 1
                else:
                    assert {k: v.shape for k, v in loaded.items()} == {k: v.shape for k, v in SAMPLE.items()}
    # only a BOOL byte turned into something other than 0 or 1 is refused there: 3 bytes x 7 bits
    assert refused_in_data == 3 * 7


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_random_mutations_load_consistently_or_raise_format_error(
    sample_bytes: bytes, scratch: Path, data: st.DataObject
) -> None:
    content = bytearray(sample_bytes)
    edits = data.draw(
        st.lists(st.tuples(st.integers(0, len(content) - 1), st.integers(0, 255)), min_size=1, max_size=6)
    )
    for position, value in edits:
        content[position] = value
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(content))))
    _check(scratch, bytes(content[:cut]))


HEADER = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
DATA = bytes(8)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", r"file has 0 bytes; a safetensors file starts with an 8-byte header length"),
        (b"\x02\x00\x00", r"file has 3 bytes"),
        (_file(HEADER, DATA, length=2**64 - 1), r"header length 18446744073709551615 exceeds the limit"),
        (_file(HEADER, DATA, length=10**12), r"header length 1000000000000 exceeds the limit"),
        (_file(HEADER, DATA, length=1000), r"header length 1000 exceeds the 69 bytes that follow"),
        (_file(None, raw=b"\xff\xfe{}"), r"header is not UTF-8: invalid start byte at header byte 0"),
        (
            _file(None, raw=b"[1, 2]"),
            r"header must be a JSON object starting with '\{'; it starts with b'\[1, 2\]'",
        ),
        (_file(None, raw=b' {"a": 1}'), r"must be a JSON object starting with"),
        (
            _file(None, raw=b"{not json}"),
            r"header is not valid JSON: Expecting property name .* line 1 column 2",
        ),
        (_file(None, raw=b'{"w": {'), r"header is not valid JSON"),
        (_file(None, raw=b"{} {}"), r"header has ' \{\}' after its JSON object at header byte 2; only space"),
        (_file(None, raw=b"{}\n"), r"after its JSON object"),
        (_file(None, raw=b"{}\x00\x00"), r"after its JSON object"),
        (_file(None, raw=b'{"a": NaN}'), r"header holds NaN, which is not JSON"),
        (
            _file(None, raw=b'{"x": [' * 100_000 + b"]" * 100_000 + b"}"),
            r"nests JSON too deeply|not valid JSON",
        ),
        (_file(None, raw=b'{"x": ' + b"9" * 5000 + b"}"), r"header cannot be parsed"),
        (
            _file(
                None,
                raw=b'{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "w": {}}',
                data=b"\x00",
            ),
            r"header repeats the key 'w' within one JSON object",
        ),
        (
            _file(None, raw=b'{"w": {"dtype": "U8", "dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}'),
            r"repeats the key 'dtype'",
        ),
        (
            _file({"__metadata__": ["a"]}),
            r"__metadata__ must be a JSON object of strings to strings, got list",
        ),
        (_file({"__metadata__": {"format": 1}}), r"__metadata__\['format'\] is int 1, expected a string"),
        (_file({"__metadata__": None}), r"__metadata__ must be a JSON object .* got NoneType"),
        (_file(None, raw=b'{"__metadata__": {"\\ud800": "x"}}'), r"lone surrogate"),
        (
            _file(None, raw=b'{"w\\udfff": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}}'),
            r"lone surrogate",
        ),
        (
            _file({"": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}}),
            r"names a tensor with the empty string",
        ),
        (
            _file({"w": [1, 2]}),
            r"tensor 'w': entry must be an object of dtype, shape and data_offsets, got list",
        ),
        (_file({"w": {"dtype": "F32", "shape": [2]}}, DATA), r"tensor 'w': entry lacks \['data_offsets'\]"),
        (
            _file({"w": {**HEADER["w"], "extra": 1}}, DATA),
            r"tensor 'w': entry has unknown fields \['extra'\]",
        ),
        (_file({"w": {**HEADER["w"], "dtype": "F33"}}, DATA), r"dtype 'F33' is not a safetensors dtype"),
        (_file({"w": {**HEADER["w"], "dtype": "f32"}}, DATA), r"dtype 'f32' is not a safetensors dtype"),
        (_file({"w": {**HEADER["w"], "dtype": 4}}, DATA), r"dtype 4 is not a safetensors dtype"),
        (
            _file({"w": {**HEADER["w"], "dtype": "F8_E4M3", "shape": [8]}}, DATA),
            r"'F8_E4M3' is not supported",
        ),
        (
            _file({"w": {**HEADER["w"], "shape": [-2]}}, DATA),
            r"shape must be a list of non-negative integers",
        ),
        (_file({"w": {**HEADER["w"], "shape": [2.0]}}, DATA), r"got \[2\.0\]"),
        (_file({"w": {**HEADER["w"], "shape": [True, 2]}}, DATA), r"got \[True, 2\]"),
        (_file({"w": {**HEADER["w"], "shape": "2"}}, DATA), r"shape must be a list"),
        (
            _file({"w": {**HEADER["w"], "shape": [1] * 65}}, DATA),
            r"shape has 65 dimensions; NumPy allows at most 64",
        ),
        (
            _file({"w": {**HEADER["w"], "shape": [0, 2**62, 4], "data_offsets": [0, 0]}}),
            r"too large for a NumPy",
        ),
        (
            _file({"w": {**HEADER["w"], "shape": [0, 2**64], "data_offsets": [0, 0]}}),
            r"too large for a NumPy",
        ),
        (_file({"w": {**HEADER["w"], "data_offsets": [0]}}, DATA), r"data_offsets must be \[begin, end\]"),
        (
            _file({"w": {**HEADER["w"], "data_offsets": [-8, 0]}}, DATA),
            r"data_offsets must be \[begin, end\]",
        ),
        (_file({"w": {**HEADER["w"], "data_offsets": [8, 0]}}, DATA), r"data_offsets \[8, 0\] end before"),
        (
            _file({"w": {**HEADER["w"], "data_offsets": [0, 12]}}, bytes(12)),
            r"tensor 'w': dtype F32 and shape \[2\] need 8 bytes but data_offsets \[0, 12\] span 12",
        ),
        (
            _file(
                {"x.lora_A.weight": {"dtype": "F32", "shape": [32, 32], "data_offsets": [0, 4096]}},
                bytes(100),
            ),
            r"adapter_model.safetensors: tensor 'x.lora_A.weight' claims 4096 bytes at \[0, 4096\) "
            r"but the data section has 100 bytes",
        ),
        (
            _file({"w": {"dtype": "F32", "shape": [2**30, 2**10], "data_offsets": [0, 2**42]}}, DATA),
            r"tensor 'w' claims 4398046511104 bytes at \[0, 4398046511104\) but the data section has 8 bytes",
        ),
        (
            _file({"w": {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 2**82]}}, DATA),
            r"shape \[1099511627776, 1099511627776\] is too large for a NumPy array",
        ),
        (
            _file(
                {"a": HEADER["w"], "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)
            ),
            r"tensor 'b' at \[4, 12\) overlaps tensor 'a', which ends at 8",
        ),
        (
            _file({"a": HEADER["w"], "b": HEADER["w"]}, DATA),
            r"overlaps tensor",
        ),
        (
            _file({"a": HEADER["w"], "z": {"dtype": "U8", "shape": [0], "data_offsets": [4, 4]}}, DATA),
            r"tensor 'z' at \[4, 4\) overlaps tensor 'a'",
        ),
        (
            _file({"w": {**HEADER["w"], "data_offsets": [4, 12]}}, bytes(12)),
            r"data section bytes \[0, 4\) at the start belong to no tensor \(next is 'w'\)",
        ),
        (
            _file(
                {"a": HEADER["w"], "b": {"dtype": "U8", "shape": [2], "data_offsets": [10, 12]}}, bytes(12)
            ),
            r"bytes \[8, 10\) after tensor 'a' belong to no tensor",
        ),
        (_file(HEADER, bytes(9)), r"data section has 9 bytes but the tensors end at 8: bytes \[8, 9\)"),
        (_file({}, bytes(3)), r"data section has 3 bytes but the tensors end at 0"),
    ],
    ids=lambda v: f"{len(v)}B" if isinstance(v, bytes) else v[:48],
)
def test_hand_crafted_headers(scratch: Path, content: bytes, match: str) -> None:
    scratch.write_bytes(content)
    with pytest.raises(FormatError, match=match) as info:
        load_safetensors(scratch)
    assert info.value.path == str(scratch)
    with pytest.raises(FormatError, match=match):
        read_safetensors_header(scratch)


def test_bool_bytes_other_than_zero_and_one(scratch: Path) -> None:
    header = {"m": {"dtype": "BOOL", "shape": [2, 2], "data_offsets": [0, 4]}}
    assert _check(scratch, _file(header, b"\x00\x01\x01\x00")) is not None
    scratch.write_bytes(_file(header, b"\x00\x01\x01\x02"))
    with pytest.raises(FormatError, match=r"tensor 'm': byte 2 at element 3; BOOL bytes must be 0 or 1"):
        load_safetensors(scratch)
    read_safetensors_header(scratch)  # the header itself is fine


def test_terabyte_claims_allocate_nothing(scratch: Path) -> None:
    content = _file({"w": {"dtype": "F64", "shape": [2**37], "data_offsets": [0, 2**40]}}, DATA)
    tracemalloc.start()
    try:
        for hostile in (content, _file(HEADER, DATA, length=2**60)):
            scratch.write_bytes(hostile)
            with pytest.raises(FormatError):
                load_safetensors(scratch)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_max_header_bytes_is_enforced(sample_bytes: bytes, scratch: Path) -> None:
    scratch.write_bytes(sample_bytes)
    n = int.from_bytes(sample_bytes[:8], "little")
    assert load_safetensors(scratch, max_header_bytes=n).keys() == SAMPLE.keys()
    with pytest.raises(FormatError, match=rf"header length {n} exceeds the limit max_header_bytes={n - 1}"):
        load_safetensors(scratch, max_header_bytes=n - 1)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(
        FormatError, match=r"pipe\.safetensors: expected a safetensors file, found not a regular"
    ):
        load_safetensors(fifo)


def test_path_through_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(FormatError, match=r"no such file \(a parent in the path is not a directory\)"):
        load_safetensors(tmp_path / "file" / "model.safetensors")
