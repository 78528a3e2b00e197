"""Which tests execute which lines of entrenar: the coverage map that lets scripts/mutate.py run, for
each mutant, only the tests that reach its line (the test selection mutmut and cosmic-ray do).

One instrumented pytest run (coverage.py, the context switched to the test's node id at each phase)
gives, for every line of src/entrenar, the tests that executed it:

    map[file][line] = tests whose call phase ran the line            (run by node id)
                    + test *files* whose setup or teardown ran it     (fixtures of wider scope run
                                                                        once per file: the whole file)
    import[file]    = lines run outside any test (collection, module level): every test sees their
                      effect, so a mutant there needs its part's whole test files.

The map is saved as JSON (atomic write) with `hash` = SHA-256 of every file under src/ and tests/;
`load` returns None for a map whose hash differs from the tree's, so a stale map is never used.

Usage (a child process of mutate.py, or by hand):
  python scripts/covermap.py --out mutation-results/covermap.json tests/test_tape.py tests/optim ...
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
VERSION = 1
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache"}
PYTEST_ARGS = ["-q", "--no-header", "-p", "no:cacheprovider", "-o", "addopts=", "--hypothesis-seed=0"]


def tree_hash(root: Path = ROOT, dirs: tuple[str, ...] = ("src", "tests")) -> str:
    """SHA-256 over the relative path and bytes of every file under `dirs` (caches and .pyc skipped)."""
    h = hashlib.sha256()
    for d in dirs:
        base = root / d
        files = sorted(p for p in base.rglob("*") if p.is_file() and not p.name.endswith(".pyc")
                       and not SKIP_DIRS.intersection(p.relative_to(root).parts)
                       and not any(part.endswith(".egg-info") for part in p.parts))
        for p in files:
            h.update(str(p.relative_to(root)).encode())
            h.update(b"\0")
            h.update(p.read_bytes())
            h.update(b"\0")
    return h.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the map is an ordinary artifact
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class CoverageMap:
    """The loaded map: `tests_for(file, lines)` -> (node ids, whole test files, runs at import?)."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.nodes: list[str] = raw["nodes"]
        self.durations: dict[str, float] = raw["durations"]
        self.lines: dict[str, dict[str, list[int]]] = raw["lines"]
        self.fixture_lines: dict[str, dict[str, list[str]]] = raw["fixture_lines"]
        self.import_lines: dict[str, set[int]] = {f: set(v) for f, v in raw["import_lines"].items()}

    def tests_for(self, file: str, lines: range) -> tuple[list[str], list[str], bool]:
        """Node ids (fastest first) and test files that run any of `lines` of `file` (repo-relative), and
        whether one of the lines runs at import time."""
        ids: set[int] = set()
        files: set[str] = set()
        for n in lines:
            ids.update(self.lines.get(file, {}).get(str(n), []))
            files.update(self.fixture_lines.get(file, {}).get(str(n), []))
        at_import = bool(self.import_lines.get(file, set()).intersection(lines))
        names = [self.nodes[i] for i in ids if self.nodes[i].split("::")[0] not in files]
        names.sort(key=lambda t: (self.durations.get(t, 0.0), t))
        return names, sorted(files), at_import


JIT_DECORATORS = ("jit", "njit", "vectorize", "guvectorize", "stencil", "cfunc")


class SourceFacts:
    """What coverage cannot say about a module's lines, read from its syntax tree.

    span(line)     the lines of the innermost statement holding `line` (a compound statement: its
                   header only), which coverage may record under any of them;
    at_import(ls)  some line runs when the module is imported: module level, class bodies, `def`
                   headers with their defaults; every test sees the effect;
    jitted(ls)     some line is inside a numba-compiled function, which coverage never sees run.
    """

    def __init__(self, source: str) -> None:
        tree = ast.parse(source)
        self.stmts: list[tuple[int, int]] = []
        self.bodies: list[tuple[int, int]] = []
        self.jit: list[tuple[int, int]] = []
        for node in ast.walk(tree):
            if isinstance(node, ast.stmt):
                end = node.end_lineno or node.lineno
                children = [c for f in ("body", "orelse", "finalbody", "handlers")
                            for c in getattr(node, f, []) if isinstance(c, ast.stmt | ast.excepthandler)]
                if children:  # a compound statement: its header runs on its own
                    end = max(node.lineno, min(c.lineno for c in children) - 1)
                self.stmts.append((node.lineno, end))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                first = node.body[0].lineno
                if first > node.lineno:  # a one-line def keeps its body with its defaults: import time
                    self.bodies.append((first, node.end_lineno or first))
                names = {n.id if isinstance(n, ast.Name) else n.attr for d in node.decorator_list
                         for n in ast.walk(d) if isinstance(n, ast.Name | ast.Attribute)}
                if names.intersection(JIT_DECORATORS):
                    self.jit.append((node.lineno, node.end_lineno or node.lineno))

    def span(self, line: int) -> range:
        holding = [(a, b) for a, b in self.stmts if a <= line <= b]
        if not holding:
            return range(line, line + 1)
        a, b = max(holding, key=lambda ab: (ab[0], -ab[1]))
        return range(a, b + 1)

    def at_import(self, lines: range) -> bool:
        return any(not any(a <= n <= b for a, b in self.bodies) for n in lines)

    def jitted(self, lines: range) -> bool:
        return any(a <= n <= b for a, b in self.jit for n in lines)


