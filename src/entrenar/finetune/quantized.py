"""A BERT checkpoint folder stored in 4 bits: `entrenar quantize CHECKPOINT_DIR OUT`, and loading it.

Layout of OUT (a folder, like the checkpoint it came from):

    config.json           the checkpoint's, unchanged (the architecture)
    model.safetensors     every tensor of the checkpoint, the 2-D Linear weights packed:
                            <key>                      a float tensor kept as it was (embeddings,
                                                       LayerNorm, biases, the classifier head)
                            <key>.q4.data              uint8 (ceil(n / 2),): two 4-bit codes a byte,
                                                       the even element in the high nibble
                            <key>.q4.absmax            float32 (ceil(n / B),): one scale per block
                          or, double-quantized,
                            <key>.q4.absmax_codes      uint8 (ceil(n / B),): the scales in 8 bits
                            <key>.q4.absmax_scale      float32 (ceil(n / B / 256),)
                            <key>.q4.absmax_offset     float32 (1,)
                          metadata: format "entrenar-4bit", version "1", kind ("nf4" or "int4"),
                          block_size, double_quant ("true"/"false"), shapes (JSON {key: [out, in]})
    tokenizer files       copied when present (tokenizer.json, tokenizer_config.json, vocab.txt, ...)

n is the weight's element count (row-major, out x in), B the block size; the arrays are exactly
`entrenar.quant.QuantizedTensor.arrays()` (bitsandbytes' layout), so `load_quantized` rebuilds each
weight without rounding again. Quantized: every 2-D `*.weight` outside the embeddings and the output
head (`classifier.*`, `cls.*`), which QLoRA keeps in full precision.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from entrenar.io import FormatError, atomic_path, load_safetensors, read_safetensors_header, save_safetensors
from entrenar.lora.inject import get_module, replace_module
from entrenar.models import checkpoint_key, read_bert_config, read_tensors
from entrenar.models.checkpoint import CONFIG_NAME, WEIGHTS_NAME, checkpoint_dir
from entrenar.nn.bert import BertForSequenceClassification, BertModel
from entrenar.nn.layers import Linear
from entrenar.quant import QuantizedTensor, QuantLinear, quantize

__all__ = [
    "FORMAT",
    "TOKENIZER_FILES",
    "QuantizeReport",
    "copy_file",
    "copy_tokenizer_files",
    "load_quantized",
    "quantize_checkpoint",
]

FORMAT = "entrenar-4bit"
VERSION = "1"
SUFFIX = ".q4."
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
_FULL_PRECISION = ("classifier.", "cls.")


@dataclass(frozen=True)
class QuantizeReport:
    """What `quantize_checkpoint` wrote: tensors quantized, bytes before and after."""

    out_dir: Path
    quantized: list[str]
    bytes_before: int
    bytes_after: int


def _quantizable(key: str, array: np.ndarray) -> bool:
    return (
        key.endswith(".weight")
        and array.ndim == 2
        and array.dtype.kind == "f"
        and "embeddings." not in key
        and not key.startswith(_FULL_PRECISION)
    )


def copy_file(src: Path, dst: Path) -> None:
    """Copy `src` to `dst` atomically (a temporary file next to `dst`, then renamed over it)."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    """Copy the tokenizer files `src` has into `dst`; their names."""
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            copy_file(src / name, dst / name)
            copied.append(name)
    return copied


def quantize_checkpoint(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    kind: str = "nf4",
    block_size: int = 64,
    double_quant: bool = True,
) -> QuantizeReport:
    """Write the 4-bit form of a BERT checkpoint folder into `out` (see the module docstring)."""
    src = checkpoint_dir(checkpoint)
    read_bert_config(src)  # a BERT checkpoint we can load back, or a clear error
    tensors = read_tensors(src).tensors
    out_dir = Path(out)
    packed: dict[str, np.ndarray] = {}
    shapes: dict[str, list[int]] = {}
    for key, array in tensors.items():
        if _quantizable(key, array):
            q = quantize(array.astype(np.float32), kind, block_size, double_quant)
            packed.update({f"{key}{SUFFIX}{name}": a for name, a in q.arrays().items()})
            shapes[key] = list(array.shape)
        else:
            packed[key] = array
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "block_size": str(block_size),
        "double_quant": "true" if double_quant else "false",
        "shapes": json.dumps(shapes, sort_keys=True),
    }
    save_safetensors(out_dir / WEIGHTS_NAME, packed, meta)
    copy_file(src / CONFIG_NAME, out_dir / CONFIG_NAME)
    copy_tokenizer_files(src, out_dir)
    return QuantizeReport(
        out_dir,
        sorted(shapes),
        sum(int(a.nbytes) for a in tensors.values()),
        sum(int(a.nbytes) for a in packed.values()),
    )


def _metadata(path: Path, meta: dict[str, str]) -> tuple[str, int, bool, dict[str, tuple[int, int]]]:
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise FormatError(
            path,
            f"not an {FORMAT} file (metadata format {meta.get('format')!r}, version {meta.get('version')!r}; "
            f"expected {FORMAT!r}, {VERSION!r}): write one with `entrenar quantize`",
        )
    try:
        block_size = int(meta["block_size"])
        double_quant = {"true": True, "false": False}[meta["double_quant"]]
        shapes_raw = json.loads(meta["shapes"])
        shapes = {str(k): (int(v[0]), int(v[1])) for k, v in shapes_raw.items()}
        kind = meta["kind"]
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise FormatError(
            path, f"metadata must hold kind, block_size, double_quant and shapes (JSON): {exc!r}"
        ) from None
    return kind, block_size, double_quant, shapes


def load_quantized(folder: str | os.PathLike[str]) -> BertModel | BertForSequenceClassification:
    """The model a `quantize_checkpoint` folder holds, its Linear layers QuantLinear (eval mode).

    A checkpoint with `classifier.*` tensors gives a BertForSequenceClassification, else a BertModel.
    FormatError naming the file for anything that does not match the layout.
    """
    src = checkpoint_dir(folder)
    config = read_bert_config(src)
    path = src / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{src}: no {WEIGHTS_NAME} (a folder written by `entrenar quantize`)")
    kind, block_size, double_quant, shapes = _metadata(path, read_safetensors_header(path)[1])
    tensors = load_safetensors(path)
    plain = {k: v for k, v in tensors.items() if SUFFIX not in k}
    rng = np.random.default_rng(0)  # the skeleton's weights are all replaced below
    model: Any
    if "classifier.weight" in plain:
        config = dataclasses.replace(config, num_labels=int(plain["classifier.weight"].shape[0]))
        model = BertForSequenceClassification(config, generator=rng)
    else:
        pooler = any(f".{k}".startswith((".pooler.", ".bert.pooler.")) for k in {*plain, *shapes})
        model = BertModel(config, add_pooling_layer=pooler, generator=rng)
    prefix = "bert." if any(k.startswith("bert.") for k in {*plain, *shapes}) else ""
    ours = {checkpoint_key(k, prefix): k for k in model.state_dict()}  # checkpoint key -> our key
    replaced: list[str] = []
    for key, shape in shapes.items():
        arrays = {
            k[len(key) + len(SUFFIX) :]: v for k, v in tensors.items() if k.startswith(f"{key}{SUFFIX}")
        }
        if key not in ours:
            raise FormatError(path, f"quantized tensor {key!r} is not a weight of the model in config.json")
        name = ours[key].removesuffix(".weight")
        linear = get_module(model, name)
        if not isinstance(linear, Linear) or (linear.out_features, linear.in_features) != shape:
            raise FormatError(
                path, f"{key!r} {shape} does not match the model's {name} ({type(linear).__name__})"
            )
        try:
            q = QuantizedTensor.from_arrays(arrays, shape, kind, block_size)
        except ValueError as exc:
            raise FormatError(path, f"{key!r}: {exc}") from None
        if q.double_quant != double_quant:
            raise FormatError(path, f"{key!r}: double_quant does not match the metadata")
        bias_key = key.removesuffix(".weight") + ".bias"
        bias = plain.pop(bias_key, None)
        replace_module(model, name, QuantLinear(q, bias))
        replaced.append(name + ".")
    state = {}
    for key, value in plain.items():
        if key.rpartition(".")[2] == "position_ids":
            continue
        if key not in ours:
            raise FormatError(path, f"tensor {key!r} is not part of the model config.json describes")
        state[ours[key]] = value.astype(np.float32) if value.dtype.kind == "f" else value
    missing = [k for k in model.state_dict() if k not in state and not k.startswith(tuple(replaced))]
    if missing:
        raise FormatError(path, f"missing tensors for {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    model.load_state_dict(state, strict=False)
    model.eval()
    result: BertModel | BertForSequenceClassification = model
    return result
