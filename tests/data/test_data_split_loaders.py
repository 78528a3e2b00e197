"""train_val_test_split sizes and partition; ClassificationLoader / LMLoader order, batches and resume."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entrenar.data import ClassificationLoader, Example, LMLoader, split_sizes, train_val_test_split

SETTINGS = settings(max_examples=30, deadline=None)


class CharTokenizer:
    """One id per character (a=3, b=4, ...), [CLS]=2 first, truncated to max_length, padded with 0."""

    def __init__(self) -> None:
        self.calls = 0

    def encode_batch(self, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        rows = [[2, *(ord(c) - ord("a") + 3 for c in t)][:max_length] for t in texts]
        T = max((len(r) for r in rows), default=0)
        ids = np.zeros((len(rows), T), dtype=np.int64)
        mask = np.zeros((len(rows), T), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)], mask[i, : len(r)] = r, 1
        return ids, mask


def examples(n: int) -> list[Example]:
    rng = np.random.default_rng(n)
    return [
        Example("".join("abcdefg"[j] for j in rng.integers(0, 7, rng.integers(0, 9))), i % 3)
        for i in range(n)
    ]


# ---------------------------------------------------------------------------------------------- split
def test_split_sizes_of_the_movie_reviews() -> None:
    assert split_sizes(10_605) == (8_484, 1_060, 1_061)
    assert split_sizes(10, (0.7, 0.2, 0.1)) == (7, 2, 1)
    assert split_sizes(3, (0.5, 0.5, 0.0)) == (1, 1, 1)  # the rounding remainder goes to test
    for bad in [(0.8, 0.1), (0.8, 0.1, 0.2), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1), (float("nan"), 0.5, 0.5)]:
        with pytest.raises(ValueError, match="fractions must be three"):
            split_sizes(10, bad)


def test_split_is_the_seeded_permutation() -> None:
    items = list(range(10_605))
    train, val, test = train_val_test_split(items, seed=0)
    perm = np.random.default_rng(0).permutation(10_605)
    assert (
        train == perm[:8_484].tolist() and val == perm[8_484:9_544].tolist() and test == perm[9_544:].tolist()
    )


@SETTINGS
@given(
    n=st.integers(0, 300),
    seed=st.integers(0, 2**32),
    f=st.sampled_from([(0.8, 0.1, 0.1), (0.5, 0.25, 0.25), (1.0, 0.0, 0.0)]),
)
def test_split_is_a_partition(n: int, seed: int, f: tuple[float, float, float]) -> None:
    parts = train_val_test_split(list(range(n)), f, seed=seed)
    assert sorted(parts[0] + parts[1] + parts[2]) == list(range(n))
    assert tuple(len(p) for p in parts) == split_sizes(n, f)
    assert parts == train_val_test_split(list(range(n)), f, seed=seed)


# ------------------------------------------------------------------------------------------ classification
def test_batches_follow_the_epoch_permutation_and_are_trimmed() -> None:
    ex = examples(23)
    tok = CharTokenizer()
    loader = ClassificationLoader(ex, tok, batch_size=5, max_length=6, seed=7)
    assert tok.calls == 1 and len(loader) == 5
    for epoch in range(2):
        order = np.random.default_rng([7, epoch]).permutation(23)
        batches = list(loader)
        assert [len(b["labels"]) for b in batches] == [5, 5, 5, 5, 3]
        for b, idx in zip(batches, np.array_split(order, [5, 10, 15, 20]), strict=True):
            ids, mask = CharTokenizer().encode_batch([ex[i].text for i in idx], max_length=6)
            assert b["input_ids"].dtype == np.int64 and b["labels"].dtype == np.int64
            np.testing.assert_array_equal(b["input_ids"], ids)  # what tokenizing the batch alone gives
            np.testing.assert_array_equal(b["attention_mask"], mask)
            np.testing.assert_array_equal(b["labels"], [ex[i].label for i in idx])
    assert loader.state_dict()["epoch"] == 2 and loader.state_dict()["position"] == 0
    plain = ClassificationLoader(ex, tok, batch_size=10, max_length=6, shuffle=False, drop_last=True)
    assert len(plain) == 2 and [b["labels"].tolist() for b in plain] == [
        [e.label for e in ex[:10]],
        [e.label for e in ex[10:20]],
    ]


@SETTINGS
@given(
    n=st.integers(1, 40),
    bs=st.integers(1, 9),
    drop=st.booleans(),
    seed=st.integers(0, 99),
    stop=st.integers(0, 30),
)
def test_a_restored_loader_continues_with_exactly_the_next_batch(
    n: int, bs: int, drop: bool, seed: int, stop: int
) -> None:
    """Every epoch visits each item once (all but the dropped tail); after `stop` batches, a new loader
    given the state hands out what the first one would have."""
    if drop and n < bs:
        with pytest.raises(ValueError, match="make no batch"):
            ClassificationLoader(examples(n), CharTokenizer(), bs, 8, seed=seed, drop_last=True)
        return
    make = lambda: ClassificationLoader(examples(n), CharTokenizer(), bs, 8, seed=seed, drop_last=drop)  # noqa: E731
    a = make()
    first = [b["input_ids"] for b in a]
    seen = sum(len(x) for x in first)
    assert seen == (n // bs * bs if drop else n)

    def stream(loader: ClassificationLoader):  # type: ignore[no-untyped-def]
        while True:
            yield from loader

    a, b = make(), make()
    sa = stream(a)
    for _ in range(stop):
        next(sa)
    b.load_state_dict(a.state_dict())
    sb = stream(b)
    for _ in range(2 * len(a) + 1):
        np.testing.assert_array_equal(next(sa)["input_ids"], next(sb)["input_ids"])


def test_load_state_dict_rejects_other_settings() -> None:
    loader = ClassificationLoader(examples(10), CharTokenizer(), 4, 8)
    state = loader.state_dict()
    other = ClassificationLoader(examples(10), CharTokenizer(), 5, 8)
    with pytest.raises(ValueError, match=r"saved for other data or settings \(batch_size: saved 4, now 5\)"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match=r"position must be an int >= 0 and below 3, got 3"):
        loader.load_state_dict({**state, "position": 3})
    with pytest.raises(ValueError, match=r"expected the keys"):
        loader.load_state_dict({"epoch": 0})


def test_classification_loader_bad_input() -> None:
    with pytest.raises(ValueError, match="no examples"):
        ClassificationLoader([], CharTokenizer(), 4, 8)
    with pytest.raises(ValueError, match=r"examples\[1\]\.label must be an int class id >= 0, got -1"):
        ClassificationLoader([Example("a", 0), Example("b", -1)], CharTokenizer(), 4, 8)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        ClassificationLoader(examples(3), CharTokenizer(), 0, 8)

    class Bad:
        def encode_batch(self, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
            return np.zeros((len(texts), 3)), np.zeros((len(texts), 3))

    with pytest.raises(ValueError, match=r"Bad\.encode_batch must return integer"):
        ClassificationLoader(examples(3), Bad(), 2, 8)


# ---------------------------------------------------------------------------------------------- LM
def test_lm_loader_predicts_the_next_token_and_resumes() -> None:
    ids = np.arange(100, 153)  # 53 tokens: (53 - 1) // 8 = 6 blocks
    loader = LMLoader(ids, block_size=8, batch_size=4, seed=3)
    assert len(loader) == 2
    batches = list(loader)
    starts = np.random.default_rng([3, 0]).permutation(6) * 8
    x = np.concatenate([b["input_ids"] for b in batches])
    np.testing.assert_array_equal(x, 100 + starts[:, None] + np.arange(8))
    np.testing.assert_array_equal(np.concatenate([b["labels"] for b in batches]), x + 1)
    state = loader.state_dict()
    nxt = next(iter(loader))
    again = LMLoader(ids, block_size=8, batch_size=4, seed=3)
    again.load_state_dict(state)
    np.testing.assert_array_equal(next(iter(again))["input_ids"], nxt["input_ids"])
    with pytest.raises(ValueError, match=r"8 tokens are too few for one block of 8"):
        LMLoader(np.arange(8), block_size=8, batch_size=1)
    with pytest.raises(ValueError, match="token_ids must be a 1-D sequence of int ids"):
        LMLoader(np.zeros((2, 9), dtype=np.int64), block_size=4, batch_size=1)
