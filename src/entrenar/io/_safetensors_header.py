"""Strict parsing and validation of a safetensors header, before any tensor byte is touched.

A safetensors file is three parts (https://github.com/huggingface/safetensors, "Format"):

    [ N: u64 little endian ][ header: N bytes of UTF-8 JSON ][ data section: the rest of the file ]

The header is one JSON object, padded at the end with spaces (0x20). Each key except `__metadata__`
names a tensor ``{"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}``, its bytes lying at
[begin, end) counted from the start of the data section, row major, little endian. The spec requires the
tensors to tile the data section: sorted by offset, each begins where the previous ended, the first at 0
and the last ending at the end of the file. `__metadata__`, if present, maps strings to strings.

Every check here compares numbers from the header with the file's size, so a header that claims
terabytes is refused before anything is allocated. Each failure is a FormatError naming the file, the
tensor and the numbers involved.
"""

from __future__ import annotations

import json
import math
import os
import stat
import sys
from dataclasses import dataclass
from typing import Any, BinaryIO

from entrenar.io.errors import FormatError

__all__ = [
    "ITEMSIZE",
    "KNOWN_UNSUPPORTED",
    "MAX_NDIM",
    "Header",
    "TensorInfo",
    "brief",
    "check_regular_file",
    "read_header",
]

# Bytes per element of every dtype entrenar reads and writes (the safetensors codes).
ITEMSIZE: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U64": 8, "U32": 4, "U16": 2, "U8": 1,
    "BOOL": 1,
}  # fmt: skip
# Codes the format defines that have no NumPy dtype here (float8/6/4 need ml_dtypes' exotic types).
KNOWN_UNSUPPORTED = frozenset({"F8_E5M2", "F8_E4M3", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4", "C64"})
MAX_NDIM = 64  # NumPy 2's limit on an array's number of dimensions
_FIELDS = ("dtype", "shape", "data_offsets")


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's header entry.

    `dtype` is the safetensors code ("F32", "BF16", ...); `data_offsets` is (begin, end) in bytes from the
    start of the data section, which begins at byte 8 + N of the file.
    """

    dtype: str
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return self.data_offsets[1] - self.data_offsets[0]


@dataclass(frozen=True)
class Header:
    tensors: dict[str, TensorInfo]  # in the header's order
    metadata: dict[str, str]
    data_start: int  # 8 + N: where the data section begins in the file
    data_size: int  # bytes in the data section


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


class _NonFinite(Exception):
    def __init__(self, constant: str) -> None:
        super().__init__(constant)
        self.constant = constant


def _object_no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _reject_constant(constant: str) -> Any:
    raise _NonFinite(constant)


_DECODER = json.JSONDecoder(object_pairs_hook=_object_no_duplicates, parse_constant=_reject_constant)


def _read_exact(f: BinaryIO, count: int, name: str, what: str) -> bytes:
    data = f.read(count)
    if len(data) != count:
        raise FormatError(name, f"file ended after {len(data)} of the {count} bytes of {what}")
    return data


def read_header(f: BinaryIO, name: str, file_size: int, max_header_bytes: int) -> Header:
    """Read and validate the length prefix and header of the open file `f` (positioned at 0)."""
    if file_size < 8:
        raise FormatError(
            name, f"file has {file_size} bytes; a safetensors file starts with an 8-byte header length"
        )
    n = int.from_bytes(_read_exact(f, 8, name, "the header length"), "little")
    if n > max_header_bytes:
        raise FormatError(name, f"header length {n} exceeds the limit max_header_bytes={max_header_bytes}")
    if n > file_size - 8:
        raise FormatError(
            name, f"header length {n} exceeds the {file_size - 8} bytes that follow the 8-byte length prefix"
        )
    obj = _parse_json(_read_exact(f, n, name, "the header"), name)
    metadata = _metadata(obj.pop("__metadata__", {}), name)
    data_size = file_size - 8 - n
    tensors = {key: _entry(key, value, name) for key, value in obj.items()}
    _check_tiling(tensors, data_size, name)
    return Header(tensors=tensors, metadata=metadata, data_start=8 + n, data_size=data_size)


def _parse_json(raw: bytes, name: str) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(name, f"header is not UTF-8: {exc.reason} at header byte {exc.start}") from None
    if not text.startswith("{"):
        raise FormatError(
            name, f"header must be a JSON object starting with '{{'; it starts with {raw[:16]!r}"
        )
    try:
        obj, end = _DECODER.raw_decode(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno} (header byte {len(text[: exc.pos].encode())})"
        raise FormatError(name, f"header is not valid JSON: {exc.msg} at {where}") from None
    except _DuplicateKey as exc:
        raise FormatError(name, f"header repeats the key {brief(exc.key)} within one JSON object") from None
    except _NonFinite as exc:
        raise FormatError(name, f"header holds {exc.constant}, which is not JSON") from None
    except RecursionError:
        raise FormatError(name, "header nests JSON too deeply to parse") from None
    except ValueError as exc:  # e.g. an integer literal longer than Python's int-parsing limit
        raise FormatError(name, f"header cannot be parsed: {exc}") from None
    if text[end:].strip(" "):
        at = len(text[:end].encode())
        raise FormatError(
            name,
            f"header has {brief(text[end : end + 16])} after its JSON object at header byte {at}; "
            "only space padding (0x20) may follow",
        )
    assert isinstance(obj, dict)  # the text starts with "{", so the one value decoded is an object
    return obj


def _metadata(value: Any, name: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise FormatError(
            name, f"__metadata__ must be a JSON object of strings to strings, got {type(value).__name__}"
        )
    for key, item in value.items():
        _check_unicode(key, name, f"__metadata__ key {brief(key)}")
        if isinstance(item, str):
            _check_unicode(item, name, f"__metadata__[{brief(key)}]")
        else:
            raise FormatError(
                name,
                f"__metadata__[{brief(key)}] is {type(item).__name__} {brief(item)}, expected a string",
            )
    return dict(value)


def brief(value: Any) -> str:
    """repr(value), cut to 80 characters: a hostile header can hold a megabyte-long name or list."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}...({len(text)} characters)"


def _check_unicode(text: str, name: str, what: str) -> None:
    """JSON escapes can spell lone surrogates ("\\ud800"), which no UTF-8 file (or writer) can hold."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise FormatError(name, f"{what} holds a lone surrogate escape, which is not Unicode text") from None


def _is_uint(x: Any) -> bool:
    return type(x) is int and x >= 0  # `type is` so JSON true/false (Python bools) are refused


def _entry(key: str, value: Any, name: str) -> TensorInfo:
    """One tensor's entry, with its own fields checked against each other (not yet against the file)."""
    if not key:
        raise FormatError(name, "header names a tensor with the empty string")
    where = f"tensor {brief(key)}"
    _check_unicode(key, name, f"{where}: the name")
    if not isinstance(value, dict):
        raise FormatError(
            name,
            f"{where}: entry must be an object of dtype, shape and data_offsets, got {type(value).__name__}",
        )
    missing = [field for field in _FIELDS if field not in value]
    extra = sorted(set(value) - set(_FIELDS))
    if missing or extra:
        problem = f"lacks {missing}" if missing else f"has unknown fields {brief(extra)}"
        raise FormatError(name, f"{where}: entry {problem}; expected exactly {list(_FIELDS)}")
    dtype, shape, offsets = value["dtype"], value["shape"], value["data_offsets"]
    if not isinstance(dtype, str) or dtype not in ITEMSIZE:  # (a list or an object is not hashable)
        kind = (
            "is not supported here"
            if isinstance(dtype, str) and dtype in KNOWN_UNSUPPORTED
            else "is not a safetensors dtype"
        )
        raise FormatError(name, f"{where}: dtype {brief(dtype)} {kind}; supported: {', '.join(ITEMSIZE)}")
    if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
        raise FormatError(name, f"{where}: shape must be a list of non-negative integers, got {brief(shape)}")
    if len(shape) > MAX_NDIM:
        raise FormatError(
            name, f"{where}: shape has {len(shape)} dimensions; NumPy allows at most {MAX_NDIM}"
        )
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_uint(o) for o in offsets)):
        raise FormatError(
            name,
            f"{where}: data_offsets must be [begin, end] of two non-negative integers, got {brief(offsets)}",
        )
    begin, end = offsets
    if end < begin:
        raise FormatError(name, f"{where}: data_offsets [{begin}, {end}] end before they begin")
    if math.prod(d for d in shape if d) * ITEMSIZE[dtype] > sys.maxsize:
        raise FormatError(name, f"{where}: shape {shape} is too large for a NumPy array, even an empty one")
    need = math.prod(shape) * ITEMSIZE[dtype]  # Python ints: no overflow, however large the claim
    if end - begin != need:
        raise FormatError(
            name,
            f"{where}: dtype {dtype} and shape {shape} need {need} bytes "
            f"but data_offsets [{begin}, {end}] span {end - begin}",
        )
    return TensorInfo(dtype=dtype, shape=tuple(shape), data_offsets=(begin, end))


