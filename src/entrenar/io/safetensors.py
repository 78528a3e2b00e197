"""Read and write safetensors files: NumPy arrays by name, plus string metadata.

Writing goes through the `safetensors` package itself (so files are byte for byte what it writes: tensors
ordered by alignment then name, header padded to 8 bytes) into a temporary file that atomically replaces
the target. Reading validates the whole header first (see `_safetensors_header`) and then reads each
tensor straight into an owned, writable array of its shape: little endian on disk, native in memory.

dtypes: F64 F32 F16 I64 I32 I16 I8 U64 U32 U16 U8 BOOL map to NumPy's own; BF16 needs `ml_dtypes`
(imported only when a BF16 tensor is read or written).
"""

from __future__ import annotations

import importlib
import io
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from safetensors.numpy import save_file  # the format's reference writer

from entrenar.io._safetensors_header import TensorInfo, brief, check_regular_file, read_header
from entrenar.io.atomic import atomic_path
from entrenar.io.errors import FormatError

__all__ = [
    "DEFAULT_MAX_HEADER_BYTES",
    "TensorInfo",
    "load_safetensors",
    "read_safetensors_header",
    "save_safetensors",
]

DEFAULT_MAX_HEADER_BYTES = 100 * 2**20  # the limit the safetensors package itself enforces

# NumPy dtype (little endian) of each code; BF16 comes from ml_dtypes when it is needed.
_NUMPY: dict[str, str] = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "|i1",
    "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "|u1",
    "BOOL": "|b1",
}  # fmt: skip
_CODE: dict[tuple[str, int], str] = {(np.dtype(t).kind, np.dtype(t).itemsize): c for c, t in _NUMPY.items()}
_SUPPORTED_NAMES = ", ".join([*(np.dtype(t).name for t in _NUMPY.values()), "bfloat16 (ml_dtypes)"])


def _bfloat16(name: str, what: str) -> np.dtype[Any]:
    try:
        ml_dtypes = importlib.import_module("ml_dtypes")
    except ImportError:
        raise ImportError(
            f"{name}: {what} is bfloat16, which NumPy lacks: `pip install ml_dtypes` to read or write it"
        ) from None
    return np.dtype(ml_dtypes.bfloat16)


def _code_of(dtype: np.dtype[Any]) -> str | None:
    if dtype.name == "bfloat16":
        return "BF16"
    return _CODE.get((dtype.kind, dtype.itemsize)) if dtype.kind in "fiub" else None


def _check_max_header(max_header_bytes: int) -> None:
    if type(max_header_bytes) is not int or max_header_bytes < 1:
        raise ValueError(f"max_header_bytes must be a positive int, got {max_header_bytes!r}")


