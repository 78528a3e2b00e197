"""The pieces of the fine-tuning job: length-bucketed batches, mean pooling, the probe's head, the
optimizer's groups and the schedule, the run directory's head file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from entrenar.config import validate_config
from entrenar.data import ClassificationLoader, Example
from entrenar.finetune import BucketedLoader, build_optimizer, build_scheduler
from entrenar.finetune.model import SequenceClassifier, read_head, write_head
from entrenar.finetune.probe import head_accuracy, train_head
from entrenar.io import FormatError, save_safetensors
from entrenar.nn.bert import BertConfig, BertModel
from entrenar.nn.layers import Linear


class LengthTokenizer:
    """Row i of a batch gets len(text.split()) tokens (ids 1..), padded with 0: lengths on demand."""

    def encode_batch(self, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        lengths = [min(len(t.split()), max_length) for t in texts]
        T = max(lengths)
        mask = (np.arange(T)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
        return mask * np.arange(1, T + 1)[None, :], mask


def _examples(lengths: list[int]) -> list[Example]:
    return [Example(" ".join(["w"] * n), i % 2) for i, n in enumerate(lengths)]


lengths_st = st.lists(st.integers(1, 40), min_size=1, max_size=120)


@settings(max_examples=60, deadline=None)
@given(lengths=lengths_st, batch=st.integers(1, 9), window=st.integers(1, 6), seed=st.integers(0, 5))
def test_every_epoch_visits_each_item_once_with_only_the_last_batch_short(
    lengths: list[int], batch: int, window: int, seed: int
) -> None:
    loader = BucketedLoader(
        _examples(lengths), LengthTokenizer(), batch, 64, seed=seed, bucket_batches=window
    )
    for epoch in (0, 1):
        order = loader.order(epoch)
        assert sorted(order.tolist()) == list(range(len(lengths)))
        np.testing.assert_array_equal(order, loader.order(epoch))  # a function of (seed, epoch) only
        sizes = [len(b["labels"]) for b in loader.epoch_batches(epoch)]
        assert all(s == batch for s in sizes[:-1]) and 1 <= sizes[-1] <= batch


@settings(max_examples=60, deadline=None)
@given(lengths=lengths_st, batch=st.integers(1, 9), seed=st.integers(0, 5))
def test_one_window_gives_the_batches_of_the_sorted_lengths(
    lengths: list[int], batch: int, seed: int
) -> None:
    """With a window as large as the data, the batches are consecutive runs of the sorted lengths (in
    random order, a short one last): the least padding any batching of these lengths can have."""
    loader = BucketedLoader(_examples(lengths), LengthTokenizer(), batch, 64, seed=seed, bucket_batches=10**6)
    got = [tuple(sorted(b["attention_mask"].sum(axis=1).tolist())) for b in loader.epoch_batches(0)]
    s = sorted(lengths)
    want = [tuple(s[i : i + batch]) for i in range(0, len(s), batch)]
    assert sorted(got) == sorted(want)
    if len(lengths) % batch:
        assert got[-1] == want[-1]  # the short batch stays last, so batches stay aligned


def test_bucketing_cuts_padding_on_real_looking_lengths() -> None:
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.gamma(4.0, 7.0, size=2000).astype(int), 3, 64).tolist()
    examples, tok = _examples(lengths), LengthTokenizer()
    plain = ClassificationLoader(examples, tok, 32, 64, seed=0)
    bucketed = BucketedLoader(examples, tok, 32, 64, seed=0, bucket_batches=50)
    padded = [sum(b["input_ids"].size for b in ld.epoch_batches(0)) for ld in (plain, bucketed)]
    assert padded[1] < 0.75 * padded[0] and padded[1] < 1.05 * sum(lengths)


def test_bucket_batches_1_is_the_plain_shuffle_batch_for_batch() -> None:
    """Sorting inside single batches changes no batch: the batches are the plain loader's, in another
    order. Lengths 1..49 are distinct, so a batch's lengths name its items."""
    examples, tok = _examples(list(range(1, 50))), LengthTokenizer()

    def batches(loader: ClassificationLoader) -> list[tuple[int, ...]]:
        return [tuple(sorted(b["attention_mask"].sum(axis=1).tolist())) for b in loader.epoch_batches(0)]

    plain = batches(ClassificationLoader(examples, tok, 7, 64, seed=4))
    ours = batches(BucketedLoader(examples, tok, 7, 64, seed=4, bucket_batches=1))
    assert sorted(ours) == sorted(plain) and ours != plain


def test_evaluation_order_is_shortest_first_and_resume_is_exact() -> None:
    lengths = [5, 1, 9, 3, 3, 7, 2]
    loader = BucketedLoader(_examples(lengths), LengthTokenizer(), 3, 64, shuffle=False)
    assert [lengths[i] for i in loader.order(0)] == sorted(lengths)
    train = BucketedLoader(_examples(lengths * 5), LengthTokenizer(), 4, 64, seed=3, bucket_batches=2)
    it = iter(train)
    next(it), next(it)
    state = train.state_dict()
    rest = [b["labels"].tolist() for b in it]
    again = BucketedLoader(_examples(lengths * 5), LengthTokenizer(), 4, 64, seed=3, bucket_batches=2)
    again.load_state_dict(state)
    assert [b["labels"].tolist() for b in again] == rest
    other = BucketedLoader(_examples(lengths * 5), LengthTokenizer(), 4, 64, seed=3, bucket_batches=3)
    with pytest.raises(ValueError, match="bucket_batches: saved 2, now 3"):
        other.load_state_dict(state)


