"""Mutation testing of entrenar's numerical core: do the tests notice when the code is wrong?

Each mutant (scripts/mutants.py: one flipped operator, constant, condition or return) is written into a
private copy of the repository's src/ and tests/ (a snapshot taken at the start, one copy per worker,
so edits made meanwhile do not mix into a run), and tests run against it: pytest runs in a child forked
from this process, which has imported torch & co. once but never entrenar, with the copy first on
sys.path; it stops at the first failure. A mutant is *killed* when a test fails or the run exceeds the
timeout, and *survives* when every test passes. The timeout counts CPU seconds (RLIMIT_CPU in the
child), so that a slow, shared machine does not turn slow survivors into timeouts; a stage still
running after WALL_FACTOR times as many wall-clock seconds (a mutant that waits forever) is killed too.

    score = killed / (killed + survived)      the gate: score >= --min-score (80%)

Which tests: with a coverage map (scripts/covermap.py: one instrumented run of the core's test files
records which tests execute each line), only those that execute the mutant's statement, fastest first.
Where the map cannot tell (lines run at import time, numba-compiled lines, lines no test reaches) or
without a map, the stage files of the mutant's part (TESTS, after FIRST's quick stage). --select auto
uses the map when an up-to-date one is cached (mutation-results/covermap.json) or the run is long
enough to pay for building it (and coverage.py is installed).

The snapshot, the worker copies and the forked, time-limited pytest runs are scripts/mutation_runner.py;
this script chooses the mutants and their tests, and reports.

Mutants listed in scripts/equivalent_mutants.txt (one id per line, then '#' and the reason they cannot
change behaviour) are left out. The tests must pass on the unmutated code (`make test` runs first in
CI; --check-clean checks it here too, and building a coverage map refuses failing tests), or every
mutant would count as killed.

Usage (paths relative to this script; any Python with the test dependencies, no virtualenv needed):
  python scripts/mutate.py --sample 60 --seed 0 --workers 2          CI's fixed sample
  python scripts/mutate.py --workers 16 --results mutation-results/full.jsonl       every mutant,
        resumable: a rerun skips the ids already there whose module is unchanged
  python scripts/mutate.py --shard 3/8 --results r3.jsonl            every 8th mutant from the 3rd
  python scripts/mutate.py --report mutation-results/*.jsonl         merged scores and survivors
  python scripts/mutate.py --compare cov.jsonl stages.jsonl          same verdicts? time per mutant
  python scripts/mutate.py --match ops/nn.py:120 --workers 1         the mutants whose id has this text
  python scripts/mutate.py --list                                    count mutants per module, run nothing
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import covermap
import mutation_results as results
from mutants import Mutant, enumerate_mutants
from mutation_runner import KILLER as KILLER
from mutation_runner import PYTEST_ARGS as PYTEST_ARGS
from mutation_runner import ROOT, Job, Runner, make_workdirs, preload, snapshot
from mutation_runner import SNAPSHOT as SNAPSHOT
from mutation_runner import WALL_FACTOR as WALL_FACTOR

EQUIVALENT = Path(__file__).resolve().parent / "equivalent_mutants.txt"
COVERMAP = ROOT / "mutation-results" / "covermap.json"

# The numerical core, and the tests that cover each part (fast, targeted files first: -x stops early).
TESTS: dict[str, list[str]] = {
    "autograd": ["tests/test_tape.py", "tests/test_gradcheck.py", "tests/test_tensor.py",
                 "tests/test_op_gradients.py", "tests/test_bad_input.py"],
    "ops": ["tests/test_mutation_kills.py", "tests/test_nn_ops.py", "tests/test_losses.py",
            "tests/test_shape_matmul.py", "tests/test_tensor.py", "tests/test_bad_input.py",
            "tests/test_properties.py", "tests/test_op_gradients.py", "tests/oracle/test_ops_vs_torch.py"],
    "optim": ["tests/optim"],
    "quant": ["tests/quant", "tests/llama/test_ggml_blocks.py"],
    "lora": ["tests/test_mutation_kills.py", "tests/lora", "tests/oracle/test_peft_oracle.py"],
}
# A first, quick stage for some modules: their most direct tests. A mutant that survives it still
# faces its whole part's tests (second stage) before it counts as surviving.
FIRST: dict[str, list[str]] = {
    "autograd/gradcheck.py": ["tests/test_gradcheck.py"],
    "autograd/tape.py": ["tests/test_tape.py"],
    "optim/clip.py": ["tests/optim/test_optim_clip.py"],
    "optim/lr_scheduler.py": ["tests/optim/test_optim_schedules.py"],
    "optim/schedules.py": ["tests/optim/test_optim_schedules.py"],
    "optim/adam.py": ["tests/optim/test_optim_parity.py"],
    "optim/sgd.py": ["tests/optim/test_optim_parity.py"],
    "quant/codes.py": ["tests/quant/test_codes.py"],
    "quant/functional.py": ["tests/quant/test_quantize.py"],
    "quant/reference.py": ["tests/quant/test_quantize.py"],
    "quant/tensor.py": ["tests/quant/test_quantize.py"],
    "quant/linear.py": ["tests/quant/test_quant_linear.py"],
    "quant/ggml.py": ["tests/llama/test_ggml_blocks.py"],
    "lora/config.py": ["tests/lora/test_lora_config.py"],
    "lora/formats.py": ["tests/lora/test_lora_formats.py"],
    "lora/layer.py": ["tests/lora/test_lora_layer.py"],
    "lora/qlora.py": ["tests/lora/test_lora_qlora.py"],
    "ops/losses.py": ["tests/test_losses.py"],
    "ops/pointwise_losses.py": ["tests/test_losses.py"],
    "ops/matmul.py": ["tests/test_shape_matmul.py"],
    "ops/shape.py": ["tests/test_shape_matmul.py"],
    "ops/views.py": ["tests/test_shape_matmul.py"],
    "ops/nn.py": ["tests/test_nn_ops.py"],
    "ops/normalization.py": ["tests/test_nn_ops.py"],
}


def stages(m: Mutant) -> list[list[str]]:
    """The test runs a mutant faces in order; it survives only if it passes all of them."""
    first = FIRST.get(m.file.removeprefix("src/entrenar/"))
    return [first, TESTS[part_of(m)]] if first else [TESTS[part_of(m)]]


def all_mutants(root: Path = ROOT) -> list[Mutant]:
    """Every mutant of the core in the tree at `root` (the repository, or a snapshot of it)."""
    out = []
    for part in TESTS:
        for path in sorted((root / "src" / "entrenar" / part).glob("*.py")):
            out.extend(enumerate_mutants(path, str(path.relative_to(root))))
    return out


def read_equivalent(path: Path = EQUIVALENT) -> dict[str, str]:
    """{mutant id: reason} from the committed list; a line without a reason is an error."""
    out: dict[str, str] = {}
    if not path.exists():
        return out
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        mid, sep, reason = line.partition("#")
        if not sep or not reason.strip():
            raise ValueError(f"{path}:{n}: expected '<mutant id>  # <why it is equivalent>', got {line!r}")
        out[mid.strip()] = reason.strip()
    return out


def part_of(m: Mutant) -> str:
    return Path(m.file).parts[2]  # src/entrenar/<part>/<module>.py


OUTCOME = {"passed": "survived", "failed": "killed", "timeout": "timeout"}
# Building the coverage map takes about one run of every core test file under coverage; below this
# many mutants, `--select auto` runs the stage files rather than build a map (an up-to-date one is used).
BUILD_WORTH = 200


class Selector:
    """The tests to run for a mutant: those the coverage map says execute its statement (fastest first),
    or its stage files where the map cannot tell (import-time and numba-compiled lines, lines no test
    reaches) or when there is no map."""

    def __init__(self, cmap: covermap.CoverageMap | None, root: Path = ROOT) -> None:
        self.cmap = cmap
        self.root = root
        self.facts: dict[str, covermap.SourceFacts] = {}

    def job(self, m: Mutant) -> Job:
        if self.cmap is None:
            return Job(m, stages(m))
        if m.file not in self.facts:
            self.facts[m.file] = covermap.SourceFacts((self.root / m.file).read_text())
        facts = self.facts[m.file]
        span = facts.span(m.line)
        if facts.jitted(span):
            return Job(m, stages(m), via="jit")
        ids, files, at_import = self.cmap.tests_for(m.file, span)
        if at_import or facts.at_import(span):
            return Job(m, stages(m), via="import")
        if not ids and not files:
            return Job(m, stages(m), via="uncovered")
        return Job(m, [ids + files], via="coverage", fallback=stages(m))


def coverage_map(mode: str, n_mutants: int, path: Path, tree: Path) -> covermap.CoverageMap | None:
    """The map at `path` if it is up to date with the snapshot `tree`, else built from it first (in a
    child process) if `mode` asks for it: 'coverage' always, 'auto' for at least BUILD_WORTH mutants."""
    if mode == "stages":
        return None
    tests = list(dict.fromkeys(t for ts in TESTS.values() for t in ts))
    cmap = covermap.load(path, tree) if path.exists() else None
    if cmap is not None and cmap.raw["tests"] == tests:
        return cmap
    if mode == "auto" and (n_mutants < BUILD_WORTH or importlib.util.find_spec("coverage") is None):
        return None
    if importlib.util.find_spec("coverage") is None:
        raise SystemExit("error: --select coverage needs coverage.py (pip install coverage)")
    print(f"building the coverage map ({' '.join(tests)}) -> {path}", flush=True)
    script = Path(__file__).resolve().parent / "covermap.py"
    done = subprocess.run([sys.executable, str(script), "--root", str(tree), "--out", str(path), *tests],
                          cwd=tree, stdout=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: building the coverage map failed (exit {done.returncode}); "
                         f"run `{sys.executable} {script} --out {path} ...` to see why")
    return covermap.load(path, tree)


def source_line(m: Mutant, root: Path = ROOT) -> str:
    path = root / m.file
    lines = path.read_text().splitlines() if path.exists() else []
    return lines[m.line - 1].strip() if 0 < m.line <= len(lines) else ""


def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' (1 <= K <= N) -> (K, N): the shard takes every N-th mutant of the sorted list from the K-th."""
    k, sep, n = text.partition("/")
    if not sep or not k.isdigit() or not n.isdigit() or not 1 <= int(k) <= int(n):
        raise argparse.ArgumentTypeError(f"--shard expects K/N with 1 <= K <= N (e.g. 2/16), got {text!r}")
    return int(k), int(n)


