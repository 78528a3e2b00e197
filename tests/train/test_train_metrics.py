"""Metrics from summed counts against scikit-learn; summing over batches gives the whole-set metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import sklearn.metrics as skm
from hypothesis import given, settings
from hypothesis import strategies as st

from entrenar import tensor
from entrenar.train import (
    accuracy,
    add_sums,
    classification_loss,
    compute_metrics,
    confusion_matrix,
    f1_binary,
    f1_macro,
    lm_loss,
    perplexity,
)

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def labelled(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, int]:
    c = draw(st.integers(2, 5))
    n = draw(st.integers(1, 60))
    y = np.array(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)), dtype=np.int64)
    p = np.array(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)), dtype=np.int64)
    return y, p, c


@SETTINGS
@given(labelled())
def test_against_sklearn(case: tuple[np.ndarray, np.ndarray, int]) -> None:
    y, p, c = case
    m = confusion_matrix(y, p, c)
    np.testing.assert_array_equal(m, skm.confusion_matrix(y, p, labels=list(range(c))))
    assert accuracy(m) == pytest.approx(skm.accuracy_score(y, p), abs=1e-12)
    assert f1_macro(m) == pytest.approx(skm.f1_score(y, p, average="macro", zero_division=0), abs=1e-12)
    if c == 2:
        assert f1_binary(m) == pytest.approx(skm.f1_score(y, p, zero_division=0), abs=1e-12)
        assert compute_metrics({"confusion": m})["f1"] == f1_binary(m)
    else:
        assert compute_metrics({"confusion": m})["f1"] == f1_macro(m)


@SETTINGS
@given(labelled(), st.integers(1, 7))
def test_summed_batch_counts_give_the_whole_set_metrics(
    case: tuple[np.ndarray, np.ndarray, int], k: int
) -> None:
    y, p, c = case
    total: dict = {}
    for part in np.array_split(np.arange(len(y)), k):
        add_sums(total, {"confusion": confusion_matrix(y[part], p[part], c), "examples": len(part)})
    assert total["examples"] == len(y)
    np.testing.assert_array_equal(total["confusion"], confusion_matrix(y, p, c))


def test_edge_cases_follow_sklearn_zero_division() -> None:
    # no positive among labels or predictions: binary F1 is 0/0 -> 0, macro averages the present class
    y = p = np.zeros(4, dtype=np.int64)
    m = confusion_matrix(y, p, 2)
    assert f1_binary(m) == skm.f1_score(y, p, zero_division=0) == 0.0
    assert f1_macro(m) == skm.f1_score(y, p, average="macro", zero_division=0) == 1.0
    assert accuracy(np.zeros((2, 2), dtype=np.int64)) == 0.0
    with pytest.raises(ValueError, match=r"labels must be integer class ids in \[0, 2\)"):
        confusion_matrix([0, 2], [0, 1], 2)
    with pytest.raises(ValueError, match=r"must be square \(C, C\), got shape \(2, 3\)"):
        accuracy(np.zeros((2, 3)))
    with pytest.raises(TypeError, match=r"metric sums must be numbers or arrays; 'x' is str"):
        add_sums({}, {"x": "1"})


def test_perplexity_and_lm_metrics() -> None:
    assert perplexity(6.0, 3) == pytest.approx(math.e**2)
    assert perplexity(1e6, 1) == math.inf
    out = compute_metrics({"loss_sum": 3.0, "tokens": 2})
    assert out == {"loss": 1.5, "perplexity": pytest.approx(math.exp(1.5))}
    assert compute_metrics({"loss_sum": 3.0, "examples": 4}) == {"loss": 0.75}


def test_ready_made_losses_report_their_sums() -> None:
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, -1.0]], dtype=np.float32)
    labels = np.array([0, 0, 0])
    loss, sums = classification_loss(
        lambda **kw: tensor(logits), {"input_ids": np.zeros((3, 2)), "labels": labels}
    )  # type: ignore[arg-type]
    assert sums["examples"] == 3 and sums["loss_sum"] == pytest.approx(3 * loss.item())
    np.testing.assert_array_equal(sums["confusion"], [[2, 1], [0, 0]])
    with pytest.raises(ValueError, match=r"logits must be \(B, C\) for labels \(B,\)"):
        classification_loss(lambda **kw: tensor(logits[:2]), {"labels": labels})  # type: ignore[arg-type]
    lm_logits = np.zeros((1, 3, 5), dtype=np.float32)
    loss, sums = lm_loss(lambda ids: tensor(lm_logits), {"input_ids": 0, "labels": np.array([[1, -100, 2]])})  # type: ignore[arg-type]
    assert sums["tokens"] == 2 and loss.item() == pytest.approx(math.log(5))
