"""Tests written for mutants of entrenar.optim that survived scripts/mutate.py.

- optimizer.py _group_params: `isinstance(params, (str, bytes, Mapping)) or not isinstance(params,
  Iterable)` -> `and` survived (a str or dict failed later, with another message).
- schedules.py one_cycle: final_div_factor's bound (low=0.0, low_open=True) was never probed at its edges.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import entrenar
from entrenar.optim import SGD
from entrenar.optim.schedules import one_cycle


@pytest.mark.parametrize(
    ("params", "kind"), [("ab", "str"), (b"ab", "bytes"), ({"w": 1}, "dict"), (5, "int"), (None, "NoneType")]
)
def test_group_params_that_are_not_an_iterable_of_tensors_are_named(params: Any, kind: str) -> None:
    with pytest.raises(TypeError, match=rf"params must be an iterable of Tensors, got {kind}$"):
        SGD([{"params": params}], lr=0.1)


def test_params_may_be_any_ordered_iterable() -> None:
    w = entrenar.tensor(np.ones(2, dtype=np.float32), requires_grad=True)
    for params in (iter([w]), (w,), [w], w):
        assert SGD([{"params": params}], lr=0.1).param_groups[0]["params"] == [w]


def test_one_cycle_final_div_factor_below_one_is_allowed() -> None:
    # the last step reaches initial / final_div_factor = (1 / 25) / 0.5
    lr = one_cycle(9, max_lr=1.0, total_steps=10, div_factor=25.0, final_div_factor=0.5)
    assert lr == pytest.approx(0.08, rel=1e-12)


@pytest.mark.parametrize("factor", [0.0, -1.0])
def test_one_cycle_final_div_factor_must_be_positive(factor: float) -> None:
    with pytest.raises(ValueError, match="final_div_factor"):
        one_cycle(0, max_lr=1.0, total_steps=10, final_div_factor=factor)
