"""scripts/mutants.py and scripts/mutate.py: which edits are made, what is left alone, the score."""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import covermap  # noqa: E402
import mutate  # noqa: E402
import mutation_results as results  # noqa: E402
from mutants import Mutant, apply, enumerate_mutants  # noqa: E402

SOURCE = '''"""Module docstring 1 + 2."""
__all__ = ["f"]


@decorate(1, shape=(2, 3))
def f(x: int = 0, y: "list[int] | None" = None) -> int:
    """Docstring with 0."""
    if x < 2 and y is not None:
        raise ValueError(f"x {x + 1} bad")
    x += 3 * x
    assert x != 0, "message"
    return -x if not y else x / 2.5
'''


def _mutated(tmp_path: Path) -> dict[str, str]:
    path = tmp_path / "m.py"
    path.write_text(SOURCE)
    return {f"{m.kind}:{m.label}": apply(SOURCE, m) for m in enumerate_mutants(path, "m.py")}


def test_the_operator_set_is_applied(tmp_path: Path) -> None:
    got = _mutated(tmp_path)
    expected = {
        "compare:Lt -> LtE": "if x <= 2 and y is not None:",
        "compare:IsNot -> Is": "if x < 2 and y is None:",
        "boolop:And -> Or": "if x < 2 or y is not None:",
        "negate:negate If condition": "if not (x < 2 and y is not None):",
        "negate:negate IfExp condition": "return -x if not not y else x / 2.5",
        "const:2 -> 3": "if x < 3 and",
        "aug:Add= -> Sub=": "x -= 3 * x",
        "arith:Mult -> Div": "x += 3 / x",
        "const:3 -> 4": "x += 4 * x",
        "unary:drop USub": "return x if not y else x / 2.5",
        "unary:drop Not": "return -x if y else x / 2.5",
        "arith:Div -> Mult": "else x * 2.5",
        "const:2.5 -> 5.0": "else x / 5.0",
        "return:return None": "return None",
    }
    for key, fragment in expected.items():
        assert key in got, f"missing mutant {key}; have {sorted(got)}"
        assert fragment in got[key], f"{key}: {fragment!r} not in\n{got[key]}"
    assert "const:0 -> 1" in got and "def f(x: int=1," in got["const:0 -> 1"]


def test_docstrings_annotations_decorators_raise_assert_and_all_are_left_alone(tmp_path: Path) -> None:
    for key, text in _mutated(tmp_path).items():
        tree = ast.parse(text)
        assert ast.get_docstring(tree) == "Module docstring 1 + 2.", key
        assert "@decorate(1, shape=(2, 3))" in text, key
        assert "raise ValueError(f'x {x + 1} bad')" in text, key
        assert "assert x != 0, 'message'" in text, key
        assert "__all__ = ['f']" in text, key
        assert "-> int:" in text and "x: int" in text, key


def test_enumeration_is_deterministic_and_stale_sites_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(SOURCE)
    first, second = enumerate_mutants(path, "m.py"), enumerate_mutants(path, "m.py")
    assert first == second and len({m.id for m in first}) == len(first)
    with pytest.raises(ValueError, match="no site 999"):
        apply(SOURCE, Mutant("m.py", 999, 1, "const", "x"))


def test_every_core_mutant_applies_to_valid_changed_code() -> None:
    mutants = mutate.all_mutants()
    assert {mutate.part_of(m) for m in mutants} == set(mutate.TESTS)
    for m in mutants[::151]:  # a spread across the files, kept fast
        src = (ROOT / m.file).read_text()
        assert ast.dump(ast.parse(apply(src, m))) != ast.dump(ast.parse(src)), m.id


def test_equivalent_list_needs_a_reason_per_line(tmp_path: Path) -> None:
    good = tmp_path / "eq.txt"
    good.write_text("# header\n\nsrc/a.py:1:0:const  # 0.0 and -0.0 compare equal here\n")
    assert mutate.read_equivalent(good) == {"src/a.py:1:0:const": "0.0 and -0.0 compare equal here"}
    bad = tmp_path / "bad.txt"
    bad.write_text("src/a.py:1:0:const\n")
    with pytest.raises(ValueError, match=r"bad.txt:1: expected"):
        mutate.read_equivalent(bad)
    assert mutate.read_equivalent(mutate.EQUIVALENT).keys() <= {m.id for m in mutate.all_mutants()}


