"""Language-modelling data: a corpus of works (one text each), split by work, packed into blocks.

    works = read_works(folder)                           # {name: text}, one .txt file per work
    train, val = split_works(sorted(works), validation=4, seed=0)
    ids = [tokenizer.encode(works[name]) + [eos] for name in train]
    blocks = pack_blocks(ids, block_size=128, pad_id=eos)    # LMBlocks: input_ids, labels (N, T)
    loader = BlockLoader(blocks, batch_size=4, seed=0)       # resumable, like every EpochLoader

Split by work: held-out perplexity is measured on works the model never trained on, so that it
measures language modelling and not memorised lines. The validation works are the first
`validation` names of `np.random.default_rng(seed).permutation(sorted names)`.

Packing (Hugging Face's causal-LM convention, labels already shifted): each work's token ids (its
end-of-text token appended) are cut into blocks of T + 1 consecutive tokens that overlap by one,
block i covering ids[i T : i T + T + 1]; input_ids = its first T, labels = its last T, so that
labels[t] is the token after input_ids[t]. A work's last, shorter block is padded to T with
`pad_id` in input_ids and -100 in labels (`IGNORE_INDEX`: no loss there); a causal model never lets
a position see the padding after it, so no attention mask is needed. Blocks never cross works.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from entrenar.data.loaders import EpochLoader, _positive_int

__all__ = [
    "IGNORE_INDEX",
    "BlockLoader",
    "LMBlocks",
    "pack_blocks",
    "read_works",
    "select_blocks",
    "split_works",
]

IGNORE_INDEX = -100  # labels with this value carry no loss (PyTorch's and Hugging Face's convention)


def read_works(folder: str | os.PathLike[str], pattern: str = "*.txt") -> dict[str, str]:
    """{file stem: text} of the files matching `pattern` in `folder`, sorted by name; errors name
    the folder (missing, no matching file, a file that is not UTF-8 text, an empty file)."""
    root = Path(folder)
    if not root.is_dir():
        what = "is a file" if root.exists() else "does not exist"
        raise FileNotFoundError(f"text folder {root} {what}: expected a folder of {pattern} files")
    files = sorted(p for p in root.glob(pattern) if p.is_file())
    if not files:
        raise ValueError(f"text folder {root} holds no {pattern} file")
    works: dict[str, str] = {}
    for p in files:
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{p}: not UTF-8 text (byte {exc.start})") from None
        if not text.strip():
            raise ValueError(f"{p}: the file is empty")
        works[p.stem] = text
    return works


def split_works(names: Sequence[str], validation: int, seed: int) -> tuple[list[str], list[str]]:
    """(train names, validation names): the first `validation` of a seeded permutation of the sorted
    names are held out; both lists come back sorted. At least one work must remain for training."""
    ordered = sorted(names)
    if len(set(ordered)) != len(ordered):
        raise ValueError("split_works: the work names must be distinct")
    if isinstance(validation, bool) or not isinstance(validation, int) or validation < 0:
        raise ValueError(f"split_works: validation must be an int >= 0, got {validation!r}")
    if validation >= len(ordered):
        raise ValueError(
            f"split_works: {validation} validation works leave none of the {len(ordered)} for training"
        )
    perm = np.random.default_rng(seed).permutation(len(ordered))
    held = {ordered[i] for i in perm[:validation]}
    return [n for n in ordered if n not in held], [n for n in ordered if n in held]


@dataclass(frozen=True)
class LMBlocks:
    """Packed blocks: input_ids and labels (N, T) int64, and the work each block came from (N,)."""

    input_ids: np.ndarray
    labels: np.ndarray
    work: np.ndarray

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def block_size(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def tokens(self) -> int:
        """Predicted tokens (labels other than IGNORE_INDEX)."""
        return int((self.labels != IGNORE_INDEX).sum())


def pack_blocks(docs: Sequence[Sequence[int] | np.ndarray], block_size: int, pad_id: int) -> LMBlocks:
    """Each document's ids cut into blocks (see the module docstring); documents of fewer than 2
    tokens give no block. ValueError when no block results."""
    T = _positive_int("pack_blocks", "block_size", block_size)
    ids_out: list[np.ndarray] = []
    lab_out: list[np.ndarray] = []
    work: list[int] = []
    for d, doc in enumerate(docs):
        ids = np.asarray(doc, dtype=np.int64)
        if ids.ndim != 1:
            raise ValueError(f"pack_blocks: document {d} must be a 1-D sequence of ids, got {ids.shape}")
        if ids.size and ids.min() < 0:
            raise ValueError(f"pack_blocks: document {d} holds a negative token id ({int(ids.min())})")
        n = (ids.size - 1 + T - 1) // T  # blocks of T predictions: ceil((len - 1) / T)
        if n <= 0:
            continue
        # (n T + 1,) padded stream -> (n, T + 1) overlapping windows
        stream = np.full(n * T + 1, IGNORE_INDEX, dtype=np.int64)
        stream[: ids.size] = ids
        starts = np.arange(n, dtype=np.int64)[:, None] * T
        window = stream[starts + np.arange(T + 1, dtype=np.int64)[None, :]]  # (n, T + 1)
        inputs = window[:, :T].copy()
        inputs[inputs == IGNORE_INDEX] = pad_id
        ids_out.append(inputs)
        lab_out.append(window[:, 1:])
        work.extend([d] * n)
    if not ids_out:
        raise ValueError(f"pack_blocks: {len(docs)} document(s) give no block (each needs 2 or more tokens)")
    return LMBlocks(np.concatenate(ids_out), np.concatenate(lab_out), np.asarray(work, dtype=np.int64))


def select_blocks(blocks: LMBlocks, limit: int | None) -> LMBlocks:
    """At most `limit` blocks, evenly spaced over all of them (every work keeps its share); None: all."""
    if limit is None or limit >= len(blocks):
        return blocks
    limit = _positive_int("select_blocks", "limit", limit)
    keep = np.linspace(0, len(blocks) - 1, limit).round().astype(np.int64)
    return LMBlocks(blocks.input_ids[keep], blocks.labels[keep], blocks.work[keep])


class BlockLoader(EpochLoader):
    """Batches {input_ids (B, T), labels (B, T)} (int64) of packed blocks; the blocks are the items
    that epochs shuffle. The (epoch, position) state resumes exactly (see `EpochLoader`)."""

    def __init__(
        self,
        blocks: LMBlocks,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if not isinstance(blocks, LMBlocks):
            raise TypeError(f"BlockLoader: blocks must be LMBlocks (from pack_blocks), got {type(blocks)}")
        self.blocks = blocks
        super().__init__("BlockLoader", len(blocks), batch_size, shuffle, seed, drop_last)

    def _batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        return {"input_ids": self.blocks.input_ids[indices], "labels": self.blocks.labels[indices]}

    def _fingerprint(self) -> dict[str, Any]:
        return {**super()._fingerprint(), "block_size": self.blocks.block_size}
