"""Tests written for mutants that survived scripts/mutate.py: each pins down a rule no test checked.

- ops/shape.py split: `size < 0 or (size == 0 and n != 0)` -> `and` survived (no test of a bad size).
- lora/qlora.py full_precision_names: `task_type == "SEQ_CLS"` -> `!=` survived (the SEQ_CLS heads
  were kept float by another rule in every test model).
- lora/inject.py wrap_modules_to_save: `w + "."` -> `w - "."` survived (no nested match was tested).
"""

from __future__ import annotations

import numpy as np
import pytest

import entrenar
from entrenar.lora import LoraConfig
from entrenar.lora.inject import wrap_modules_to_save
from entrenar.lora.qlora import full_precision_names
from entrenar.lora.wrappers import ModulesToSaveWrapper
from entrenar.nn import Linear, Module


@pytest.mark.parametrize("size", [-1, -3, 0])
def test_split_rejects_a_negative_or_zero_size_by_name(size: int) -> None:
    x = entrenar.tensor(np.arange(12, dtype=np.float32).reshape(4, 3))
    with pytest.raises(ValueError, match=rf"split: split size {size} is invalid for dim 0"):
        x.split(size)


def test_split_of_an_empty_dim_by_zero_is_one_empty_piece() -> None:
    x = entrenar.tensor(np.zeros((0, 3), dtype=np.float32))
    (piece,) = x.split(0)
    assert piece.shape == (0, 3)


class _Heads(Module):
    """A body, a `classifier` and a nested `pool.score`: the two SEQ_CLS head names."""

    def __init__(self) -> None:
        super().__init__()
        rng = np.random.default_rng(0)
        self.body = Linear(4, 4, generator=rng)
        self.classifier = Linear(4, 2, generator=rng)
        self.pool = Module()
        self.pool.score = Linear(4, 1, generator=rng)


def test_seq_cls_keeps_both_head_names_float_and_other_tasks_keep_none() -> None:
    seq = LoraConfig(r=2, target_modules=["body"], task_type="SEQ_CLS")
    assert full_precision_names(_Heads(), seq) == ["classifier", "pool.score"]
    plain = LoraConfig(r=2, target_modules=["body"])
    assert full_precision_names(_Heads(), plain) == []


class _Nested(Module):
    """`head` holds a Linear also called `head`: both names end with "head"."""

    def __init__(self) -> None:
        super().__init__()
        rng = np.random.default_rng(1)
        self.head = Module()
        self.head.head = Linear(3, 3, generator=rng)
        self.body = Linear(3, 3, generator=rng)


def test_modules_to_save_wraps_the_outer_match_only() -> None:
    model = _Nested()
    wrapped = wrap_modules_to_save(model, ["head"], "default")
    assert wrapped == ["head"]
    assert isinstance(model.head, ModulesToSaveWrapper)
