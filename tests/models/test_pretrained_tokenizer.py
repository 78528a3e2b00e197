"""load_tokenizer / encode_batch on a tiny WordPiece tokenizer built here: padding, truncation, pad ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bert_checkpoints import WORDS, saved, tiny_tokenizer
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from entrenar.io import FormatError
from entrenar.models import PretrainedTokenizer, load_tokenizer

CLS, SEP, PAD, UNK = 2, 3, 0, 1


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tok")
    tiny_tokenizer(d)
    return d


def test_encode_batch_pads_to_the_longest_row(folder: Path) -> None:
    tok = load_tokenizer(folder)
    ids, mask = tok.encode_batch(["The movie was GOOD!", "bad", ""], max_length=12)
    v = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    assert ids.dtype == np.int64 and mask.dtype == np.int64 and ids.shape == mask.shape == (3, 7)
    assert ids.tolist() == [
        [CLS, v["the"], v["movie"], v["was"], v["good"], v["!"], SEP],
        [CLS, v["bad"], SEP, PAD, PAD, PAD, PAD],
        [CLS, SEP, PAD, PAD, PAD, PAD, PAD],
    ]
    assert mask.tolist() == [[1] * 7, [1] * 3 + [0] * 4, [1] * 2 + [0] * 5]
    assert tok.decode(ids[0]) == "the movie was good!"


def test_truncation_keeps_the_special_tokens(folder: Path) -> None:
    tok = load_tokenizer(folder)
    ids, mask = tok.encode_batch(["the movie was good fun", "a plot"], max_length=4)
    assert ids.shape == (2, 4) and ids[0, 0] == CLS and ids[0, -1] == SEP and mask[0].all()
    ids, mask = tok.encode_batch(["a plot"], max_length=9, padding="max_length")
    assert ids.shape == (1, 9) and mask.sum() == 4 and (ids[0, 4:] == PAD).all()
    ids, _ = tok.encode_batch(["a plot", "the fun"], max_length=9, padding=False)
    assert ids.shape == (2, 4)
    with pytest.raises(ValueError, match=r"padding=False needs rows of one length, got lengths \[3, 4\]"):
        tok.encode_batch(["a", "the fun"], max_length=9, padding=False)
    assert tok.encode_batch([], max_length=5)[0].shape == (0, 0)


@settings(max_examples=40, deadline=None)
@given(
    texts=st.lists(
        st.lists(st.sampled_from([*WORDS, "zzz", "Movies"]), max_size=12).map(" ".join), max_size=5
    ),
    max_length=st.integers(3, 16),
)
def test_rows_are_the_tokenizers_own_encodings_padded(
    folder: Path, texts: list[str], max_length: int
) -> None:
    """Each row, up to its mask, is what `tokenizers` gives for that text truncated to max_length; the
    rest is padding; the mask is a prefix of ones."""
    tok = load_tokenizer(folder)
    ids, mask = tok.encode_batch(texts, max_length=max_length)
    plain = Tokenizer.from_file(str(folder / "tokenizer.json"))
    plain.no_padding()
    plain.enable_truncation(max_length)
    assert ids.shape == (len(texts), int(mask.sum(axis=1).max(initial=0)))
    for i, text in enumerate(texts):
        want = plain.encode(text).ids
        n = int(mask[i].sum())
        assert len(want) <= max_length and n == len(want)
        assert ids[i, :n].tolist() == want and (ids[i, n:] == PAD).all()
        assert (np.diff(mask[i]) <= 0).all()


def test_pad_id_falls_back_to_tokenizer_config_then_config(tmp_path: Path) -> None:
    tiny_tokenizer(tmp_path, padding=False)
    with pytest.raises(FormatError, match=r"cannot tell the pad id: tokenizer\.json has no padding settings"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "[MASK]"}))
    assert load_tokenizer(tmp_path).pad_id == 4
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<nope>"}))
    with pytest.raises(FormatError, match=r"its pad_token '<nope>' is not in the vocabulary"):
        load_tokenizer(tmp_path)
    saved(tmp_path)  # config.json with pad_token_id 0
    assert load_tokenizer(tmp_path).pad_id == 0
    ids, _ = load_tokenizer(tmp_path).encode_batch(["a", "the movie"], max_length=8)
    assert ids[0, -1] == 0


def test_bad_tokenizer_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json: no tokenizer\.json there"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", ')
    with pytest.raises(FormatError, match=r"tokenizer\.json: tokenizer\.json is not valid JSON"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0"}')
    with pytest.raises(FormatError, match=r"tokenizer\.json: tokenizers could not read it"):
        load_tokenizer(tmp_path)


def test_bad_arguments(folder: Path) -> None:
    tok = load_tokenizer(folder)
    with pytest.raises(
        TypeError, match=r"texts must be a sequence of str \(a list of sentences, not one str\)"
    ):
        tok.encode_batch("the movie", max_length=8)
    with pytest.raises(ValueError, match=r"max_length must be an int above the 2 special tokens"):
        tok.encode_batch(["the movie"], max_length=2)
    with pytest.raises(ValueError, match=r"padding must be True, False, 'longest' or 'max_length'"):
        tok.encode_batch(["the movie"], max_length=8, padding="longest_first")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"pad_id must be an int in \[0, 19\)"):
        PretrainedTokenizer(tok.tokenizer, 19)
