"""Tests written for mutants that survived scripts/mutate.py: each pins down a rule no test checked.

- ops/shape.py split: `size < 0 or (size == 0 and n != 0)` -> `and` survived (no test of a bad size).
- lora/qlora.py full_precision_names: `task_type == "SEQ_CLS"` -> `!=` survived (the SEQ_CLS heads
  were kept float by another rule in every test model).
- lora/inject.py wrap_modules_to_save: `w + "."` -> `w - "."` survived (no nested match was tested).
"""

from __future__ import annotations

from typing import Any

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


# ------------------------------------------------------------------------------ second round of survivors
# ops/shape.py split (n // size, n % size), ops/pointwise_losses.py kl_div (`if needs[1]`) and
# cross_entropy (`a * wt if eps == 0.0 else a * ((1 - eps) * wt)`), ops/normalization.py layer_norm
# (`if needs[1]`),
# lora/wrappers.py (the original module frozen at once), lora/model.py active_adapters,
# lora/tuner.py unload's defaults (merge=False, safe_merge=False), lora/inject.py match_target (a
# regex exclude_modules reports the module as excluded).
# n = 0 is left out: torch gives one empty piece there, entrenar none (a difference for the ops owner)
@pytest.mark.parametrize("n", range(1, 13))
def test_split_by_size_matches_torch_for_every_length(n: int) -> None:
    import torch

    x = np.arange(2 * n, dtype=np.float32).reshape(n, 2)
    for size in range(1, 7):
        ours = entrenar.tensor(x).split(size)
        theirs = torch.from_numpy(x).split(size)
        assert [p.shape for p in ours] == [tuple(p.shape) for p in theirs], (n, size)
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(a.data, b.numpy())


@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
def test_kl_div_gradient_of_the_target_alone_matches_torch(log_target: bool, reduction: str) -> None:
    import torch

    import entrenar.functional as F

    rng = np.random.default_rng(3)
    x = np.log(rng.dirichlet(np.ones(5), size=4))  # log-probabilities (4, 5)
    t = rng.dirichlet(np.ones(5), size=4)
    t = np.log(t) if log_target else t
    xt, tt = entrenar.tensor(x), entrenar.tensor(t, requires_grad=True)  # only the target needs grad
    out = F.kl_div(xt, tt, reduction=reduction, log_target=log_target)
    out.sum().backward()
    tx, ttt = torch.from_numpy(x), torch.from_numpy(t).requires_grad_(True)
    torch.nn.functional.kl_div(tx, ttt, reduction=reduction, log_target=log_target).sum().backward()
    assert tt.grad is not None and ttt.grad is not None
    np.testing.assert_allclose(tt.grad, ttt.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("smoothing", [0.0, 0.25, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_weighted_cross_entropy_gradient_matches_torch(smoothing: float, reduction: str) -> None:
    import torch

    import entrenar.functional as F

    rng = np.random.default_rng(4)
    z = rng.standard_normal((6, 4))
    target = np.array([0, 3, 1, 1, 2, 0], dtype=np.int64)
    weight = np.array([0.5, 2.0, 3.0, 0.25])  # far from 1, so `a * w` and `a / w` differ
    zt = entrenar.tensor(z, requires_grad=True)
    F.cross_entropy(zt, entrenar.tensor(target), weight=entrenar.tensor(weight), reduction=reduction,
                    label_smoothing=smoothing).sum().backward()  # fmt: skip
    tz = torch.from_numpy(z).requires_grad_(True)
    torch.nn.functional.cross_entropy(
        tz, torch.from_numpy(target), weight=torch.from_numpy(weight), reduction=reduction,
        label_smoothing=smoothing,
    ).sum().backward()  # fmt: skip
    assert zt.grad is not None and tz.grad is not None
    np.testing.assert_allclose(zt.grad, tz.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("needs", ["weight", "input", "bias"])
def test_layer_norm_gradient_of_each_input_alone_matches_torch(needs: str) -> None:
    import torch

    import entrenar.functional as F

    rng = np.random.default_rng(5)
    x, w, b = rng.standard_normal((3, 4)), rng.uniform(0.5, 2.0, 4), rng.standard_normal(4)
    ours = {k: entrenar.tensor(v, requires_grad=k == needs) for k, v in (("input", x), ("weight", w),
                                                                         ("bias", b))}  # fmt: skip
    theirs = {k: torch.from_numpy(v).requires_grad_(k == needs) for k, v in (("input", x), ("weight", w),
                                                                             ("bias", b))}  # fmt: skip
    g = rng.standard_normal((3, 4))
    (F.layer_norm(ours["input"], 4, ours["weight"], ours["bias"]) * entrenar.tensor(g)).sum().backward()
    y = torch.nn.functional.layer_norm(theirs["input"], (4,), theirs["weight"], theirs["bias"])
    (y * torch.from_numpy(g)).sum().backward()
    for k in ours:
        if k == needs:
            np.testing.assert_allclose(ours[k].grad, theirs[k].grad.numpy(), rtol=1e-10, atol=1e-12)
        else:
            assert ours[k].grad is None


def test_modules_to_save_freezes_the_original_as_soon_as_it_is_wrapped() -> None:
    original = Linear(3, 2, generator=np.random.default_rng(0))
    assert all(p.requires_grad for p in original.parameters())
    ModulesToSaveWrapper(original, "default")
    assert [p.requires_grad for p in original.parameters()] == [False, False]


def test_a_peft_model_lists_its_active_adapter() -> None:
    from entrenar.lora import get_peft_model

    model = get_peft_model(_Nested(), LoraConfig(r=2, target_modules=["body"]))
    assert model.active_adapters == ["default"]
    assert model.active_adapter == "default"


def _broken_adapter() -> tuple[Any, np.ndarray]:
    from entrenar.lora import get_peft_model

    model = get_peft_model(_Nested(), LoraConfig(r=2, target_modules=["body"]))
    layer = model.base_model.model.body
    base = layer.base_layer.weight.data.copy()
    layer.lora_B["default"].weight.data[...] = np.inf  # a diverged adapter
    return model, base


def test_unloading_merges_nothing_unless_asked() -> None:
    model, base = _broken_adapter()
    plain = model.base_model.unload()
    np.testing.assert_array_equal(plain.body.weight.data, base)


def test_unloading_with_merge_checks_for_nan_only_when_asked() -> None:
    model, _ = _broken_adapter()
    with np.errstate(invalid="ignore"), pytest.raises(ValueError, match="NaNs detected"):
        model.base_model.unload(merge=True, safe_merge=True)
    model, _ = _broken_adapter()
    with np.errstate(invalid="ignore"):  # inf * 0 in B @ A
        merged = model.base_model.unload(merge=True)
    assert not np.isfinite(merged.body.weight.data).all()


def test_a_regex_exclude_reports_every_match_as_excluded() -> None:
    from entrenar.lora import get_peft_model

    config = LoraConfig(r=2, target_modules=["body"], exclude_modules=r"bo.y")
    with pytest.raises(ValueError, match=r"every module target_modules=\['body'\] matched is excluded"):
        get_peft_model(_Nested(), config)