def test_score_and_gate(capsys: pytest.CaptureFixture[str]) -> None:
    ms = [Mutant("src/entrenar/ops/x.py", i, 1, "const", "0 -> 1") for i in range(5)]
    outcomes = ["killed", "killed", "timeout", "killed", "survived"]
    assert mutate.report(list(zip(ms, outcomes, strict=True)), 80.0, 1.0) == 0
    assert "80.0%" in capsys.readouterr().out
    assert mutate.report(list(zip(ms, ["survived"] * 2 + ["killed"] * 3, strict=True)), 80.0, 1.0) == 1


# --- coverage-guided selection (scripts/covermap.py) ---------------------------------------------------

FACTS_SOURCE = '''import numba

SCALE = 2 * 3


class C:
    size = 4

    def method(self, x=1 + 1):
        y = (x +
             2)
        if y > 3:
            return y
        return -y


def one_line(x): return x + 1


@numba.njit(cache=True)
def kernel(a):
    return a * 2
'''


def test_source_facts_spans_import_time_and_jitted_lines() -> None:
    facts = covermap.SourceFacts(FACTS_SOURCE)
    assert list(facts.span(11)) == [10, 11]  # a statement over two lines: coverage may name either
    assert list(facts.span(12)) == [12]  # an `if` header only, not its body
    assert list(facts.span(99)) == [99]  # no statement there: the line itself
    for line in (3, 7, 9, 17):  # module level, class body, a def's defaults, a one-line def
        assert facts.at_import(facts.span(line)), line
    for line in (10, 12, 13, 14, 22):
        assert not facts.at_import(facts.span(line)), line
    assert facts.jitted(facts.span(22)) and not facts.jitted(facts.span(13))


@given(st.integers(min_value=1, max_value=30))
def test_a_span_always_holds_its_line(line: int) -> None:
    assert line in covermap.SourceFacts(FACTS_SOURCE).span(line)


def _raw_map(lines: dict[str, list[int]], fixture: dict[str, list[str]] | None = None,
             at_import: list[int] | None = None) -> dict[str, Any]:
    nodes = ["tests/a.py::slow", "tests/a.py::fast", "tests/b.py::mid"]
    return {"version": covermap.VERSION, "hash": "x", "tests": [], "seconds": 0.0, "nodes": nodes,
            "durations": {"tests/a.py::slow": 3.0, "tests/a.py::fast": 0.1, "tests/b.py::mid": 1.0},
            "lines": {"src/m.py": lines}, "fixture_lines": {"src/m.py": fixture or {}},
            "import_lines": {"src/m.py": at_import or []}}


def test_map_lookup_is_fastest_first_and_whole_files_absorb_their_tests() -> None:
    cmap = covermap.CoverageMap(_raw_map({"5": [0, 2], "6": [1]}, {"7": ["tests/b.py"]}, [9]))
    assert cmap.tests_for("src/m.py", range(5, 7)) == (
        ["tests/a.py::fast", "tests/b.py::mid", "tests/a.py::slow"], [], False)
    assert cmap.tests_for("src/m.py", range(5, 8)) == (
        ["tests/a.py::fast", "tests/a.py::slow"], ["tests/b.py"], False)
    assert cmap.tests_for("src/m.py", range(8, 10)) == ([], [], True)
    assert cmap.tests_for("src/other.py", range(1, 3)) == ([], [], False)