def record(m: Mutant, status: str, seconds: float, job: Job, killer: str | None,
           root: Path) -> results.Record:
    return {"id": m.id, "file": m.file, "part": part_of(m), "line": m.line, "kind": m.kind,
            "label": m.label, "source": source_line(m, root), "file_hash": results.file_hash(root / m.file),
            "status": status, "seconds": round(seconds, 3), "cpu_seconds": round(job.cpu, 3),
            "via": job.via, "tests": job.tests,
            "killed_by": killer}


def main(argv: list[str] | None = None) -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    p.add_argument("--sample", type=int, default=0, help="run a seeded sample of this many (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=300.0,
                   help="CPU seconds per test run (stage) of a mutant (wall clock: WALL_FACTOR times that)")
    p.add_argument("--min-score", type=float, default=80.0, help="fail under this percentage killed")
    p.add_argument("--parts", default=",".join(TESTS), help="comma-separated subset of the core")
    p.add_argument("--match", default="", help="only mutants whose id contains this text")
    p.add_argument("--list", action="store_true", help="count the mutants per module and exit")
    p.add_argument("--check-clean", action="store_true", help="first check the tests pass unmutated")
    p.add_argument("--select", choices=("auto", "coverage", "stages"), default="auto",
                   help="tests per mutant: those covering its line, or its part's stage files (auto: the "
                        f"coverage map when one is up to date or at least {BUILD_WORTH} mutants run)")
    p.add_argument("--covermap", type=Path, default=COVERMAP, help="where the coverage map is kept")
    p.add_argument("--results", type=Path, help="append a JSON line per mutant here; skip ids already "
                                                 "there whose module is unchanged (resume)")
    p.add_argument("--shard", type=parse_shard, help="K/N: only every N-th mutant, from the K-th")
    p.add_argument("--report", type=Path, nargs="+", metavar="FILE",
                   help="merge these result files, print the scores and survivors, run nothing")
    p.add_argument("--compare", type=Path, nargs=2, metavar=("A", "B"),
                   help="compare the verdicts and times of two result files (e.g. --select coverage and "
                        "--select stages over the same sample), run nothing")
    args = p.parse_args(argv)
    if args.compare:
        a, b = args.compare
        print("\n".join(results.compare_lines(results.read([a]), results.read([b]), (a.name, b.name))))
        return 0
    if args.report:
        merged = results.read(args.report)
        print("\n".join(results.report_lines(merged, ROOT)))
        return gate(results.score(merged.values())[2], args.min_score)
    parts = [x for x in args.parts.split(",") if x]
    if unknown := sorted(set(parts) - set(TESTS)):
        print(f"error: unknown part(s) {unknown}; the core is {', '.join(TESTS)}", file=sys.stderr)
        return 2
    equivalent = read_equivalent()
    if args.list:
        pool = choose(all_mutants(), parts, equivalent, args.match)
        for file, n in sorted(Counter(m.file for m in pool).items()):
            print(f"{n:5d}  {file}")
        print(f"{len(pool):5d}  mutants ({len(equivalent)} listed as equivalent)")
        return 0
    signal.signal(signal.SIGTERM, _terminate)  # unwind, so the snapshot and worker copies are removed
    with tempfile.TemporaryDirectory(prefix="entrenar-mutants-") as tmp:
        tree = snapshot(Path(tmp) / "tree")
        return run(args, tree, choose(all_mutants(tree), parts, equivalent, args.match), Path(tmp))


