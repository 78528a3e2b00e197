"""The demo really learns, is deterministic for a seed, and the CLI reports argument errors."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from entrenar.cli import main
from entrenar.demo import INSTALL_HINT, MLP, DemoConfig, load_digits_split, run_demo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_blas_thread() -> Iterator[None]:
    # The matrices are tiny and pytest-xdist already runs a worker per core: more BLAS threads than
    # cores only make the workers wait on each other.
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def test_demo_learns() -> None:
    lines: list[str] = []
    result = run_demo(DemoConfig(epochs=3), log=lines.append)
    losses = [e.train_loss for e in result.epochs]
    assert len(losses) == 3
    assert all(math.isfinite(v) for v in losses)
    assert losses[0] > losses[1] > losses[2], losses
    assert losses[0] < math.log(10)  # below the loss of a uniform guess already in the first epoch
    assert result.epochs[-1].train_acc > 0.9
    assert result.test_acc > 0.85, result.test_acc  # chance is 0.10
    assert result.n_train + result.n_test == 1797
    assert all(e.samples_per_s > 0 for e in result.epochs)
    assert sum(line.startswith("epoch ") for line in lines) == 3
    assert lines[-1].startswith("done in ")


def test_demo_is_deterministic_for_a_seed() -> None:
    def run(seed: int) -> list[tuple[float, float, float]]:
        r = run_demo(DemoConfig(epochs=1, hidden=32, seed=seed), log=None)
        return [(e.train_loss, e.train_acc, e.test_acc) for e in r.epochs]

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_split_is_stratified_and_disjoint() -> None:
    x_tr, y_tr, x_te, y_te = load_digits_split(np.random.default_rng(0))
    assert x_tr.dtype == np.float32 and y_tr.dtype == np.int64
    assert x_tr.shape[1] == x_te.shape[1] == 64
    assert len(x_tr) + len(x_te) == 1797
    train_rows = {r.tobytes() for r in x_tr}
    assert sum(r.tobytes() in train_rows for r in x_te) < 10  # a few digits are exact duplicates
    counts_tr = np.bincount(y_tr, minlength=10)
    counts_te = np.bincount(y_te, minlength=10)
    frac = counts_te / (counts_tr + counts_te)
    assert np.all(np.abs(frac - 0.2) < 0.01), frac


def test_init_matches_torch_linear_bounds() -> None:
    model = MLP(np.random.default_rng(0), (64, 128, 128, 10))
    shapes = [p.shape for p in model.params]
    assert shapes == [(128, 64), (128,), (128, 128), (128,), (10, 128), (10,)]
    for p in model.params:
        assert p.requires_grad and p.dtype == np.float32
    for w, b in zip(model.params[::2], model.params[1::2], strict=True):
        bound = 1 / math.sqrt(w.shape[1])
        assert np.abs(w.data).max() <= bound and np.abs(b.data).max() <= bound
        # uniform on [-bound, bound]: the std is bound / sqrt(3)
        assert abs(w.data.std() - bound / math.sqrt(3)) < 0.1 * bound


def test_cli_demo_prints_each_epoch_and_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--epochs", "2", "--hidden", "16", "--batch-size", "64", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "MLP 64-16-16-10" in out
    for k in (1, 2):
        line = re.search(rf"^epoch {k}/2 .*$", out, re.MULTILINE)
        assert line, out
        for field in ("loss", "train acc", "test acc", "samples/s"):
            assert field in line.group(0)
    assert re.search(r"^done in [0-9.]+ s: test accuracy [0-9.]+%", out, re.MULTILINE), out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--epochs", "0"], "--epochs: must be at least 1"),
        (["demo", "--epochs", "two"], "--epochs: expected a whole number"),
        (["demo", "--batch-size", "-4"], "--batch-size: must be at least 1"),
        (["demo", "--lr", "0"], "--lr: must be a positive number"),
        (["demo", "--lr", "nan"], "--lr: must be a positive number"),
        (["demo", "--momentum", "1"], "--momentum: must be in [0, 1)"),
        (["demo", "--hidden", "0"], "--hidden: must be at least 1"),
        (["demo", "--seed", "-1"], "--seed: must be 0 or more"),
        (["demo", "--bogus"], "unrecognized arguments: --bogus"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_cli_argument_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_without_a_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "demo" in capsys.readouterr().err


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "demo" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--epochs", "--batch-size", "--lr", "--hidden", "--seed"):
        assert option in out


def test_demo_without_scikit_learn_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # None in sys.modules makes `import sklearn...` raise ImportError, as if it were not installed.
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    assert main(["demo", "--epochs", "1"]) == 1
    err = capsys.readouterr().err
    assert "scikit-learn is not installed" in err
    assert INSTALL_HINT in err


def test_config_is_validated() -> None:
    for bad in ({"epochs": 0}, {"batch_size": 0}, {"lr": -0.1}, {"momentum": 1.0}, {"hidden": 0}):
        with pytest.raises(ValueError):
            DemoConfig(**bad)  # type: ignore[arg-type]


def test_python_dash_m_entrenar_runs_the_cli() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "entrenar", "demo", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert "--epochs" in res.stdout


def _readme_snippets() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", text, re.DOTALL)


def test_readme_has_snippets() -> None:
    assert len(_readme_snippets()) >= 3


@pytest.mark.parametrize("index", range(len(_readme_snippets()) if (ROOT / "README.md").exists() else 0))
def test_readme_snippet_runs(index: int) -> None:
    """Every ```python block of the README runs as written (the tour must not rot)."""
    code = _readme_snippets()[index]
    exec(compile(code, f"README.md snippet {index}", "exec"), {"__name__": f"readme_{index}"})
