"""Language-modelling data: works split by name, packed into shifted blocks, and a resumable loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entrenar.data.text import (
    IGNORE_INDEX,
    BlockLoader,
    pack_blocks,
    read_works,
    select_blocks,
    split_works,
)

docs_strategy = st.lists(st.lists(st.integers(0, 500), min_size=0, max_size=60), min_size=1, max_size=6)


@settings(max_examples=80, deadline=None)
@given(docs=docs_strategy, T=st.integers(1, 17), pad=st.integers(0, 9))
def test_blocks_hold_each_document_s_next_token_pairs_exactly_once(
    docs: list[list[int]], T: int, pad: int
) -> None:
    if all(len(d) < 2 for d in docs):
        with pytest.raises(ValueError, match="give no block"):
            pack_blocks(docs, T, pad)
        return
    b = pack_blocks(docs, T, pad)
    assert b.input_ids.shape == b.labels.shape == (len(b), T) and b.input_ids.dtype == np.int64
    for d, doc in enumerate(docs):
        mine = b.work == d
        n = max(0, -(-(len(doc) - 1) // T))  # ceil((len - 1) / T) blocks
        assert int(mine.sum()) == n
        # block i reads doc[i T : i T + T] and predicts doc[i T + 1 : i T + T + 1], padded after the end
        assert b.input_ids[mine].reshape(-1).tolist() == (doc + [pad] * n * T)[: n * T]
        assert b.labels[mine].reshape(-1).tolist() == (doc[1:] + [IGNORE_INDEX] * n * T)[: n * T]
    assert b.tokens == sum(max(len(d) - 1, 0) for d in docs)


def test_pack_blocks_rejects_bad_documents() -> None:
    with pytest.raises(ValueError, match="negative token id"):
        pack_blocks([[1, 2, -3]], 4, 0)
    with pytest.raises(ValueError, match="1-D"):
        pack_blocks([[[1, 2], [3, 4]]], 4, 0)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="block_size must be a positive int"):
        pack_blocks([[1, 2, 3]], 0, 0)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 30), seed=st.integers(0, 2**32 - 1), data=st.data())
def test_split_works_is_a_seeded_partition(n: int, seed: int, data: st.DataObject) -> None:
    k = data.draw(st.integers(0, n - 1))
    names = [f"w{i:02d}" for i in range(n)]
    shuffled = list(data.draw(st.permutations(names)))
    train, val = split_works(shuffled, k, seed)
    assert (train, val) == split_works(names, k, seed)  # a function of the set of names and the seed
    assert sorted(train + val) == names and not set(train) & set(val) and len(val) == k
    assert train == sorted(train) and val == sorted(val)


def test_split_works_rejects_what_leaves_no_training_work() -> None:
    with pytest.raises(ValueError, match="leave none of the 3 for training"):
        split_works(["a", "b", "c"], 3, 0)
    with pytest.raises(ValueError, match="distinct"):
        split_works(["a", "a"], 1, 0)


def test_select_blocks_spreads_over_all_blocks() -> None:
    b = pack_blocks([list(range(50)), list(range(100, 131))], 4, 0)  # 13 + 8 blocks
    picked = select_blocks(b, 5)
    assert len(picked) == 5 and picked.work.tolist() == [0, 0, 0, 1, 1]
    assert picked.input_ids[0].tolist() == b.input_ids[0].tolist()
    assert picked.input_ids[-1].tolist() == b.input_ids[-1].tolist()
    assert select_blocks(b, None) is b and select_blocks(b, 100) is b


def test_block_loader_resumes_exactly() -> None:
    b = pack_blocks([list(range(200)), list(range(300, 420))], 8, 0)
    straight = BlockLoader(b, batch_size=3, seed=5)
    want = [x for _ in range(2) for x in straight]
    first = BlockLoader(b, batch_size=3, seed=5)
    it = iter(first)
    got = [next(it) for _ in range(7)]
    state = first.state_dict()
    again = BlockLoader(b, batch_size=3, seed=5)
    again.load_state_dict(state)
    got += list(again) + list(again)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g["input_ids"], w["input_ids"])
        np.testing.assert_array_equal(g["labels"], w["labels"])
    other = BlockLoader(pack_blocks([list(range(200)), list(range(300, 420))], 4, 0), batch_size=3, seed=5)
    with pytest.raises(ValueError, match="block_size"):
        other.load_state_dict(state)


def test_read_works_names_the_folder_and_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_works(tmp_path / "nope")
    with pytest.raises(ValueError, match=r"holds no \*\.txt file"):
        read_works(tmp_path)
    (tmp_path / "b.txt").write_text("to be", encoding="utf-8")
    (tmp_path / "a.txt").write_text("or not", encoding="utf-8")
    assert read_works(tmp_path) == {"a": "or not", "b": "to be"}
    (tmp_path / "c.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match=r"c\.txt: not UTF-8"):
        read_works(tmp_path)
    (tmp_path / "c.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"c\.txt: the file is empty"):
        read_works(tmp_path)
