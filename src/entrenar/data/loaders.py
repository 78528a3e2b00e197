"""Deterministic, resumable batch loaders for classification and language modelling.

    loader = ClassificationLoader(train, tokenizer, batch_size=32, max_length=64, seed=0)
    for batch in loader:          # one epoch (the rest of it after a resume)
        batch["input_ids"], batch["attention_mask"], batch["labels"]   # (B, T), (B, T), (B,) int64

Order: epoch e visits the items in the order `np.random.default_rng([seed, e]).permutation(n)`
(`arange(n)` without shuffling) and cuts it into consecutive batches of `batch_size` (the last one
smaller unless `drop_last`). The order depends on (seed, e) only, so no generator state needs saving:

    state_dict() == {"epoch": e, "position": p, ...}   # p batches of epoch e already handed out

`position` advances as each batch is handed out, and rolls over to (e + 1, 0) with the last batch of
an epoch, so a loader restored with `load_state_dict` hands out exactly the batch that would have
come next. Iterating a loader advances its own state: one iteration at a time.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

__all__ = ["BatchTokenizer", "ClassificationLoader", "EpochLoader", "LMLoader"]

Batch = dict[str, np.ndarray]


class BatchTokenizer(Protocol):
    """What ClassificationLoader needs: `entrenar.models.load_tokenizer(...)` is one."""

    def encode_batch(self, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]: ...


def _positive_int(where: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{where}: {name} must be a positive int, got {value!r}")
    return int(value)


class EpochLoader:
    """Base class: the epoch order, the batch cutting and the (epoch, position) state.

    A subclass sets `num_items` and writes `_batch(indices)`, the batch of those items.
    """

    num_items: int
    batch_size: int
    seed: int
    shuffle: bool
    drop_last: bool
    epoch: int
    position: int

    def __init__(
        self, where: str, num_items: int, batch_size: int, shuffle: bool, seed: int, drop_last: bool
    ) -> None:
        self.batch_size = _positive_int(where, "batch_size", batch_size)
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"{where}: seed must be a non-negative int, got {seed!r}")
        self.seed = int(seed)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.num_items = num_items
        if len(self) == 0:
            raise ValueError(f"{where}: {num_items} items make no batch of {batch_size} with drop_last=True")
        self.epoch = 0
        self.position = 0

    def __len__(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(self.num_items, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def order(self, epoch: int) -> np.ndarray:
        """The item indices of `epoch` in visiting order (int64)."""
        if not self.shuffle:
            return np.arange(self.num_items, dtype=np.int64)
        return np.random.default_rng([self.seed, int(epoch)]).permutation(self.num_items).astype(np.int64)

    def epoch_batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of `epoch` from batch `start` on, without touching the loader's state."""
        order = self.order(epoch)
        for b in range(start, len(self)):
            yield self._batch(order[b * self.batch_size : (b + 1) * self.batch_size])

    def __iter__(self) -> Iterator[Batch]:
        """The rest of the current epoch; the state moves past each batch as it is handed out."""
        order = self.order(self.epoch)
        n = len(self)
        while True:
            b = self.position
            self.position += 1
            if self.position == n:
                self.epoch, self.position = self.epoch + 1, 0
            yield self._batch(order[b * self.batch_size : (b + 1) * self.batch_size])
            if b + 1 == n:
                return

    def _batch(self, indices: np.ndarray) -> Batch:
        raise NotImplementedError

    def _fingerprint(self) -> dict[str, Any]:
        return {
            "num_items": self.num_items,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "seed": self.seed,
            "drop_last": self.drop_last,
        }

    def state_dict(self) -> dict[str, Any]:
        """{'epoch', 'position'} plus what must match on load (item count, batch size, seed, ...)."""
        return {"epoch": self.epoch, "position": self.position, **self._fingerprint()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue where `state` left off; ValueError when it was made for other data or settings."""
        name = type(self).__name__
        expected = {"epoch", "position", *self._fingerprint()}
        if not isinstance(state, Mapping) or set(state) != expected:
            got = sorted(state) if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(f"{name}.load_state_dict: expected the keys {sorted(expected)}, got {got}")
        differ = [
            f"{k}: saved {state[k]!r}, now {v!r}" for k, v in self._fingerprint().items() if state[k] != v
        ]
        if differ:
            raise ValueError(
                f"{name}.load_state_dict: the state was saved for other data or settings "
                f"({'; '.join(differ)})"
            )
        checked = []
        for key, high in (("epoch", None), ("position", len(self))):
            value = state[key]
            ok = not isinstance(value, bool) and isinstance(value, numbers.Integral)
            if not ok or int(value) < 0 or (high is not None and int(value) >= high):
                bound = f" and below {high}" if high is not None else ""
                raise ValueError(f"{name}.load_state_dict: {key} must be an int >= 0{bound}, got {value!r}")
            checked.append(int(value))
        self.epoch, self.position = checked


class ClassificationLoader(EpochLoader):
    """Batches {input_ids (B, T), attention_mask (B, T), labels (B,)} (int64) of labelled texts.

    The texts are tokenized once, up front (`tokenizer.encode_batch(texts, max_length=max_length)`,
    rows truncated to max_length); each batch is cut to its own longest row (the last column where
    any of its masks is 1), so a batch's padding is what tokenizing that batch alone would give.
    `examples` are objects with `.text` (str) and `.label` (int class id), e.g. `Example`s.
    """

    def __init__(
        self,
        examples: Sequence[Any],
        tokenizer: BatchTokenizer,
        batch_size: int,
        max_length: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        where = "ClassificationLoader"
        if len(examples) == 0:
            raise ValueError(f"{where}: no examples")
        texts = [e.text for e in examples]
        labels = [e.label for e in examples]
        for i, (t, y) in enumerate(zip(texts, labels, strict=True)):
            if not isinstance(t, str):
                raise TypeError(f"{where}: examples[{i}].text must be a str, got {type(t).__name__}")
            if isinstance(y, bool) or not isinstance(y, numbers.Integral) or y < 0:
                raise ValueError(f"{where}: examples[{i}].label must be an int class id >= 0, got {y!r}")
        self.max_length = _positive_int(where, "max_length", max_length)
        ids, mask = tokenizer.encode_batch(texts, max_length=self.max_length)
        ids, mask = np.asarray(ids), np.asarray(mask)
        if (
            ids.ndim != 2
            or mask.shape != ids.shape
            or ids.shape[0] != len(texts)
            or ids.dtype.kind not in "iu"
        ):
            raise ValueError(
                f"{where}: {type(tokenizer).__name__}.encode_batch must return integer (input_ids, "
                f"attention_mask) of one shape ({len(texts)}, T); "
                f"got {ids.dtype} {ids.shape} and {mask.shape}"
            )
        self.input_ids = ids.astype(np.int64, copy=False)  # (N, T) for all examples, padded
        self.attention_mask = mask.astype(np.int64, copy=False)
        self.labels = np.asarray(labels, dtype=np.int64)  # (N,)
        present = self.attention_mask != 0
        # (N, T) -> (N,): one past the last real token of each row (0 for an all-padding row)
        self.row_ends = np.where(
            present.any(axis=1), present.shape[1] - np.argmax(present[:, ::-1], axis=1), 0
        )
        super().__init__(where, len(texts), batch_size, shuffle, seed, drop_last)

    def _batch(self, indices: np.ndarray) -> Batch:
        T = max(int(self.row_ends[indices].max()), 1)
        return {
            "input_ids": self.input_ids[indices, :T],  # fancy indexing: fresh (B, T) arrays
            "attention_mask": self.attention_mask[indices, :T],
            "labels": self.labels[indices],
        }


class LMLoader(EpochLoader):
    """Batches {input_ids (B, T), labels (B, T)} (int64) of next-token prediction on one token stream.

    The stream is cut into (len(token_ids) - 1) // block_size non-overlapping blocks; block i is
    input_ids = ids[i T : (i + 1) T] and labels = ids[i T + 1 : (i + 1) T + 1] (T = block_size), and
    the blocks are the items that epochs shuffle.
    """

    def __init__(
        self,
        token_ids: Sequence[int] | np.ndarray,
        block_size: int,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        where = "LMLoader"
        ids = np.asarray(token_ids)
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise ValueError(
                f"{where}: token_ids must be a 1-D sequence of int ids, got {ids.dtype} {ids.shape}"
            )
        self.block_size = _positive_int(where, "block_size", block_size)
        if ids.size < self.block_size + 1:
            raise ValueError(
                f"{where}: {ids.size} tokens are too few for one block of {self.block_size} "
                "(need block_size + 1)"
            )
        self.token_ids = ids.astype(np.int64, copy=False)
        super().__init__(where, (ids.size - 1) // self.block_size, batch_size, shuffle, seed, drop_last)

    def _batch(self, indices: np.ndarray) -> Batch:
        # (B,) block starts -> (B, T) token positions
        pos = indices[:, None] * self.block_size + np.arange(self.block_size, dtype=np.int64)[None, :]
        return {"input_ids": self.token_ids[pos], "labels": self.token_ids[pos + 1]}