def _fake_repo(tmp_path: Path) -> Path:
    """A tiny package named entrenar with a function per test, a module constant and a module fixture."""
    (tmp_path / "src" / "entrenar").mkdir(parents=True)
    (tmp_path / "tests").mkdir()
    (tmp_path / "pyproject.toml").write_text("[tool.pytest.ini_options]\naddopts = ''\n")
    (tmp_path / "src" / "entrenar" / "__init__.py").write_text("")
    (tmp_path / "src" / "entrenar" / "fake.py").write_text(
        "LIMIT = 3\n\n\ndef f(x):\n    return x + 1\n\n\ndef g(x):\n    return x * LIMIT\n\n\n"
        "def h():\n    return 7\n\n\ndef never():\n    return 0\n")
    (tmp_path / "tests" / "test_fake.py").write_text(
        "import pytest\nfrom entrenar.fake import f, g, h\n\n\n@pytest.fixture(scope='module')\n"
        "def seven():\n    return h()\n\n\ndef test_f():\n    assert f(1) == 2\n\n\n"
        "@pytest.mark.parametrize('x', [1, 2])\ndef test_g(x):\n    assert g(x) == 3 * x\n\n\n"
        "def test_seven(seven):\n    assert seven == 7\n")
    return tmp_path


def test_the_map_records_which_test_runs_each_line(tmp_path: Path) -> None:
    root = _fake_repo(tmp_path)
    out = root / "out" / "map.json"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "covermap.py"), "--root", str(root),
                           "--out", str(out), "tests/test_fake.py"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    cmap = covermap.load(out, root)
    assert cmap is not None
    fake = "src/entrenar/fake.py"
    assert cmap.tests_for(fake, range(5, 6)) == (["tests/test_fake.py::test_f"], [], False)
    ids, files, _ = cmap.tests_for(fake, range(9, 10))
    assert sorted(ids) == ["tests/test_fake.py::test_g[1]", "tests/test_fake.py::test_g[2]"] and not files
    assert cmap.tests_for(fake, range(13, 14)) == ([], ["tests/test_fake.py"], False)  # in a fixture
    assert cmap.tests_for(fake, range(1, 2))[2]  # module level: import time
    assert cmap.tests_for(fake, range(17, 18)) == ([], [], False)  # no test reaches it
    (root / "tests" / "test_fake.py").write_text("def test_nothing():\n    pass\n")
    assert covermap.load(out, root) is None  # the tests changed: the map is stale


def test_a_failing_test_refuses_the_map(tmp_path: Path) -> None:
    root = _fake_repo(tmp_path)
    (root / "tests" / "test_bad.py").write_text("def test_bad():\n    assert False\n")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "covermap.py"), "--root", str(root),
                           "--out", "m.json", "tests"], capture_output=True, text=True, check=False)
    assert done.returncode == 1 and "test_bad.py::test_bad" in done.stderr
    assert not (root / "m.json").exists()


def test_a_snapshot_holds_sources_tests_and_config_without_caches(tmp_path: Path) -> None:
    root = _fake_repo(tmp_path / "repo")
    (root / "src" / "entrenar" / "__pycache__").mkdir()
    (root / "src" / "entrenar" / "__pycache__" / "fake.cpython-311.pyc").write_bytes(b"\0")
    (root / "tests" / ".hypothesis").mkdir()
    tree = mutate.snapshot(tmp_path / "snap", root)
    assert covermap.tree_hash(tree) == covermap.tree_hash(root)
    assert (tree / "pyproject.toml").read_text() == (root / "pyproject.toml").read_text()
    assert not (tree / "src" / "entrenar" / "__pycache__").exists()
    assert not (tree / "tests" / ".hypothesis").exists()


def test_tree_hash_follows_content_not_caches(tmp_path: Path) -> None:
    root = _fake_repo(tmp_path)
    before = covermap.tree_hash(root)
    (root / "src" / "entrenar" / "__pycache__").mkdir()
    (root / "src" / "entrenar" / "__pycache__" / "fake.cpython-311.pyc").write_bytes(b"\0")
    assert covermap.tree_hash(root) == before
    (root / "src" / "entrenar" / "fake.py").write_text("LIMIT = 4\n")
    assert covermap.tree_hash(root) != before