def _check_tiling(tensors: dict[str, TensorInfo], data_size: int, name: str) -> None:
    """Every tensor inside the data section, none overlapping, no byte left over (the spec's rule)."""
    for key, info in tensors.items():
        begin, end = info.data_offsets
        if end > data_size:
            raise FormatError(
                name,
                f"tensor {brief(key)} claims {info.nbytes} bytes at [{begin}, {end}) "
                f"but the data section has {data_size} bytes",
            )
    cursor, previous = 0, ""
    for key, info in sorted(tensors.items(), key=lambda item: item[1].data_offsets):
        begin, end = info.data_offsets
        if begin < cursor:
            raise FormatError(
                name,
                f"tensor {brief(key)} at [{begin}, {end}) overlaps tensor {brief(previous)}, "
                f"which ends at {cursor}",
            )
        if begin > cursor:
            after = f"after tensor {brief(previous)}" if previous else "at the start"
            raise FormatError(
                name,
                f"data section bytes [{cursor}, {begin}) {after} belong to no tensor "
                f"(next is {brief(key)}); safetensors requires the tensors to cover the data section",
            )
        cursor, previous = end, key
    if cursor != data_size:
        raise FormatError(
            name,
            f"data section has {data_size} bytes but the tensors end at {cursor}: "
            f"bytes [{cursor}, {data_size}) belong to no tensor",
        )


def check_regular_file(path: str | os.PathLike[str], name: str) -> None:
    """Raise FormatError unless `path` is an existing regular file (checked before opening: a FIFO blocks)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FormatError(name, "no such file") from None
    except NotADirectoryError:
        raise FormatError(name, "no such file (a parent in the path is not a directory)") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise FormatError(name, f"expected a safetensors file, found {kind}")