def load(path: Path, root: Path = ROOT) -> CoverageMap | None:
    """The map at `path` if it exists, has this script's format and matches the tree's hash; else None."""
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if raw.get("version") != VERSION or raw.get("hash") != tree_hash(root):
        return None
    return CoverageMap(raw)


class _Recorder:
    """pytest plugin: switches coverage's context to '<node id>|<phase>' and sums each test's time."""

    def __init__(self, cov: Any) -> None:
        self.cov = cov
        self.durations: dict[str, float] = defaultdict(float)
        self.failed: list[str] = []

    def _switch(self, item: Any, phase: str) -> None:
        self.cov.switch_context(f"{item.nodeid}|{phase}")

    # tryfirst: before pytest's own hooks of the same name, so that fixtures count for the new context
    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: Any) -> None:
        self._switch(item, "setup")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_call(self, item: Any) -> None:
        self._switch(item, "call")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self, item: Any) -> None:
        self._switch(item, "teardown")

    def pytest_runtest_logreport(self, report: Any) -> None:
        self.durations[report.nodeid] += report.duration
        if report.failed:
            self.failed.append(report.nodeid)


def build(tests: list[str], root: Path = ROOT) -> dict[str, Any]:
    """Run `tests` under coverage with per-test contexts; the map as a JSON-ready dict. Raises
    RuntimeError when a test fails on the unmutated code (every mutant would then look killed)."""
    import coverage

    digest = tree_hash(root)
    package = root / "src" / "entrenar"
    sys.path.insert(0, str(root / "src"))
    os.chdir(root)
    cov = coverage.Coverage(data_file=None, config_file=False, source=[str(package)])
    recorder = _Recorder(cov)
    t0 = time.perf_counter()
    cov.start()
    try:
        rc = int(pytest.main([*PYTEST_ARGS, *tests], plugins=[recorder]))
    finally:
        cov.stop()
    if rc != 0 or recorder.failed:
        raise RuntimeError(f"the tests fail on the unmutated code (pytest exit {rc}): {recorder.failed[:10]}")
    data = cov.get_data()
    nodes = sorted(recorder.durations)
    index = {n: i for i, n in enumerate(nodes)}
    lines: dict[str, dict[str, list[int]]] = {}
    fixture_lines: dict[str, dict[str, list[str]]] = {}
    import_lines: dict[str, list[int]] = {}
    for measured in sorted(data.measured_files()):
        rel = str(Path(measured).resolve().relative_to(root.resolve()))
        by_test: dict[str, set[int]] = defaultdict(set)
        by_file: dict[str, set[str]] = defaultdict(set)
        at_import: set[int] = set()
        for lineno, contexts in (data.contexts_by_lineno(measured) or {}).items():
            for ctx in contexts:
                node, _, phase = ctx.rpartition("|")
                if not node or node not in index:
                    at_import.add(lineno)
                elif phase == "call":
                    by_test[str(lineno)].add(index[node])
                else:
                    by_file[str(lineno)].add(node.split("::")[0])
        lines[rel] = {k: sorted(v) for k, v in sorted(by_test.items(), key=lambda kv: int(kv[0]))}
        fixture_lines[rel] = {k: sorted(v) for k, v in sorted(by_file.items(), key=lambda kv: int(kv[0]))}
        import_lines[rel] = sorted(at_import)
    return {"version": VERSION, "hash": digest, "tests": tests, "seconds": time.perf_counter() - t0,
            "nodes": nodes, "durations": {n: round(recorder.durations[n], 4) for n in nodes},
            "lines": lines, "fixture_lines": fixture_lines, "import_lines": import_lines}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="where to write the map (JSON)")
    p.add_argument("--root", type=Path, default=ROOT, help="the repository (holding src/entrenar and tests)")
    p.add_argument("tests", nargs="+", help="test files or folders to run, relative to the repo root")
    args = p.parse_args(argv)
    root = args.root.resolve()
    try:
        raw = build(args.tests, root)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    out = args.out if args.out.is_absolute() else root / args.out
    atomic_write_text(out, json.dumps(raw, separators=(",", ":")))
    print(f"coverage map of {len(raw['nodes'])} tests over {len(raw['lines'])} files in "
          f"{raw['seconds']:.0f} s -> {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