def choose(mutants: list[Mutant], parts: list[str], equivalent: dict[str, str], match: str) -> list[Mutant]:
    return [m for m in mutants if part_of(m) in parts and m.id not in equivalent and match in m.id]


def run(args: argparse.Namespace, tree: Path, pool: list[Mutant], tmp: Path) -> int:
    """Run the mutants of `pool` that the arguments pick against the snapshot `tree`; the gate's exit code."""
    chosen = sorted(random.Random(args.seed).sample(pool, min(args.sample, len(pool))) if args.sample
                    else pool, key=lambda m: (m.file, m.site))
    if args.shard:
        chosen = chosen[args.shard[0] - 1::args.shard[1]]
    total = len(chosen)
    tests_hash = covermap.tree_hash(tree, ("tests",))
    if args.results:
        done = already_done(results.read([args.results]), tree, tests_hash)
        chosen = [m for m in chosen if m.id not in done]
    shard = f", shard {args.shard[0]}/{args.shard[1]}" if args.shard else ""
    print(f"{len(chosen)} of {len(pool)} mutants (seed {args.seed}{shard}; {total - len(chosen)} already in "
          f"the results), {args.workers} worker(s)", flush=True)
    selector = Selector(coverage_map(args.select, len(chosen), args.covermap, tree) if chosen else None, tree)
    print(f"tests per mutant: {'the coverage map' if selector.cmap else 'the stage files'}", flush=True)
    if not chosen:
        return 0
    preload()
    t_start = time.perf_counter()
    finished: list[results.Record] = []
    runner = Runner(make_workdirs(args.workers, tmp, tree), args.timeout)
    if args.check_clean:
        runner.timeout = args.timeout * 10
        for part in sorted({part_of(m) for m in chosen}):
            runner.start(Job(None, [TESTS[part]]))
            if runner.wait_one()[1] != "passed":
                print(f"error: the tests of {part} fail on the unmutated code", file=sys.stderr)
                return 2
        runner.timeout = args.timeout
    pending = list(chosen)
    try:
        while pending or runner.running:
            while pending and runner.free:
                runner.start(selector.job(pending.pop(0)))
            job, outcome, secs, killer = runner.wait_one()
            assert job.mutant is not None
            rec = {**record(job.mutant, OUTCOME[outcome], secs, job, killer, tree), "tests_hash": tests_hash}
            finished.append(rec)
            if args.results:
                results.append(args.results, rec)
            print(f"[{len(finished)}/{len(chosen)}] {rec['status']:<8} {secs:5.1f}s {rec['via']:<9} "
                  f"{rec['tests']:4d} {rec['id']}  {rec['label']}", flush=True)
    finally:  # interrupted (Ctrl-C, SIGTERM, a time limit): the finished mutants are in --results
        runner.stop()
    print("\n".join(results.report_lines({r["id"]: r for r in finished})))
    print(f"({time.perf_counter() - t_start:.0f} s)")
    return gate(results.score(finished)[2], args.min_score)


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def already_done(records: dict[str, results.Record], tree: Path, tests_hash: str) -> set[str]:
    """The ids a resumed run skips: those whose module is unchanged, except survivors whose tests changed
    since (a new test may kill them now)."""
    hashes: dict[str, str | None] = {}
    done = set()
    for i, r in records.items():
        if r["file"] not in hashes:
            hashes[r["file"]] = results.file_hash(tree / r["file"]) if (tree / r["file"]).exists() else None
        if r["file_hash"] == hashes[r["file"]] and (
                r["status"] != "survived" or r.get("tests_hash") == tests_hash):
            done.add(i)
    return done


def gate(score: float, min_score: float) -> int:
    ok = score >= min_score
    print(f"\nmutation score {score:.1f}% ({'meets' if ok else 'FAILS'} the gate >= {min_score:.0f}%)")
    return 0 if ok else 1


def report(outcomes: list[tuple[Mutant, str]], min_score: float, seconds: float) -> int:
    """Print the scores of (mutant, killed | survived | timeout) pairs; 1 if under `min_score`."""
    recs = {m.id: {"id": m.id, "file": m.file, "part": part_of(m), "line": m.line, "label": m.label,
                   "source": source_line(m), "status": o, "file_hash": "", "seconds": 0.0}
            for m, o in outcomes}
    print("\n".join(results.report_lines(recs)))
    print(f"({seconds:.0f} s)")
    return gate(results.score(recs.values())[2], min_score)


if __name__ == "__main__":
    sys.exit(main())
