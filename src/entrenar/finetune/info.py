"""`entrenar info PATH`: what a checkpoint folder, a 4-bit folder or a run directory holds.

Reads safetensors headers only (no tensor data), so it is instant for any size. Reports the
architecture (from config.json), parameter counts (logical: a 4-bit weight counts out x in), the
trainable share (a run: adapters + head over everything; a checkpoint: all of it) and the bytes
stored per dtype.
"""

from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from entrenar.finetune.model import HEAD_FILE
from entrenar.finetune.quantized import FORMAT, SUFFIX
from entrenar.finetune.rundir import ADAPTER_DIR, CONFIG_FILE, RunError, resolve_model_dir, run_config
from entrenar.io import TensorInfo, read_safetensors_header
from entrenar.models import read_bert_config
from entrenar.models.checkpoint import CONFIG_NAME, INDEX_NAME, WEIGHTS_NAME, read_json
from entrenar.train.checkpoint import CHECKPOINTS_DIR, list_checkpoints

__all__ = ["Info", "describe", "format_info"]


@dataclass
class Info:
    """A summary of PATH: kind ("checkpoint", "4-bit checkpoint", "run"), lines about it, counts."""

    kind: str
    path: Path
    lines: list[str] = field(default_factory=list)
    parameters: int = 0
    trainable: int = 0
    bytes_by_dtype: dict[str, int] = field(default_factory=dict)


def _headers(folder: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Every tensor's header entry of a checkpoint folder (single file or shards), and the metadata
    of the single file ({} for shards)."""
    single, index = folder / WEIGHTS_NAME, folder / INDEX_NAME
    if single.is_file():
        return read_safetensors_header(single)
    if index.is_file():
        wmap = read_json(index, "sharded-checkpoint index").get("weight_map")
        if not isinstance(wmap, dict):
            raise RunError(f"{index}: no weight_map")
        out: dict[str, TensorInfo] = {}
        for shard in sorted(set(wmap.values())):
            out.update(read_safetensors_header(folder / str(shard))[0])
        return out, {}
    raise FileNotFoundError(f"{folder}: no {WEIGHTS_NAME} or {INDEX_NAME}")


def _numel(shape: tuple[int, ...] | list[int]) -> int:
    return math.prod(int(s) for s in shape)


def _add_bytes(into: dict[str, int], infos: dict[str, TensorInfo]) -> None:
    for info in infos.values():
        into[info.dtype] = into.get(info.dtype, 0) + info.nbytes


def _architecture(folder: Path) -> str:
    c = read_bert_config(folder)
    return (
        f"BERT: {c.num_hidden_layers} layers, hidden {c.hidden_size}, {c.num_attention_heads} heads, "
        f"FFN {c.intermediate_size} ({c.hidden_act}), vocab {c.vocab_size:,d}, "
        f"max positions {c.max_position_embeddings}"
    )


def _count(infos: dict[str, TensorInfo], meta: dict[str, str]) -> int:
    """Logical parameters: a 4-bit weight counts its out x in elements, its scales nothing; an old
    checkpoint's `position_ids` buffer is no parameter."""
    shapes = json.loads(meta["shapes"]) if meta.get("format") == FORMAT else {}
    plain = sum(
        _numel(i.shape) for k, i in infos.items() if SUFFIX not in k and not k.endswith("position_ids")
    )
    return plain + sum(_numel(s) for s in shapes.values())


def _checkpoint(folder: Path) -> Info:
    infos, meta = _headers(folder)
    quantized = meta.get("format") == FORMAT
    info = Info("4-bit checkpoint" if quantized else "checkpoint", folder)
    info.parameters = info.trainable = _count(infos, meta)
    _add_bytes(info.bytes_by_dtype, infos)
    info.lines.append(_architecture(folder))
    if quantized:
        n = len(json.loads(meta["shapes"]))
        info.lines.append(
            f"4-bit: {meta.get('kind')} blocks of {meta.get('block_size')}, double quant "
            f"{meta.get('double_quant')}, {n} weights packed"
        )
    return info


def _run(folder: Path) -> Info:
    config = run_config(folder)
    info = Info("run", folder)
    s = config.lora
    info.lines.append(
        f"config: model {config.model.path}, {config.model.pooling} pooling; LoRA r={s.r} alpha={s.alpha:g} "
        f"on {', '.join(s.target_modules)}; base {s.quantize or 'float32'}"
        + (f" (blocks of {s.block_size}{', double quant' if s.double_quant else ''})" if s.quantize else "")
    )
    steps = list_checkpoints(folder / CHECKPOINTS_DIR) if (folder / CHECKPOINTS_DIR).is_dir() else []
    finished = (folder / ADAPTER_DIR).is_dir() and (folder / HEAD_FILE).is_file()
    last = f", last checkpoint at step {steps[-1][0]}" if steps else ""
    info.lines.append(f"status: {'finished' if finished else 'not finished'}{last}")
    model_dir = resolve_model_dir(config.model.path)
    info.lines.append(_architecture(model_dir))
    base_infos, meta = _headers(model_dir)
    base = _count(base_infos, meta)
    trainable_infos: dict[str, TensorInfo] = {}
    if finished:
        trainable_infos.update(read_safetensors_header(folder / ADAPTER_DIR / "adapter_model.safetensors")[0])
        head_infos, head_meta = read_safetensors_header(folder / HEAD_FILE)
        trainable_infos.update(head_infos)
        labels = json.loads(head_meta.get("label_names", "[]"))
        info.lines.append(f"labels: {', '.join(labels)}")
    info.trainable = sum(_numel(i.shape) for i in trainable_infos.values())
    info.parameters = base + info.trainable
    _add_bytes(info.bytes_by_dtype, trainable_infos)
    info.lines.append(f"base model: {model_dir} ({base:,d} parameters, frozen)")
    return info


def describe(path: str | os.PathLike[str]) -> Info:
    """The Info of a run directory (config.yaml), a checkpoint folder or a 4-bit one (config.json)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist: expected a run directory or a checkpoint folder")
    if p.is_dir() and (p / CONFIG_FILE).is_file():
        return _run(p)
    if p.is_dir() and (p / CONFIG_NAME).is_file():
        return _checkpoint(p)
    raise RunError(
        f"{p} is neither a run directory (no {CONFIG_FILE}) nor a checkpoint folder (no {CONFIG_NAME})"
    )


def format_info(info: Info) -> list[str]:
    """The lines `entrenar info` prints."""
    share = 100 * info.trainable / info.parameters if info.parameters else 0.0
    stored = "adapter + head files" if info.kind == "run" else "weights"
    by_dtype = defaultdict(int, info.bytes_by_dtype)
    total = sum(by_dtype.values())
    lines = [f"{info.kind}: {info.path}", *(f"  {line}" for line in info.lines)]
    lines.append(f"  parameters: {info.parameters:,d} total, {info.trainable:,d} trainable ({share:.4f}%)")
    parts = ", ".join(f"{k} {v:,d} B" for k, v in sorted(by_dtype.items()))
    lines.append(f"  bytes stored ({stored}): {total:,d} B = {total / 2**20:,.2f} MiB; by dtype: {parts}")
    return lines