def test_selector_runs_covering_tests_and_falls_back_to_stage_files() -> None:
    file = "src/entrenar/ops/dims.py"
    mutants = mutate.all_mutants()
    facts = covermap.SourceFacts((ROOT / file).read_text())
    in_body = next(m for m in mutants if m.file == file and not facts.at_import(facts.span(m.line)))
    at_import = next((m for m in mutants if m.file == file and facts.at_import(facts.span(m.line))), None)
    raw = _raw_map({str(n): [1] for n in facts.span(in_body.line)})
    raw["lines"] = {file: raw["lines"]["src/m.py"]}
    selector = mutate.Selector(covermap.CoverageMap(raw))
    job = selector.job(in_body)
    assert (job.via, job.runs, job.fallback) == ("coverage", [["tests/a.py::fast"]], mutate.stages(in_body))
    other = next(m for m in mutants if m.file == file and m.line not in facts.span(in_body.line)
                 and not facts.at_import(facts.span(m.line)))
    assert (selector.job(other).via, selector.job(other).runs) == ("uncovered", mutate.stages(other))
    if at_import is not None:
        assert selector.job(at_import).via == "import"
    assert mutate.Selector(None).job(in_body).runs == mutate.stages(in_body)


def test_runner_falls_back_when_named_tests_are_gone_and_names_the_killer(tmp_path: Path) -> None:
    (tmp_path / "test_ok.py").write_text("def test_ok():\n    pass\n")
    (tmp_path / "test_no.py").write_text("def test_no():\n    assert False\n")
    src = tmp_path / "w0" / "src"
    src.mkdir(parents=True)
    runner = mutate.Runner([src], timeout=60.0)
    gone = [str(tmp_path / "test_ok.py::test_renamed")]
    runner.start(mutate.Job(None, [gone], via="coverage", fallback=[[str(tmp_path / "test_ok.py")]]))
    job, outcome, _, killer = runner.wait_one()
    assert (outcome, job.via, killer) == ("passed", "stages", None) and job.cpu > 0
    runner.start(mutate.Job(None, [[str(tmp_path / "test_ok.py")], [str(tmp_path / "test_no.py")]]))
    job, outcome, _, killer = runner.wait_one()
    assert outcome == "failed" and killer is not None and killer.endswith("test_no.py::test_no")


def test_the_timeout_counts_cpu_seconds_not_waiting(tmp_path: Path) -> None:
    (tmp_path / "test_wait.py").write_text("import time\n\ndef test_wait():\n    time.sleep(6)\n")
    (tmp_path / "test_spin.py").write_text("def test_spin():\n    while True:\n        pass\n")
    src = tmp_path / "w0" / "src"
    src.mkdir(parents=True)
    # 4 CPU-s: pytest's start-up in the child (slower under coverage, in `make test`) stays well below
    runner = mutate.Runner([src], timeout=4.0)
    runner.start(mutate.Job(None, [[str(tmp_path / "test_wait.py")]]))
    assert runner.wait_one()[1] == "passed"  # 6 s asleep: longer than the timeout, but no CPU
    runner.start(mutate.Job(None, [[str(tmp_path / "test_spin.py")]]))
    job, outcome, seconds, _ = runner.wait_one()
    assert outcome == "timeout" and job.cpu >= 3.0 and seconds < 4.0 * mutate.WALL_FACTOR


# --- results, shards, reports (scripts/mutation_results.py) ---------------------------------------------

def _rec(i: int, status: str, file: str = "src/entrenar/ops/x.py", via: str = "coverage") -> dict[str, Any]:
    return {"id": f"{file}:{i}:{i}:const", "file": file, "part": file.split("/")[2], "line": i,
            "label": "0 -> 1", "source": f"y = {i}", "file_hash": "h", "status": status,
            "seconds": float(i), "via": via, "tests": 1, "killed_by": None}


def test_results_append_merge_and_resume_after_a_cut_line(tmp_path: Path) -> None:
    path = tmp_path / "r" / "a.jsonl"
    results.append(path, _rec(1, "survived"))
    results.append(path, _rec(2, "killed"))
    results.append(path, _rec(1, "killed"))  # a rerun of the same mutant replaces the earlier line
    with path.open("a") as f:
        f.write('{"id": "cut sh')  # a run stopped mid-line
    merged = results.read([path, tmp_path / "missing.jsonl"])
    assert {r["line"]: r["status"] for r in merged.values()} == {1: "killed", 2: "killed"}
    with path.open("a") as f:
        f.write("\n" + json.dumps(_rec(3, "killed")) + "\n")
    with pytest.raises(ValueError, match=r"a.jsonl:4: not a JSON object"):
        results.read([path])
    with pytest.raises(ValueError, match="status in"):
        results.append(path, {**_rec(4, "killed"), "status": "maybe"})


