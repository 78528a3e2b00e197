"""Bad input: each a clear message on stderr and exit status 2, no traceback, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_run import TinySetup, sentences, write_csv

from entrenar.cli import main


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], *expected: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.startswith(f"entrenar {argv[0]}: error: "), err
    for text in expected:
        assert text in err, (text, err)
    return err


def _train(tiny: TinySetup, **sections: dict) -> list[str]:
    return ["train", str(tiny.config(**sections))]


def test_a_missing_model_folder(tiny: TinySetup, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tiny.root / "nowhere"
    _fails(_train(tiny, model={"path": str(missing)}), capsys, f"checkpoint folder {missing} does not exist")
    assert not tiny.out_dir.exists()  # nothing written


def test_a_malformed_model_folder(tiny: TinySetup, capsys: pytest.CaptureFixture[str]) -> None:
    (tiny.model_dir / "config.json").write_text('{"model_type": "bert", "hidden_size": 16,')
    _fails(_train(tiny), capsys, "config.json", "not valid JSON", "line 1")


def test_a_model_folder_without_weights(tiny: TinySetup, capsys: pytest.CaptureFixture[str]) -> None:
    (tiny.model_dir / "model.safetensors").unlink()
    _fails(_train(tiny), capsys, "no weights: expected model.safetensors")


def test_a_model_of_another_kind(tiny: TinySetup, capsys: pytest.CaptureFixture[str]) -> None:
    (tiny.model_dir / "config.json").write_text(
        json.dumps({"model_type": "llama", "architectures": ["Llama"]})
    )
    _fails(_train(tiny), capsys, "unsupported model: model_type 'llama'")


def test_truncated_weights(tiny: TinySetup, capsys: pytest.CaptureFixture[str]) -> None:
    weights = tiny.model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    _fails(_train(tiny), capsys, "model.safetensors")


def test_a_config_with_errors(tiny: TinySetup, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(
        ["train", str(tiny.config_path), "lora.rnk=4"],
        capsys,
        "lora.rnk: unknown key",
        "valid keys in lora: r, alpha",
    )
    _fails(_train(tiny, lora={"r": "eight"}), capsys, "lora.r: Input should be a valid integer")
    _fails(["train", str(tiny.root / "none.yaml")], capsys, "none.yaml does not exist")
    _fails(["finetune", "training.epochs=-1"], capsys, "training.epochs: Input should be greater than 0")


def test_an_empty_data_set(tiny: TinySetup, capsys: pytest.CaptureFixture[str]) -> None:
    write_csv(tiny.train_csv, [])
    _fails(_train(tiny), capsys, "reviews.csv", "holds no examples")
    tiny.train_csv.write_text("")
    _fails(_train(tiny), capsys, "reviews.csv", "is empty")


def test_unlabeled_rows(tiny: TinySetup, capsys: pytest.CaptureFixture[str]) -> None:
    rows = sentences(20)
    write_csv(tiny.train_csv, [(t, "" if i % 5 == 0 else y) for i, (t, y) in enumerate(rows)])
    _fails(_train(tiny), capsys, "4 row(s) have an empty 'label' (unlabeled)")


def test_a_missing_label_column(tiny: TinySetup, capsys: pytest.CaptureFixture[str]) -> None:
    write_csv(tiny.train_csv, sentences(20), header=("text", "sentiment"))
    _fails(_train(tiny), capsys, "no column 'label'", "text, sentiment")
    assert main(["train", str(tiny.config(data={"label_column": "sentiment"})), "training.max_steps=1"]) == 0


def test_a_label_column_with_one_class(tiny: TinySetup, capsys: pytest.CaptureFixture[str]) -> None:
    write_csv(tiny.train_csv, [(t, "pos") for t, _ in sentences(30)])
    _fails(_train(tiny), capsys, "the label column 'label' has a single class ('pos')", "at least two")


def test_a_split_that_leaves_training_with_one_class(
    tiny: TinySetup, capsys: pytest.CaptureFixture[str]
) -> None:
    write_csv(tiny.train_csv, [("good film", "pos"), ("bad film", "neg")])
    _fails(_train(tiny, data={"split": [0.5, 0.5, 0.0]}), capsys, "(training split)", "single class")


def test_a_validation_file_with_a_label_training_lacks(
    tiny: TinySetup, capsys: pytest.CaptureFixture[str]
) -> None:
    val = write_csv(tiny.root / "val.csv", [("good", "pos"), ("meh", "neutral")])
    _fails(
        _train(tiny, data={"validation": str(val)}),
        capsys,
        "val.csv",
        "'neutral' is not one of the label names",
    )


def test_long_sequences_are_truncated_with_a_note(
    tiny: TinySetup, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = sentences(40, max_words=30)
    write_csv(tiny.train_csv, rows)
    assert main(["train", str(tiny.config_path), "data.max_length=8", "training.max_steps=2"]) == 0
    out = capsys.readouterr().out
    assert "train sentences are longer than 8 tokens" in out and "are truncated to 8" in out


def test_max_length_above_the_model_s_positions(tiny: TinySetup, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(tiny.config_path), "data.max_length=512", "training.max_steps=1"]) == 0
    assert "data.max_length 512 is above the model's maximum of 24 positions" in capsys.readouterr().out


def test_predict_eval_merge_on_a_run_that_is_not_there_or_not_finished(
    tiny: TinySetup, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tiny.root / "no-run"
    _fails(["predict", str(missing), "hi"], capsys, f"run directory {missing} does not exist")
    _fails(["eval", str(tiny.root)], capsys, "is not a run directory: it has no config.yaml")
    tiny.run_dir.mkdir(parents=True)
    (tiny.run_dir / "config.yaml").write_text((tiny.config_path).read_text())
    _fails(["predict", str(tiny.run_dir), "hi"], capsys, "the run did not finish")
    _fails(["merge", str(tiny.run_dir), str(tiny.root / "m")], capsys, "the run did not finish")


def test_eval_of_a_split_the_run_does_not_have(tiny: TinySetup, capsys: pytest.CaptureFixture[str]) -> None:
    val = write_csv(tiny.root / "val.csv", sentences(10, seed=1))
    assert main(["train", str(tiny.config(data={"validation": str(val)})), "training.max_steps=1"]) == 0
    capsys.readouterr()
    assert main(["eval", str(tiny.run_dir), "--split", "validation"]) == 0
    assert capsys.readouterr().out.startswith("validation: accuracy ")
    _fails(["eval", str(tiny.run_dir), "--split", "test"], capsys, "the run's data has no test split")
    with pytest.raises(SystemExit):
        main(["eval", str(tiny.run_dir), "--split", "dev"])


def test_quantize_and_info_on_bad_paths(tiny: TinySetup, capsys: pytest.CaptureFixture[str]) -> None:
    _fails(["quantize", str(tiny.root / "nope"), str(tiny.root / "q")], capsys, "does not exist")
    (tiny.root / "q").mkdir()
    (tiny.root / "q" / "x").write_text("")
    _fails(["quantize", str(tiny.model_dir), str(tiny.root / "q")], capsys, "not empty: pass --overwrite")
    _fails(["info", str(tiny.root / "nope")], capsys, "does not exist")
    _fails(["info", str(tiny.root / "q")], capsys, "neither a run directory")


def test_unknown_options_are_usage_errors(tiny: TinySetup, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", str(tiny.config_path), "--fast"])
    assert info.value.code == 2
    assert "unrecognized arguments: --fast" in capsys.readouterr().err


def test_an_existing_file_where_the_run_directory_goes(
    tiny: TinySetup, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny.out_dir.mkdir()
    Path(tiny.run_dir).write_text("")
    _fails(["train", str(tiny.config_path)], capsys, "is a file")
