"""predict, eval, merge, quantize, info and init on a finished tiny run, each held to an independent
computation of what it should print or write."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from tiny_run import TinySetup, write_model

from entrenar.cli import main
from entrenar.config import RunConfig, default_config_text, load_config
from entrenar.finetune import load_run, load_splits
from entrenar.finetune.model import SequenceClassifier, read_head
from entrenar.finetune.quantized import load_quantized
from entrenar.io import load_safetensors, read_safetensors_header
from entrenar.models import from_pretrained, load_tokenizer, save_pretrained
from entrenar.quant import QuantLinear, quantize

SENTENCES = ["the movie was great fun", "a dull and boring plot", "acting"]


def test_predict_prints_the_label_and_probability_of_each_sentence(
    finished: TinySetup, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["predict", str(finished.run_dir), *SENTENCES, "--all"]) == 0
    lines = capsys.readouterr().out.splitlines()
    probabilities = load_run(finished.run_dir).predict(SENTENCES)
    assert len(lines) == 3
    for line, text, p in zip(lines, SENTENCES, probabilities, strict=True):
        label, prob, shown, *every = line.split("\t")
        names = ("neg", "pos")
        assert (label, shown) == (names[int(p.argmax())], text)
        assert float(prob) == pytest.approx(p.max(), abs=1e-4)
        assert every == [f"neg={p[0]:.4f}", f"pos={p[1]:.4f}"]
        assert p.sum() == pytest.approx(1.0)


def test_predict_reads_stdin_when_no_sentence_is_given(
    finished: TinySetup, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("the plot was good\n\nvery bad\n"))
    assert main(["predict", str(finished.run_dir)]) == 0
    assert [line.split("\t")[2] for line in capsys.readouterr().out.splitlines()] == [
        "the plot was good",
        "very bad",
    ]


def test_eval_reproduces_the_run_s_own_test_accuracy(
    finished: TinySetup, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["eval", str(finished.run_dir), "--split", "test"]) == 0
    out = capsys.readouterr().out
    after = json.loads((finished.run_dir / "results.json").read_text())["after"]["test"]
    n = len(load_splits(load_config(finished.run_dir / "config.yaml").data).test)
    assert out.startswith(
        f"test: accuracy {100 * after['accuracy']:.2f}% ({round(after['accuracy'] * n)} of {n})"
    )
    assert f"loss {after['loss']:.4f}" in out


def test_the_loaded_run_computes_what_training_ended_with(finished: TinySetup) -> None:
    run = load_run(finished.run_dir)
    head, pooling, labels = read_head(finished.run_dir / "head.safetensors", 16)
    assert (pooling, labels) == ("mean", ("neg", "pos"))
    np.testing.assert_array_equal(run.model.classifier.weight.data, head["weight"])
    # the last checkpoint holds the same trainable weights the adapter and head files were written from
    ck = load_safetensors(finished.run_dir / "checkpoints" / "step-12" / "model.safetensors")
    ours = dict(run.model.named_parameters())
    assert ck.keys() <= ours.keys()
    for k, v in ck.items():
        np.testing.assert_array_equal(ours[k].data, v, err_msg=k)


def _pooled(model: SequenceClassifier, tokenizer_dir: Path) -> np.ndarray:
    ids, mask = load_tokenizer(tokenizer_dir).encode_batch(SENTENCES, max_length=16)
    model.eval()
    return model(ids, mask).data


@pytest.mark.parametrize("onto", ["dequantized", "original"])
def test_merge_writes_a_plain_checkpoint_that_computes_the_run(
    finished: TinySetup, tmp_path: Path, onto: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "merged"
    assert main(["merge", str(finished.run_dir), str(out), "--onto", onto]) == 0
    assert {"config.json", "model.safetensors", "head.safetensors", "tokenizer.json"} <= {
        p.name for p in out.iterdir()
    }
    encoder = from_pretrained(out)
    head, pooling, labels = read_head(out / "head.safetensors", encoder.config.hidden_size)
    merged = SequenceClassifier(encoder, 16, len(labels), pooling, generator=np.random.default_rng(0))
    merged.classifier.load_state_dict(head)
    run = load_run(finished.run_dir)
    got, want = _pooled(merged, out), _pooled(run.model, finished.model_dir)
    if onto == "dequantized":  # the 4-bit weights the adapter trained against: the same function
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    else:  # the original float weights: off by the 4-bit rounding only
        assert np.abs(got - want).max() < 0.5 and not np.allclose(got, want, atol=1e-6)
    assert main(["merge", str(finished.run_dir), str(out)]) == 2  # not empty now
    assert "--overwrite" in capsys.readouterr().err


def test_quantize_packs_the_linear_weights_and_loads_back(
    tiny: TinySetup, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tiny.root / "q4"
    assert main(["quantize", str(tiny.model_dir), str(out), "--block-size", "16"]) == 0
    assert "quantized 13 weights (nf4, blocks of 16, double quant)" in capsys.readouterr().out
    infos, meta = read_safetensors_header(out / "model.safetensors")
    assert meta["format"] == "entrenar-4bit" and meta["kind"] == "nf4" and meta["block_size"] == "16"
    key = "encoder.layer.0.attention.self.query.weight"
    assert infos[f"{key}.q4.data"].dtype == "U8" and infos[f"{key}.q4.data"].shape == (16 * 16 // 2,)
    assert infos[f"{key}.q4.absmax_codes"].shape == (16,) and "embeddings.word_embeddings.weight" in infos
    float_model = from_pretrained(tiny.model_dir)
    model = load_quantized(out)
    layer = model.encoder.layer[0].attention.self.query
    assert isinstance(layer, QuantLinear)
    expected = quantize(float_model.encoder.layer[0].attention.self.query.weight.data, "nf4", 16, True)
    np.testing.assert_array_equal(layer.dequantize_weight(), expected.dequantize())  # no second rounding
    np.testing.assert_array_equal(
        layer.bias.data, float_model.encoder.layer[0].attention.self.query.bias.data
    )
    ids, mask = load_tokenizer(out).encode_batch(SENTENCES, max_length=16)
    a, b = model(ids, mask).last_hidden_state.data, float_model(ids, mask).last_hidden_state.data
    assert np.abs(a - b).max() < 0.5 and not np.array_equal(a, b)  # 4-bit rounding, nothing worse


def test_quantize_int4_without_double_quant(tiny: TinySetup) -> None:
    out = tiny.root / "q4"
    assert main(["quantize", str(tiny.model_dir), str(out), "--kind", "int4", "--no-double-quant"]) == 0
    infos, meta = read_safetensors_header(out / "model.safetensors")
    assert meta["kind"] == "int4" and meta["double_quant"] == "false"
    assert "encoder.layer.1.output.dense.weight.q4.absmax" in infos
    assert load_quantized(out).encoder.layer[1].output.dense.kind == "int4"


def test_info_on_a_checkpoint_a_4bit_folder_and_a_run(
    finished: TinySetup, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    total = sum(p.data.size for p in from_pretrained(finished.model_dir).parameters())
    assert main(["info", str(finished.model_dir)]) == 0
    out = capsys.readouterr().out
    assert "BERT: 2 layers, hidden 16, 2 heads, FFN 32 (gelu)" in out
    assert f"parameters: {total:,d} total, {total:,d} trainable (100.0000%)" in out
    assert f"by dtype: F32 {4 * total:,d} B" in out

    assert main(["quantize", str(finished.model_dir), str(tmp_path / "q")]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "q")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("4-bit checkpoint:") and f"parameters: {total:,d} total" in out and "U8 " in out

    assert main(["info", str(finished.run_dir)]) == 0
    out = capsys.readouterr().out
    trainable = 2 * 2 * (4 * 16 + 16 * 4) + (2 * 16 + 2)  # A and B of query, value in 2 layers; the head
    share = 100 * trainable / (total + trainable)
    assert f"parameters: {total + trainable:,d} total, {trainable:,d} trainable ({share:.4f}%)" in out
    assert "status: finished, last checkpoint at step 12" in out and "labels: neg, pos" in out


def test_info_on_a_sharded_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = from_pretrained(write_model(tmp_path / "single"))
    save_pretrained(model, tmp_path / "sharded", max_shard_bytes=4000)
    assert len(list((tmp_path / "sharded").glob("model-*.safetensors"))) > 2
    total = sum(p.data.size for p in model.parameters())
    assert main(["info", str(tmp_path / "sharded")]) == 0
    assert f"parameters: {total:,d} total" in capsys.readouterr().out


def test_init_writes_the_default_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mine.yaml"
    assert main(["init", str(path)]) == 0
    assert path.read_text() == default_config_text() and "# " in path.read_text()
    assert load_config(path) == RunConfig()
    assert main(["init", str(path)]) == 2
    assert "already exists: pass --force" in capsys.readouterr().err
    path.write_text("lora: {r: 3}\n")
    assert main(["init", str(path), "--force"]) == 0
    assert yaml.safe_load(path.read_text())["lora"]["r"] == 8
    assert main(["init", str(tmp_path)]) == 2  # a folder


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ([], ["finetune", "train", "predict", "eval", "merge", "quantize", "info", "init", "demo"]),
        (["finetune"], ["KEY=VALUE", "--resume", "--overwrite", "NF4", "BEFORE", "lora.r=16"]),
        (["train"], ["CONFIG.yaml", "KEY=VALUE", "--resume", "--overwrite", "unknown keys are errors"]),
        (["predict"], ["RUN_DIR", "SENTENCE", "stdin", "--all"]),
        (["eval"], ["RUN_DIR", "--split", "{train,validation,test}", "(default: test)"]),
        (["merge"], ["RUN_DIR", "OUT_DIR", "--onto", "(default: dequantized)", "--overwrite"]),
        (["quantize"], ["CHECKPOINT_DIR", "OUT", "--kind", "(default: nf4)", "--block-size", "(default: 64)",
                        "--double-quant", "--no-double-quant", "(default: True)"]),
        (["info"], ["PATH", "run directory", "bytes"]),
        (["init"], ["PATH", "(default: entrenar.yaml)", "--force"]),
        (["demo"], ["--epochs", "(default: 10)", "--seed"]),
    ],
)  # fmt: skip
def test_help_of_every_command(
    command: list[str], expected: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in expected:
        assert text in out, text