def test_report_scores_modules_and_parts_and_lists_survivors() -> None:
    recs = [_rec(1, "killed"), _rec(2, "timeout"), _rec(3, "survived", via="uncovered"),
            _rec(4, "survived", "src/entrenar/optim/sgd.py"), _rec(5, "killed", "src/entrenar/optim/sgd.py")]
    text = "\n".join(results.report_lines({r["id"]: r for r in recs}))
    assert re.search(r"ops/x.py\s+3\s+1\s+1\s+1\s+66.7%", text), text
    assert re.search(r"\noptim\s+2\s+1\s+0\s+1\s+50.0%", text), text
    assert re.search(r"total\s+5\s+2\s+60.0%", text), text
    assert f" *{_rec(3, '')['id']}  0 -> 1   | y = 3" in text
    assert f"  {_rec(4, '', 'src/entrenar/optim/sgd.py')['id']}" in text
    assert "median 3.0, p90 4.6" in text and "CPU seconds" not in text
    recs[0]["cpu_seconds"] = 2.5
    assert "CPU seconds per mutant: median 2.5" in "\n".join(results.report_lines({r["id"]: r for r in recs}))
    assert results.score([]) == (0, 0, 100.0)


def test_a_resumed_run_skips_unchanged_modules_and_retries_survivors_of_changed_tests(tmp_path: Path) -> None:
    module = tmp_path / "src" / "entrenar" / "ops" / "x.py"
    module.parent.mkdir(parents=True)
    module.write_text("y = 1\n")
    h = results.file_hash(module)
    recs = {r["id"]: {**r, "file_hash": h, "tests_hash": "t0"} for r in
            (_rec(1, "killed"), _rec(2, "survived"), _rec(3, "timeout"))}
    recs["gone"] = {**_rec(4, "killed", "src/entrenar/ops/gone.py"), "id": "gone"}
    assert mutate.already_done(recs, tmp_path, "t0") == {_rec(i, "")["id"] for i in (1, 2, 3)}
    assert mutate.already_done(recs, tmp_path, "t1") == {_rec(i, "")["id"] for i in (1, 3)}
    module.write_text("y = 2\n")
    assert mutate.already_done(recs, tmp_path, "t0") == set()


def test_compare_counts_agreement_and_lists_differences() -> None:
    a = {r["id"]: r for r in (_rec(1, "killed"), _rec(2, "survived"), _rec(3, "killed"), _rec(7, "killed"))}
    b = {r["id"]: r for r in (_rec(1, "timeout"), _rec(2, "survived"), _rec(3, "survived"))}
    text = "\n".join(results.compare_lines(a, b, ("cov", "stages")))
    assert "3 mutants in both (4 in cov, 3 in stages)" in text and "same verdict: 2 of 3" in text
    assert f"differs: {_rec(3, '')['id']}  cov killed, stages survived" in text
    assert "cov: score 66.7% (1 survived); seconds per mutant median 2.0" in text


@given(st.lists(st.integers(), max_size=40), st.integers(min_value=1, max_value=7))
def test_shards_partition_the_sorted_list(items: list[int], n: int) -> None:
    shards = [items[k - 1::n] for k in (mutate.parse_shard(f"{k}/{n}")[0] for k in range(1, n + 1))]
    assert sorted(x for s in shards for x in s) == sorted(items)
    assert sum(map(len, shards)) == len(items)


@pytest.mark.parametrize("bad", ["0/3", "4/3", "3", "a/b", "1/0"])
def test_a_bad_shard_is_refused(bad: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="K/N"):
        mutate.parse_shard(bad)


def test_report_mode_merges_files_and_gates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for i in range(4):
        results.append(a, _rec(i, "killed"))
    results.append(b, _rec(9, "survived"))
    assert mutate.main(["--report", str(a), str(b)]) == 0  # 4 of 5 killed: 80%, the gate holds
    assert "80.0% (meets" in capsys.readouterr().out
    assert mutate.main(["--report", str(a), str(b), "--min-score", "90"]) == 1
