"""File formats: atomic writes and a strict safetensors reader/writer.

This package sits low in the import order (NumPy, the standard library and the `safetensors` package
only; never the rest of entrenar) so that lora, models and train can all build on it. Every reader
raises FormatError, naming the file and what is wrong where, for a malformed file.
"""

from entrenar.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from entrenar.io.errors import FormatError
from entrenar.io.safetensors import (
    DEFAULT_MAX_HEADER_BYTES,
    TensorInfo,
    load_safetensors,
    read_safetensors_header,
    save_safetensors,
)

__all__ = [
    "DEFAULT_MAX_HEADER_BYTES",
    "FormatError",
    "TensorInfo",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_safetensors",
    "read_safetensors_header",
    "save_safetensors",
]
