"""`entrenar train` / `finetune` end to end on a tiny model: the run directory, overrides reaching the
Trainer, refusing an existing run, --overwrite, and an interrupted run resumed exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiny_run import TinySetup

import entrenar.finetune.job as job
from entrenar.cli import main
from entrenar.config import load_config
from entrenar.io import load_safetensors
from entrenar.train import Trainer

ROOT = Path(__file__).resolve().parents[2]


def test_a_finished_run_holds_everything(finished: TinySetup, capsys: pytest.CaptureFixture[str]) -> None:
    run = finished.run_dir
    for name in (
        "config.yaml",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "head.safetensors",
        "probe.json",
        "results.json",
        "metrics.jsonl",
        "plot.png",
        "checkpoints/latest",
    ):
        assert (run / name).is_file(), name
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 12
    assert 0 <= results["before"]["accuracy"]["test"] <= 1 and 0 <= results["after"]["test"]["accuracy"] <= 1
    assert results["peak_memory_bytes"] is None or results["peak_memory_bytes"] > 10 * 2**20
    # the adapter trained: PEFT initialises B to zero, so any non-zero B is learned
    adapter = load_safetensors(run / "adapter" / "adapter_model.safetensors")
    b_keys = [k for k in adapter if "lora_B" in k]
    assert len(b_keys) == 2 * 2  # query and value in 2 layers
    assert all(k.startswith("base_model.model.encoder.layer.") for k in adapter)
    assert any(np.abs(adapter[k]).max() > 0 for k in b_keys)
    config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(finished.model_dir)
    assert (
        config["r"] == 4
        and config["lora_alpha"] == 8
        and sorted(config["target_modules"]) == ["query", "value"]
    )
    saved = load_config(run / "config.yaml")
    assert Path(saved.model.path).is_absolute() and saved.output.plot is True  # the override was recorded


def test_the_run_prints_accuracy_before_and_after(
    tiny: TinySetup, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", str(tiny.config_path), "training.max_steps=2"]) == 0
    out = capsys.readouterr().out
    assert "accuracy BEFORE fine-tuning (linear probe on the frozen encoder): test " in out
    assert "accuracy AFTER fine-tuning: validation " in out
    assert "peak memory (VmHWM)" in out
    results = json.loads((tiny.run_dir / "results.json").read_text())
    assert f"test {100 * results['after']['test']['accuracy']:.2f}%" in out


def test_overrides_reach_the_trainer(tiny: TinySetup, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    class Recording(Trainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            seen["trainer"] = self

        def train(self) -> Any:
            raise KeyboardInterrupt  # the settings are all we want: stop before the first step

    monkeypatch.setattr(job, "Trainer", Recording)
    overrides = [
        "training.max_steps=7",
        "training.max_grad_norm=0.25",
        "training.grad_accumulation_steps=2",
        "optimizer.lr=0.003",
        "optimizer.head_lr=0.02",
        "optimizer.weight_decay=0.5",
        "schedule.warmup_steps=3",
        "data.batch_size=5",
        "lora.r=2",
    ]
    assert main(["train", str(tiny.config_path), *overrides]) == 130
    t: Trainer = seen["trainer"]
    assert (
        t.config.max_steps == 7 and t.config.max_grad_norm == 0.25 and t.config.grad_accumulation_steps == 2
    )
    groups = t.optimizer.param_groups
    assert [g["initial_lr"] for g in groups] == [0.003, 0.02]
    assert all(g["weight_decay"] == 0.5 for g in groups)
    assert t.scheduler is not None and t.scheduler.warmup_steps == 3  # type: ignore[attr-defined]
    assert t.train_loader.batch_size == 5  # type: ignore[attr-defined]
    shapes = {n: p.shape for n, p in t.model.named_parameters() if "lora_A" in n}
    assert shapes and all(s[0] == 2 for s in shapes.values())  # rank 2


def test_an_existing_run_is_refused_and_left_alone(
    finished: TinySetup, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p: p.stat().st_mtime_ns for p in finished.run_dir.rglob("*") if p.is_file()}
    assert main(["train", str(finished.config_path)]) == 2
    err = capsys.readouterr().err
    assert f"the run directory {finished.run_dir} already exists" in err
    assert "--resume" in err and "--overwrite" in err and "Traceback" not in err
    assert {p: p.stat().st_mtime_ns for p in finished.run_dir.rglob("*") if p.is_file()} == before


def test_overwrite_checks_the_input_before_removing_the_old_run(
    tiny: TinySetup, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", str(tiny.config_path), "training.max_steps=2"]) == 0
    latest = tiny.run_dir / "checkpoints" / "latest"
    assert latest.is_file()
    bad = tiny.config(data={"train": str(tiny.root / "missing.csv")})
    assert main(["train", str(bad), "--overwrite"]) == 2
    assert "missing.csv does not exist" in capsys.readouterr().err
    assert latest.is_file()  # the finished checkpoint survived the failed attempt
    assert main(["train", str(tiny.config_path), "--overwrite", "training.max_steps=3"]) == 0
    assert json.loads((tiny.run_dir / "results.json").read_text())["steps"] == 3


def test_overwrite_never_removes_a_folder_that_is_not_a_run(
    tiny: TinySetup, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny.run_dir.mkdir(parents=True)
    (tiny.run_dir / "thesis.tex").write_text("precious")
    assert main(["train", str(tiny.config_path), "--overwrite"]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    assert (tiny.run_dir / "thesis.tex").read_text() == "precious"


def test_an_interrupted_run_resumes_to_the_same_weights(
    tiny: TinySetup, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    straight = ["train", str(tiny.config_path), "output.name=straight"]
    assert main(straight) == 0
    reference = load_safetensors(tiny.out_dir / "straight" / "adapter" / "adapter_model.safetensors")
    reference_head = load_safetensors(tiny.out_dir / "straight" / "head.safetensors")

    step = Trainer._train_step

    def interrupted(self: Trainer, stream: Any) -> float:
        if self.step == 6:  # after the checkpoint of step 4, before the one of step 8
            raise KeyboardInterrupt
        return step(self, stream)

    monkeypatch.setattr(Trainer, "_train_step", interrupted)
    assert main(["train", str(tiny.config_path)]) == 130
    err = capsys.readouterr().err
    assert f"entrenar train {tiny.run_dir / 'config.yaml'} --resume" in err
    monkeypatch.setattr(Trainer, "_train_step", step)

    assert main(["train", str(tiny.run_dir / "config.yaml"), "--resume"]) == 0
    resumed = load_safetensors(tiny.run_dir / "adapter" / "adapter_model.safetensors")
    assert resumed.keys() == reference.keys()
    for k in reference:
        np.testing.assert_array_equal(resumed[k], reference[k], err_msg=k)
    for k, v in load_safetensors(tiny.run_dir / "head.safetensors").items():
        np.testing.assert_array_equal(v, reference_head[k], err_msg=k)
    lines = (tiny.run_dir / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines if json.loads(line)["split"] == "train"]
    assert steps == sorted(steps) and len(steps) == len(set(steps))  # no step logged twice


def test_resume_refuses_a_changed_config_and_a_missing_run(
    finished: TinySetup, tiny: TinySetup, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", str(finished.config_path), "--resume", "lora.r=2", "optimizer.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert "differs from its config.yaml in: lora.r, optimizer.lr" in err
    assert main(["train", str(tiny.config_path), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_resume_and_overwrite_exclude_each_other(tiny: TinySetup) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", str(tiny.config_path), "--resume", "--overwrite"])
    assert info.value.code == 2


def test_finetune_runs_the_shipped_config_with_overrides(
    tiny: TinySetup, capsys: pytest.CaptureFixture[str]
) -> None:
    # the shipped config with everything that makes it big overridden: the same code path, seconds
    overrides = [
        f"model.path={tiny.model_dir}",
        "data.dataset=null",
        f"data.train={tiny.train_csv}",
        "data.max_length=16",
        "lora.target_modules=[query]",
        "lora.block_size=16",
        "training.max_steps=2",
        "training.progress=false",
        "training.probe.enabled=false",
        f"output.dir={tiny.out_dir}",
        "output.plot=false",
    ]
    assert main(["finetune", *overrides]) == 0
    run = tiny.out_dir / "minilm-sentiment-qlora"
    config = load_config(run / "config.yaml")
    assert config.lora.r == 8 and config.lora.quantize == "nf4" and config.training.max_steps == 2
    assert not (run / "probe.json").exists()
    assert "accuracy BEFORE" not in capsys.readouterr().out


def test_only_the_adapters_and_the_head_train(tiny: TinySetup) -> None:
    for quantize in ("null", "int4"):
        name = f"q-{quantize}"
        argv = ["train", str(tiny.config_path), f"lora.quantize={quantize}", "training.max_steps=2"]
        assert main([*argv, f"output.name={name}", "training.probe.enabled=false"]) == 0
        saved = load_safetensors(tiny.out_dir / name / "checkpoints" / "step-2" / "model.safetensors")
        assert sum("lora_" in k for k in saved) == 2 * 2 * 2  # A and B of query and value in 2 layers
        assert all(("lora_A." in k or "lora_B." in k or k.startswith("classifier.")) for k in saved), (
            saved.keys()
        )
        assert sum(k.startswith("classifier.") for k in saved) == 2


def test_train_in_a_subprocess(tiny: TinySetup) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "entrenar", "train", str(tiny.config_path), "training.max_steps=2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "accuracy AFTER fine-tuning" in done.stdout
    assert (tiny.run_dir / "adapter" / "adapter_model.safetensors").is_file()
    again = subprocess.run(
        [sys.executable, "-m", "entrenar", "train", str(tiny.config_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
