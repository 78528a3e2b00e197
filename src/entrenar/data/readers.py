"""Read labelled text (CSV, TSV, JSON Lines) and plain text, strictly.

    data = read_examples("train.csv")                      # columns "text" and "label"
    data.examples[0]       -> Example(text="a fine film", label=1)
    data.label_names       -> ("neg", "pos")               # label id i is label_names[i]
    val = read_examples("val.jsonl", label_names=data.label_names)   # the same ids as training
    corpus = read_text("shakespeare.txt")                  # a str, for language modelling

Labels are class ids or class names:
  - names (strings) become ids by their place in the sorted vocabulary of names found in the file (or
    in `label_names` when given, so that several files share one mapping);
  - integers >= 0 are the class ids themselves, and `label_names` is ("0", "1", ..., str(max id)).
In JSON Lines a label is a JSON int or a JSON string, one kind per file; in CSV every field is text,
so a label column whose fields are all non-negative integer literals ("0", "1", "12") holds class ids
and any other holds names.

Every problem is a FormatError reading ``"<file>: line N: <what is wrong>"``: text that is not UTF-8,
a malformed CSV record or JSON line, a missing column or key (the message lists those present), a
label of the wrong kind, an empty text.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

from entrenar.io import FormatError

__all__ = ["Example", "ExampleSet", "read_examples", "read_text"]

Format = Literal["csv", "tsv", "jsonl"]
_SUFFIXES: dict[str, Format] = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_CLASS_ID = re.compile(r"^[0-9]+$")


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled text: `label` is a class id in [0, number of classes)."""

    text: str
    label: int


@dataclass(frozen=True)
class ExampleSet(Sequence[Example]):
    """The examples of a file, in file order, with the label vocabulary (`label_names[id]`).

    A Sequence of Example, so it goes wherever a list of examples does (splits, loaders).
    """

    examples: list[Example]
    label_names: tuple[str, ...]
    path: Path

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def __len__(self) -> int:
        return len(self.examples)

    @overload
    def __getitem__(self, i: int) -> Example: ...
    @overload
    def __getitem__(self, i: slice) -> list[Example]: ...
    def __getitem__(self, i: int | slice) -> Example | list[Example]:
        return self.examples[i]

    def __iter__(self) -> Iterator[Example]:
        return iter(self.examples)


def read_utf8(path: Path) -> str:
    """The file's text: UTF-8, a leading byte-order mark dropped; FormatError naming the line otherwise."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise FormatError(
            path, f"line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        ) from None
    return text.removeprefix("\ufeff")


def read_text(path: str | os.PathLike[str]) -> str:
    """A plain-text corpus (for language modelling) as one str, exactly as stored (UTF-8).

    FileNotFoundError naming the path when absent; FormatError when it is not UTF-8 or holds no text.
    """
    p = Path(path)
    text = read_utf8(p)
    if not text.strip():
        raise FormatError(p, "holds no text (the file is empty or only whitespace)")
    return text


# ---------------------------------------------------------------------------------------------- rows
def _csv_rows(
    path: Path, text: str, delimiter: str, columns: tuple[str, str]
) -> Iterator[tuple[int, Any, Any]]:
    """(line number, text field, label field) per record of a CSV/TSV file with a header row."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    index: list[int] = []
    try:
        for row in reader:
            if not row:  # a blank line
                continue
            if header is None:
                header = row
                dupes = sorted({c for c in header if header.count(c) > 1})
                if dupes:
                    raise FormatError(
                        path, f"line {reader.line_num}: the header repeats the column(s) {dupes}"
                    )
                for c in columns:
                    if c not in header:
                        raise FormatError(
                            path,
                            f"no column {c!r}; the header (line {reader.line_num}) has: {', '.join(header)}",
                        )
                index = [header.index(c) for c in columns]
                continue
            if len(row) != len(header):
                raise FormatError(
                    path, f"line {reader.line_num}: {len(row)} fields, the header has {len(header)}"
                )
            yield reader.line_num, row[index[0]], row[index[1]]
    except csv.Error as exc:
        raise FormatError(path, f"line {reader.line_num}: malformed record ({exc})") from None
    if header is None:
        raise FormatError(path, "is empty: expected a header row naming the columns")


