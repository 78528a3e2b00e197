"""The run's data: examples from the config's `data` section, checked, split, and batched by length.

    splits = load_splits(config.data)              # Splits(train, validation, test, label_names)
    loader = BucketedLoader(splits.train, tokenizer, batch_size=32, max_length=64, bucket_batches=50)

Checks, each a DataError naming the file or data set: no training examples, unlabeled rows (an
empty label), a label column with a single class, a split fraction that leaves training empty.

Length bucketing (`BucketedLoader`). Padding to a batch's longest sentence wastes work when lengths
vary (movie reviews: 27 tokens on average, the longest of 32 random ones about twice that). Epoch e
draws one generator from (seed, e) and

    perm  = permutation(n)                                    the shuffled items
    cut perm into windows of batch_size * bucket_batches items, sort each window by length (stably)
    cut the result into batches; shuffle the full batches; a final partial batch stays last

so batches hold sentences of similar length, their order is random, and the order is a function of
(seed, e) only: the (epoch, position) state resumes it exactly, as every `EpochLoader`. Without
shuffling (evaluation) the items are visited shortest first. bucket_batches=1 sorts inside each
batch only, which changes nothing: the plain shuffled order.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from entrenar.config.schema import DataSection
from entrenar.data import ClassificationLoader, Example, movie_reviews, read_examples, train_val_test_split
from entrenar.data.loaders import BatchTokenizer
from entrenar.data.movie_reviews import MOVIE_REVIEW_LABELS

__all__ = ["BucketedLoader", "DataError", "Splits", "count_truncated", "load_splits"]


class DataError(ValueError):
    """Data that cannot train a classifier; the message names the file or data set and the problem."""


@dataclass(frozen=True)
class Splits:
    """Train / validation / test examples (label ids index `label_names`) and where they came from."""

    train: list[Example]
    validation: list[Example]
    test: list[Example]
    label_names: tuple[str, ...]
    source: str

    def split(self, name: str) -> list[Example]:
        """One split by name: "train", "validation" (or "val") or "test"."""
        key = {"val": "validation"}.get(name, name)
        if key not in ("train", "validation", "test"):
            raise ValueError(f"unknown split {name!r}: expected train, validation or test")
        examples: list[Example] = getattr(self, key)
        return examples


def _check_labeled(where: str, examples: Sequence[Example], names: tuple[str, ...], column: str) -> None:
    """No example with an empty label (an unlabeled row)."""
    if "" in names:
        blank = sum(1 for e in examples if names[e.label] == "")
        raise DataError(
            f"{where}: {blank} row(s) have an empty {column!r} (unlabeled); every example needs a label"
        )


def _check_classes(where: str, examples: Sequence[Example], names: tuple[str, ...], column: str) -> None:
    """At least two classes among `examples`."""
    present = sorted({e.label for e in examples})
    if len(present) < 2:
        only = names[present[0]] if present else "none"
        raise DataError(
            f"{where}: the label column {column!r} has a single class ({only!r}) among "
            f"{len(examples)} examples; a classifier needs at least two"
        )


def _read(path: str, d: DataSection, label_names: tuple[str, ...] | None = None) -> tuple[list[Example], Any]:
    p = Path(path)
    if not p.is_file():
        what = "is a folder, not a file" if p.is_dir() else "does not exist"
        raise DataError(f"data file {p} {what}: expected a CSV, TSV or JSON Lines file")
    data = read_examples(p, d.text_column, d.label_column, label_names=label_names)
    return list(data.examples), data.label_names


def load_splits(d: DataSection) -> Splits:
    """The examples the `data` section names, split and checked (see the module docstring)."""
    if d.dataset == "movie_reviews":
        examples: list[Example] = movie_reviews()
        names: tuple[str, ...] = MOVIE_REVIEW_LABELS
        source = "movie_reviews"
        train, val, test = train_val_test_split(examples, tuple(d.split), seed=d.split_seed)
    else:
        assert d.train is not None  # the schema requires dataset or train
        source = os.fspath(d.train)
        examples, names = _read(d.train, d)
        _check_labeled(source, examples, names, d.label_column)
        if d.validation is None and d.test is None:
            train, val, test = train_val_test_split(examples, tuple(d.split), seed=d.split_seed)
        else:
            train = examples
            val = _read(d.validation, d, names)[0] if d.validation is not None else []
            test = _read(d.test, d, names)[0] if d.test is not None else []
    if not train:
        raise DataError(f"{source}: the split {list(d.split)} leaves no training examples")
    where = source if len(train) == len(examples) else f"{source} (training split)"
    _check_classes(where, train, names, d.label_column)
    return Splits(train, val, test, names, source)


def count_truncated(tokenizer: Any, texts: Sequence[str], max_length: int) -> tuple[int, int]:
    """(texts longer than max_length tokens with special tokens, the longest length in tokens)."""
    if not texts:
        return 0, 0
    inner = tokenizer.tokenizer  # the tokenizers.Tokenizer: encode without truncation to count
    inner.no_truncation()
    lengths = np.array([len(e.ids) for e in inner.encode_batch(list(texts), add_special_tokens=True)])
    return int((lengths > max_length).sum()), int(lengths.max())


class BucketedLoader(ClassificationLoader):
    """A ClassificationLoader whose epochs visit items in length buckets (see the module docstring)."""

    bucket_batches: int

    def __init__(
        self,
        examples: Sequence[Any],
        tokenizer: BatchTokenizer,
        batch_size: int,
        max_length: int,
        shuffle: bool = True,
        seed: int = 0,
        bucket_batches: int = 50,
    ) -> None:
        if isinstance(bucket_batches, bool) or not isinstance(bucket_batches, numbers.Integral) \
                or bucket_batches < 1:  # fmt: skip
            raise ValueError(f"BucketedLoader: bucket_batches must be a positive int, got {bucket_batches!r}")
        self.bucket_batches = int(bucket_batches)
        super().__init__(examples, tokenizer, batch_size, max_length, shuffle=shuffle, seed=seed)

    def order(self, epoch: int) -> np.ndarray:
        n, bs = self.num_items, self.batch_size
        if not self.shuffle:
            return np.argsort(self.row_ends, kind="stable").astype(np.int64)
        rng = np.random.default_rng([self.seed, int(epoch)])
        perm = rng.permutation(n)
        window = bs * self.bucket_batches
        for w0 in range(0, n, window):
            chunk = perm[w0 : w0 + window]
            perm[w0 : w0 + window] = chunk[np.argsort(self.row_ends[chunk], kind="stable")]
        full = n // bs
        batches = rng.permutation(full)  # full batches in random order; a partial one stays last
        # (full,) batch numbers -> (full, bs) item positions -> (full * bs,)
        picked = (batches[:, None] * bs + np.arange(bs)[None, :]).reshape(-1)
        return np.concatenate([perm[picked], perm[full * bs :]]).astype(np.int64)

    def _fingerprint(self) -> dict[str, Any]:
        return {**super()._fingerprint(), "bucket_batches": self.bucket_batches}