def read_safetensors_header(
    path: str | os.PathLike[str], *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """(tensor name -> dtype, shape and data offsets, in the header's order; the `__metadata__` strings).

    The header is validated exactly as `load_safetensors` does, against the file's size; no tensor data is
    read, and no optional dependency is needed whatever the dtypes.
    """
    _check_max_header(max_header_bytes)
    name = os.fspath(path)
    check_regular_file(path, name)
    with open(path, "rb") as f:
        header = read_header(f, name, os.fstat(f.fileno()).st_size, max_header_bytes)
    return header.tensors, header.metadata


def load_safetensors(
    path: str | os.PathLike[str], *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
) -> dict[str, np.ndarray]:
    """Every tensor of the file at `path`, by name in the header's order, as owned writable arrays.

    Raises FormatError (naming the file, the tensor and the numbers) for anything malformed: a missing or
    non-regular file, a truncated file, a header longer than `max_header_bytes` or than the file, a header
    that is not a UTF-8 JSON object, an unknown dtype, a bad shape, offsets that disagree with dtype and
    shape, leave the data section, overlap or leave bytes uncovered, non-string metadata, or BOOL bytes
    other than 0 and 1. Raises ImportError for BF16 tensors when ml_dtypes is not installed.
    """
    _check_max_header(max_header_bytes)
    name = os.fspath(path)
    check_regular_file(path, name)
    with open(path, "rb") as f:
        header = read_header(f, name, os.fstat(f.fileno()).st_size, max_header_bytes)
        dtypes = {key: _dtype_for(info, key, name) for key, info in header.tensors.items()}
        return {
            key: _read_tensor(f, header.data_start, info, dtypes[key], key, name)
            for key, info in header.tensors.items()
        }


def _dtype_for(info: TensorInfo, key: str, name: str) -> np.dtype[Any]:
    if info.dtype == "BF16":
        return _bfloat16(name, f"tensor {brief(key)}")
    return np.dtype(_NUMPY[info.dtype])


def _read_tensor(
    f: io.BufferedReader, data_start: int, info: TensorInfo, dtype: np.dtype[Any], key: str, name: str
) -> np.ndarray:
    out = np.empty(info.shape, dtype=dtype)  # size already checked against the file: this allocation fits
    if out.nbytes:
        f.seek(data_start + info.data_offsets[0])
        view = out.reshape(-1).view(np.uint8).data  # (n,) bytes of the fresh array, as a memoryview
        got = 0
        while got < out.nbytes:  # one read(2) returns at most ~2 GiB on Linux: loop until full
            count = f.readinto(view[got:])
            if not count:
                raise FormatError(
                    name,
                    f"tensor {brief(key)}: file ended after {got} of its {out.nbytes} bytes (it shrank?)",
                )
            got += count
    if info.dtype == "BOOL":
        raw = out.view(np.uint8)
        if raw.size and raw.max() > 1:
            at = int(np.argmax(raw > 1))  # flat index of the first bad byte
            bad = int(raw.reshape(-1)[at])
            where = f"tensor {brief(key)}: byte {bad} at element {at}"
            raise FormatError(name, f"{where}; BOOL bytes must be 0 or 1")
    return out if out.dtype.isnative else out.astype(out.dtype.newbyteorder("="))


def _prepare(key: Any, array: Any, path: str) -> np.ndarray:
    """`array` as a C-contiguous little-endian array ready for the writer, after checking name and type."""
    if not isinstance(key, str) or not key:
        raise TypeError(f"{path}: tensor names must be non-empty strings, got {key!r}")
    if key == "__metadata__":
        raise ValueError(f"{path}: '__metadata__' is reserved by the safetensors header, not a tensor name")
    if not isinstance(array, np.ndarray):
        raise TypeError(
            f"{path}: tensor {key!r} is a {type(array).__module__}.{type(array).__qualname__}, "
            "expected a numpy.ndarray"
        )
    code = _code_of(array.dtype)
    if code is None:
        raise ValueError(f"{path}: tensor {key!r} has dtype {array.dtype}; supported: {_SUPPORTED_NAMES}")
    if code == "BF16":  # ml_dtypes' bfloat16 is native-endian only
        return np.asarray(array, order="C")
    return np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")


def save_safetensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write `tensors` (and string `metadata`) to `path` atomically, as the safetensors package writes them.

    Non-contiguous or big-endian arrays are copied; names must be non-empty strings other than
    `__metadata__`; dtypes must be one of those listed in the module docstring. With two or more metadata
    entries their order in the header varies between calls (the package keeps them in a Rust HashMap), so
    such files are equal as safetensors but not byte for byte.
    """
    name = os.fspath(path)
    if not isinstance(tensors, Mapping):
        raise TypeError(
            f"{name}: tensors must be a mapping of name to numpy.ndarray, got {type(tensors).__name__}"
        )
    prepared = {key: _prepare(key, array, name) for key, array in tensors.items()}
    meta: dict[str, str] | None = None
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise TypeError(
                f"{name}: metadata must be a mapping of str to str, got {type(metadata).__name__}"
            )
        for key, value in metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(
                    f"{name}: metadata must map str to str, got {key!r}: {value!r} "
                    f"({type(key).__name__}: {type(value).__name__})"
                )
        # Empty metadata is written as none: safetensors 0.8.0 turns ({}, metadata={}) into the invalid
        # header '{},"__metadata__":{}}' that its own reader refuses; either way it reads back as {}.
        meta = dict(metadata) or None
    with atomic_path(path) as tmp:
        save_file(prepared, tmp, metadata=meta)