def _jsonl_rows(path: Path, text: str, columns: tuple[str, str]) -> Iterator[tuple[int, Any, Any]]:
    """(line number, text value, label value) per non-blank line of a JSON Lines file."""
    for n, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r")
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise FormatError(path, f"line {n}: not JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise FormatError(path, f"line {n}: JSON nested too deeply to read") from None
        if not isinstance(obj, dict):
            raise FormatError(path, f"line {n}: expected a JSON object, got {type(obj).__name__}")
        for c in columns:
            if c not in obj:
                raise FormatError(
                    path, f"line {n}: no key {c!r}; the object has: {', '.join(obj) or 'no keys'}"
                )
        yield n, obj[columns[0]], obj[columns[1]]


# ---------------------------------------------------------------------------------------------- labels
def _label_kind(path: Path, n: int, value: Any, fmt: Format) -> str:
    """'id' or 'name' for one label value."""
    if fmt != "jsonl":
        return "id" if _CLASS_ID.match(value) else "name"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise FormatError(
            path, f"line {n}: a label must be an int or a str, got {type(value).__name__} {value!r}"
        )
    if isinstance(value, int):
        if value < 0:
            raise FormatError(
                path, f"line {n}: integer label {value} is not a class id (ids are >= 0; use names otherwise)"
            )
        return "id"
    return "name"


def _to_ids(
    path: Path, rows: list[tuple[int, str, Any]], fmt: Format, label_names: Sequence[str] | None
) -> tuple[list[Example], tuple[str, ...]]:
    kinds = [_label_kind(path, n, label, fmt) for n, _, label in rows]
    if fmt == "jsonl" and len(set(kinds)) > 1:
        first = rows[0][0]
        n = next(r[0] for r, k in zip(rows, kinds, strict=True) if k != kinds[0])
        what = "a class id" if kinds[0] == "id" else "a name"
        raise FormatError(
            path, f"line {n}: labels mix class ids and names (line {first} has {what}); use one kind"
        )
    as_ids = bool(rows) and all(k == "id" for k in kinds)
    if as_ids:
        ids = [int(label) for _, _, label in rows]
        names = tuple(label_names) if label_names is not None else tuple(str(i) for i in range(max(ids) + 1))
        for (n, _, _), i in zip(rows, ids, strict=True):
            if i >= len(names):
                raise FormatError(
                    path, f"line {n}: class id {i} is out of range for {len(names)} label names"
                )
    else:
        found = sorted({str(label) for _, _, label in rows})
        names = tuple(label_names) if label_names is not None else tuple(found)
        lookup = {name: i for i, name in enumerate(names)}
        for n, _, label in rows:
            if str(label) not in lookup:
                raise FormatError(
                    path, f"line {n}: label {label!r} is not one of the label names {list(names)}"
                )
        ids = [lookup[str(label)] for _, _, label in rows]
    return [Example(text, i) for (_, text, _), i in zip(rows, ids, strict=True)], names


def read_examples(
    path: str | os.PathLike[str],
    text_column: str = "text",
    label_column: str = "label",
    *,
    format: Format | None = None,
    label_names: Sequence[str] | None = None,
) -> ExampleSet:
    """Labelled texts from a CSV (header row; `csv` module), TSV or JSON Lines file.

    `format` defaults to the suffix: .csv, .tsv, .jsonl / .ndjson. `label_names` fixes the label
    vocabulary (label id = position); without it the vocabulary is the sorted names found, or
    "0".."max id" for integer labels. Texts must be non-empty strings. See the module docstring for
    the label rules and errors.
    """
    p = Path(path)
    fmt = format if format is not None else _SUFFIXES.get(p.suffix.lower())
    if fmt not in ("csv", "tsv", "jsonl"):
        raise ValueError(
            f"read_examples({p}): cannot tell the format from the suffix {p.suffix!r}; "
            "use .csv, .tsv, .jsonl or pass format='csv' | 'tsv' | 'jsonl'"
        )
    if label_names is not None:
        label_names = tuple(label_names)
        if (
            not label_names
            or not all(isinstance(x, str) for x in label_names)
            or len(set(label_names)) < len(label_names)
        ):
            raise ValueError(f"read_examples: label_names must be distinct strs, got {label_names!r}")
    text = read_utf8(p)
    columns = (text_column, label_column)
    rows_iter = (
        _jsonl_rows(p, text, columns)
        if fmt == "jsonl"
        else _csv_rows(p, text, "\t" if fmt == "tsv" else ",", columns)
    )
    rows: list[tuple[int, str, Any]] = []
    for n, value, label in rows_iter:
        if not isinstance(value, str):
            raise FormatError(p, f"line {n}: {text_column!r} must be a string, got {type(value).__name__}")
        if not value.strip():
            raise FormatError(p, f"line {n}: {text_column!r} is empty")
        rows.append((n, value, label))
    if not rows:
        raise FormatError(p, "holds no examples")
    examples, names = _to_ids(p, rows, fmt, label_names)
    return ExampleSet(examples, names, p)
