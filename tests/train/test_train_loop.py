"""The loop: step counts, log and eval cadence, early stopping, gradient accumulation, clipping, the plot,
the summary, a language model, and TrainerConfig's validation."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from train_helpers import BagClassifier, WordTokenizer, make_trainer, sentiment_examples

from entrenar.data import ClassificationLoader, LMLoader
from entrenar.nn import GPT, GPTConfig
from entrenar.optim import SGD, AdamW
from entrenar.train import EarlyStopping, Trainer, TrainerConfig, classification_loss, lm_loss, read_events


def splits(path: Path) -> list[tuple[int, str]]:
    return [(e["step"], e["split"]) for e in read_events(path / "metrics.jsonl")]


def test_log_eval_and_save_cadence(tmp_path: Path) -> None:
    t = make_trainer(tmp_path / "run", max_steps=10, log_every=4, eval_every=3, save_every=4, keep_last=2)
    result = t.train()
    assert splits(tmp_path / "run") == [
        (3, "eval"), (4, "train"), (6, "eval"), (8, "train"), (9, "eval"), (10, "train"), (10, "eval")
    ]  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*")) == ["step-10", "step-8"]
    assert result.steps == 10 and result.checkpoint == tmp_path / "run" / "checkpoints" / "step-10"
    ev = read_events(tmp_path / "run" / "metrics.jsonl")
    train = [e for e in ev if e["split"] == "train"]
    assert set(train[0]) >= {
        "step",
        "epoch",
        "split",
        "loss",
        "lr",
        "accuracy",
        "f1",
        "samples_per_s",
        "elapsed",
    }
    assert train[0]["epoch"] == pytest.approx(4 / 12) and train[-1]["epoch"] == pytest.approx(10 / 12)
    evals = [e for e in ev if e["split"] == "eval"]
    assert result.best_metric == "loss" and result.best_value == min(e["loss"] for e in evals)
    assert result.final_metrics["eval"]["loss"] == evals[-1]["loss"]


def test_the_train_event_averages_its_window(tmp_path: Path) -> None:
    every = make_trainer(tmp_path / "a", max_steps=6, eval_n=None)
    every.train()
    windowed = make_trainer(tmp_path / "b", max_steps=6, eval_n=None, log_every=4)
    windowed.train()
    one = [e["loss"] for e in read_events(tmp_path / "a" / "metrics.jsonl")]
    four = [e["loss"] for e in read_events(tmp_path / "b" / "metrics.jsonl")]
    assert four == pytest.approx([sum(one[:4]) / 4, sum(one[4:]) / 2], rel=1e-12)


def test_train_again_continues_in_memory(tmp_path: Path) -> None:
    straight = make_trainer(tmp_path / "a", max_steps=8, schedule_steps=8, eval_n=None)
    straight.train()
    t = make_trainer(tmp_path / "b", max_steps=4, schedule_steps=8, eval_n=None)
    t.train()
    t.config = dataclasses.replace(t.config, max_steps=8)
    assert t.train().steps == 8

    def losses(path: Path) -> list[float]:
        return [e["loss"] for e in read_events(path / "metrics.jsonl")]

    assert losses(tmp_path / "b") == losses(tmp_path / "a")


def test_epochs_set_the_step_count(tmp_path: Path) -> None:
    cfg = TrainerConfig(output_dir=tmp_path, epochs=1.5, grad_accumulation_steps=4)
    assert cfg.total_steps(12) == 4 and cfg.total_steps(1) == 1
    t = make_trainer(tmp_path / "run", epochs=2, eval_n=None)  # 12 batches of 8 per epoch
    result = t.train()
    assert result.steps == 24 and result.epochs == 2.0 and t.train_loader.state_dict()["epoch"] == 2  # type: ignore[attr-defined]


def test_early_stopping_after_patience_evaluations_without_improvement(tmp_path: Path) -> None:
    stop = EarlyStopping(metric="accuracy", mode="max", patience=2)
    t = make_trainer(tmp_path / "run", max_steps=50, lr=0.0, eval_every=2, early_stopping=stop)
    result = t.train()  # lr 0: nothing changes, so the first evaluation stays the best
    assert result.stopped_early and result.steps == 6 and result.best_step == 2
    assert [s for s, split in splits(tmp_path / "run") if split == "eval"] == [2, 4, 6]
    assert "stopped early" in result.summary()
    moving = make_trainer(
        tmp_path / "run2", max_steps=12, lr=3e-2, eval_every=2, early_stopping=EarlyStopping(patience=5)
    )
    assert not moving.train().stopped_early
    assert EarlyStopping(min_delta=0.1).improves(0.85, 1.0) and not EarlyStopping(min_delta=0.1).improves(
        0.95, 1.0
    )
    with pytest.raises(ValueError, match="early_stopping needs an eval_loader"):
        make_trainer(tmp_path / "x", max_steps=2, eval_n=None, early_stopping=stop)
    bad = make_trainer(tmp_path / "y", max_steps=2, eval_every=1, early_stopping=EarlyStopping(metric="bleu"))
    with pytest.raises(
        KeyError, match=r"'bleu' is not among the eval metrics \['accuracy', 'f1', 'f1_macro', 'loss'\]"
    ):
        bad.train()


def _grads_after_one_step(
    tmp: Path, batch_size: int, accum: int, clip: float | None
) -> dict[str, np.ndarray]:
    tok = WordTokenizer()
    model = BagClassifier(tok.vocab_size, p=0.0)
    loader = ClassificationLoader(
        sentiment_examples(16, seed=1), tok, batch_size, max_length=8, shuffle=False
    )
    cfg = TrainerConfig(
        tmp, max_steps=1, grad_accumulation_steps=accum, max_grad_norm=clip, progress=False, plot=False
    )
    Trainer(model, classification_loss, SGD(list(model.parameters()), lr=0.0), loader, config=cfg).train()
    return {n: p.grad.copy() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("clip", [None, 0.05])
def test_accumulated_micro_batches_give_the_full_batch_gradient(tmp_path: Path, clip: float | None) -> None:
    full = _grads_after_one_step(tmp_path / "a", 8, 1, clip)
    accumulated = _grads_after_one_step(tmp_path / "b", 4, 2, clip)
    assert full.keys() == accumulated.keys() and len(full) == 5
    for name in full:
        np.testing.assert_allclose(accumulated[name], full[name], rtol=2e-5, atol=1e-7, err_msg=name)
    norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in full.values()))
    if clip is not None:
        assert norm == pytest.approx(clip, rel=1e-4)  # the gradients were clipped to the max norm


def test_progress_plot_and_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t = make_trainer(tmp_path / "run", max_steps=4, eval_every=2, progress=True, plot=True)
    result = t.train()
    err = capsys.readouterr().err
    assert "train" in err and "loss=" in err and "lr=" in err and "samples_s=" in err
    assert "trained 4 steps" in err and "best eval loss" in err
    assert result.plot_path == tmp_path / "run" / "plot.png"
    assert result.plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_language_model_reports_perplexity(tmp_path: Path) -> None:
    text = "to be or not to be that is the question " * 12
    chars = sorted(set(text))
    ids = np.array([chars.index(c) for c in text], dtype=np.int64)
    model = GPT(
        GPTConfig(vocab_size=len(chars), block_size=16, n_layer=1, n_head=2, n_embd=16),
        generator=np.random.default_rng(0),
    )
    train = LMLoader(ids, block_size=16, batch_size=4, seed=0)
    val = LMLoader(ids[:200], block_size=16, batch_size=4, shuffle=False)
    cfg = TrainerConfig(tmp_path, max_steps=30, eval_every=15, log_every=15, progress=False, plot=True)
    result = Trainer(
        model, lm_loss, AdamW(list(model.parameters()), lr=1e-2), train, eval_loader=val, config=cfg
    ).train()
    ev = [e for e in read_events(tmp_path / "metrics.jsonl") if e["split"] == "eval"]
    assert ev[-1]["perplexity"] == pytest.approx(math.exp(ev[-1]["loss"]))
    assert ev[-1]["loss"] < ev[0]["loss"] < math.log(len(chars)) and result.plot_path is not None


def test_non_finite_loss_stops_the_run(tmp_path: Path) -> None:
    t = make_trainer(tmp_path / "run", max_steps=3)
    t.loss_fn = lambda model, batch: (classification_loss(model, batch)[0] * float("nan"), {})
    with pytest.raises(FloatingPointError, match=r"step 1: the loss is nan"):
        t.train()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "give exactly one of max_steps"),
        ({"max_steps": 5, "epochs": 1}, "give exactly one of max_steps"),
        ({"max_steps": 0}, r"max_steps must be an int >= 1 or None, got 0"),
        ({"epochs": -1}, r"epochs must be a number > 0, got -1"),
        (
            {"max_steps": 1, "grad_accumulation_steps": 1.5},
            r"grad_accumulation_steps must be an int >= 1, got 1\.5",
        ),
        ({"max_steps": 1, "max_grad_norm": 0}, r"max_grad_norm must be a number > 0 or None, got 0"),
        ({"max_steps": 1, "eval_every": 0}, r"eval_every must be an int >= 1 or None"),
        ({"max_steps": 1, "keep_last": 0}, r"keep_last must be an int >= 1 or None"),
        ({"max_steps": 1, "seed": -1}, r"seed must be an int >= 0, got -1"),
        ({"max_steps": 1, "progress": "yes"}, r"progress must be True or False"),
        ({"max_steps": 1, "resume": ""}, r"resume must be False, True or a checkpoint path"),
        (
            {"max_steps": 1, "early_stopping": {"metric": "loss"}},
            r"early_stopping must be an EarlyStopping or None",
        ),
    ],
)
def test_config_validation_names_the_field(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        TrainerConfig(output_dir=tmp_path, **kwargs)


def test_config_round_trips_through_a_dict(tmp_path: Path) -> None:
    cfg = TrainerConfig(
        tmp_path, epochs=2, early_stopping=EarlyStopping("f1", "max", 4), extra={"model": "minilm"}
    )
    assert TrainerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown keys \['lr'\]"):
        TrainerConfig.from_dict({**cfg.to_dict(), "lr": 1})
    with pytest.raises(ValueError, match=r"EarlyStopping: mode must be 'min' or 'max', got 'up'"):
        EarlyStopping(mode="up")  # type: ignore[arg-type]