def _classifier(pooling: str = "mean") -> SequenceClassifier:
    c = BertConfig(
        vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16
    )
    bert = BertModel(c, generator=np.random.default_rng(0)).eval()
    return SequenceClassifier(bert, 8, 3, pooling, generator=np.random.default_rng(1)).eval()


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(1, 6), min_size=1, max_size=4), pad=st.integers(0, 4))
def test_mean_pooling_is_the_mean_over_real_tokens_and_ignores_padding(lengths: list[int], pad: int) -> None:
    model = _classifier()
    rng = np.random.default_rng(len(lengths))
    T = max(lengths)
    mask = (np.arange(T + pad)[None, :] < np.array(lengths)[:, None]).astype(np.int64)
    ids = np.where(mask == 1, rng.integers(1, 30, mask.shape), 0)
    pooled = model.pool(ids, mask).data
    hidden = model.encoder(ids, mask).last_hidden_state.data
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(pooled[i], hidden[i, :n].mean(axis=0), rtol=1e-5, atol=1e-6)
        alone = model.pool(ids[i : i + 1, :n], mask[i : i + 1, :n]).data[0]  # no padding at all
        np.testing.assert_allclose(pooled[i], alone, rtol=1e-4, atol=1e-5)


def test_cls_and_pooler_pooling() -> None:
    ids = np.array([[2, 5, 7, 0]])
    mask = np.array([[1, 1, 1, 0]])
    cls, pooler = _classifier("cls"), _classifier("pooler")
    out = cls.encoder(ids, mask)
    np.testing.assert_array_equal(cls.pool(ids, mask).data, out.last_hidden_state.data[:, 0])
    np.testing.assert_allclose(pooler.pool(ids, mask).data, out.pooler_output.data, rtol=1e-6)
    with pytest.raises(ValueError, match="pooling must be one of"):
        SequenceClassifier(cls.encoder, 8, 2, "max", generator=np.random.default_rng(0))


def test_the_probe_head_separates_separable_vectors_and_l2_shrinks_it() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    x = (rng.standard_normal((400, 8)) + 3.0 * (2 * y[:, None] - 1) * np.eye(8)[0]).astype(np.float32)
    norms = []
    for l2 in (0.0, 0.1):
        head = Linear(8, 2, generator=np.random.default_rng(1))
        train_head(head, x, y, steps=200, lr=0.05, l2=l2)
        assert head_accuracy(head, x, y) > 0.97
        norms.append(float(np.linalg.norm(head.weight.data)))
    assert norms[1] < norms[0]


def test_head_file_round_trip_and_checks(tmp_path: Path) -> None:
    model = _classifier()
    write_head(model, tmp_path / "head.safetensors", ("a", "b", "c"))
    state, pooling, labels = read_head(tmp_path / "head.safetensors", 8)
    assert (pooling, labels) == ("mean", ("a", "b", "c"))
    np.testing.assert_array_equal(state["weight"], model.classifier.weight.data)
    with pytest.raises(FormatError, match=r"do not fit 3 labels on a hidden size of 16"):
        read_head(tmp_path / "head.safetensors", 16)
    save_safetensors(tmp_path / "bad.safetensors", {"w": np.zeros(2, np.float32)})
    with pytest.raises(FormatError, match="expected the tensors"):
        read_head(tmp_path / "bad.safetensors", 8)


def test_optimizer_groups_and_the_warmup_then_linear_schedule() -> None:
    config = validate_config(
        {
            "optimizer": {"lr": 0.01, "head_lr": 0.1},
            "schedule": {"warmup": 0.2},
            "training": {"max_steps": 10},
        }
    )
    model = _classifier()
    model.encoder.requires_grad_(False)
    model.encoder.encoder.layer[0].attention.self.query.weight.requires_grad = True
    opt = build_optimizer(config, model)
    assert [len(g["params"]) for g in opt.param_groups] == [1, 2]
    scheduler = build_scheduler(config, opt, 10)
    lrs = []
    for _ in range(10):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        scheduler.step()
    head = [lr[1] for lr in lrs]
    np.testing.assert_allclose(head, [0.0, 0.05, 0.1, 0.0875, 0.075, 0.0625, 0.05, 0.0375, 0.025, 0.0125])
    np.testing.assert_allclose([lr[0] for lr in lrs], np.array(head) / 10)
    constant = validate_config({"schedule": {"name": "constant", "warmup_steps": 0}})
    opt = build_optimizer(constant, model)
    build_scheduler(constant, opt, 10)
    assert [g["lr"] for g in opt.param_groups] == [constant.optimizer.lr, constant.optimizer.head_lr]
