"""bench/compare.py: the regression rule, the baseline file's checks, and the command's exit status."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_compare", ROOT / "bench" / "compare.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_compare"] = mod
    spec.loader.exec_module(mod)
    return mod


compare = _load()


@given(st.floats(0.01, 100.0), st.floats(0.0, 300.0), st.floats(0.0, 0.5))
def test_regressed_exactly_when_more_than_tolerance_worse(base: float, fresh: float, tol: float) -> None:
    row = compare.Row("b.asis", base, fresh, tol)
    assert (row.verdict == "REGRESSED") == (fresh > base * (1 + tol))
    assert (row.verdict == "improved") == (fresh < base * (1 - tol))


def test_boundaries_and_missing() -> None:
    assert compare.Row("k", 1.0, 1.05, 0.05).verdict == "ok"
    assert compare.Row("k", 1.0, 1.0501, 0.05).verdict == "REGRESSED"
    assert compare.Row("k", 1.0, None, 0.05).verdict == "missing"
    assert compare.Row("k", 2.0, 2.2, 0.05).change == pytest.approx(0.1)
    rows = compare.compare({"a.asis": 1.0, "b.asis": 2.0}, {"a.asis": 0.5}, 0.05)
    assert [(r.key, r.verdict) for r in rows] == [("a.asis", "improved"), ("b.asis", "missing")]
    table = compare.format_table(rows)
    assert "improved" in table and "missing" in table and "-50.0%" in table


def test_the_committed_baseline_is_valid() -> None:
    ratios, tol = compare.load_baseline(ROOT / "bench" / "baseline.json")
    assert tol == pytest.approx(0.05)
    assert {k.split(".")[0] for k in ratios} <= set(compare.BENCHES)
    assert {k.split(".")[1] for k in ratios} <= set(compare.LABELS)


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        ({"ratios": {}}, "expected"),
        ({"ratios": {"mlp.asis": -1.0}}, "mlp.asis"),
        ({"ratios": {"mlp.asis": True}}, "mlp.asis"),
        ({"ratios": {"mlp.asis": 1.0}, "tolerance": 2}, "tolerance"),
        ([1, 2], "expected"),
    ],
)
def test_bad_baselines_are_rejected_by_name(tmp_path: Path, payload: object, needle: str) -> None:
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=needle):
        compare.load_baseline(path)
    with pytest.raises(ValueError, match="cannot read"):
        compare.load_baseline(tmp_path / "absent.json")


def test_update_then_compare_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    results.mkdir()
    (results / "mlp.asis.json").write_text(json.dumps({"ratio": 1.0}))
    (results / "overhead.unset.json").write_text(json.dumps({"ratio": 0.3}))
    monkeypatch.setattr(compare, "RESULTS_DIR", results)
    monkeypatch.setattr(compare, "BASELINE", tmp_path / "baseline.json")
    assert compare.main(["--update"]) == 0
    assert json.loads((tmp_path / "baseline.json").read_text())["ratios"] == {
        "mlp.asis": 1.0, "overhead.unset": 0.3}
    assert compare.main([]) == 0
    (results / "mlp.asis.json").write_text(json.dumps({"ratio": 1.2}))
    assert compare.main([]) == 1
    assert "REGRESSED" in capsys.readouterr().out
    assert compare.main(["--run", "nosuch"]) == 2
