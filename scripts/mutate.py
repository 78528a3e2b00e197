"""Mutation testing of entrenar's numerical core: do the tests notice when the code is wrong?

Each mutant (scripts/mutants.py: one flipped operator, constant, condition or return) is written into a
private copy of src/ (one per worker), and the tests that cover its package run against that copy:
pytest runs in a child forked from this process, which has imported torch & co. once but never
entrenar, with the copy first on sys.path; it stops at the first failure. A mutant is *killed* when
a test fails or the run exceeds the timeout, and *survives* when every test passes.

    score = killed / (killed + survived)      the gate: score >= --min-score (80%)

Mutants listed in scripts/equivalent_mutants.txt (one id per line, then '#' and the reason they cannot
change behaviour) are left out. The tests must pass on the unmutated code (`make test` runs first in
CI; --check-clean checks it here too), or every mutant would count as killed.

Usage:
  python scripts/mutate.py --sample 120 --seed 0 --workers 2     CI's fixed sample
  python scripts/mutate.py --workers 2 --check-clean             every mutant (`make mutation`)
  python scripts/mutate.py --list                                count mutants per module, run nothing
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from mutants import Mutant, apply, enumerate_mutants

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "entrenar"
EQUIVALENT = Path(__file__).resolve().parent / "equivalent_mutants.txt"

# The numerical core, and the tests that cover each part (fast, targeted files first: -x stops early).
TESTS: dict[str, list[str]] = {
    "autograd": ["tests/test_tape.py", "tests/test_gradcheck.py", "tests/test_tensor.py",
                 "tests/test_op_gradients.py", "tests/test_bad_input.py"],
    "ops": ["tests/test_mutation_kills.py", "tests/test_nn_ops.py", "tests/test_losses.py",
            "tests/test_shape_matmul.py", "tests/test_tensor.py", "tests/test_bad_input.py",
            "tests/test_properties.py", "tests/test_op_gradients.py", "tests/oracle/test_ops_vs_torch.py"],
    "optim": ["tests/optim"],
    "quant": ["tests/quant"],
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
    "lora/config.py": ["tests/lora/test_lora_config.py"],
    "lora/formats.py": ["tests/lora/test_lora_formats.py"],
    "lora/layer.py": ["tests/lora/test_lora_layer.py"],
    "lora/qlora.py": ["tests/lora/test_lora_qlora.py"],
    "ops/losses.py": ["tests/test_losses.py"],
    "ops/matmul.py": ["tests/test_shape_matmul.py"],
    "ops/shape.py": ["tests/test_shape_matmul.py"],
    "ops/nn.py": ["tests/test_nn_ops.py"],
}


def stages(m: Mutant) -> list[list[str]]:
    """The test runs a mutant faces in order; it survives only if it passes all of them."""
    first = FIRST.get(m.file.removeprefix("src/entrenar/"))
    return [first, TESTS[part_of(m)]] if first else [TESTS[part_of(m)]]


def all_mutants() -> list[Mutant]:
    out = []
    for part in TESTS:
        for path in sorted((PACKAGE / part).glob("*.py")):
            out.extend(enumerate_mutants(path, str(path.relative_to(ROOT))))
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


PYTEST_ARGS = ["-x", "-q", "--no-header", "-p", "no:cacheprovider", "-o", "addopts=", "--hypothesis-seed=0"]


def preload() -> None:
    """Import the heavy third-party modules once, in this process, so that each forked test run starts
    warm. entrenar itself must not be imported here: every child imports its own (mutated) copy."""
    import importlib

    for name in ("numpy", "scipy", "torch", "pytest", "hypothesis", "threadpoolctl", "safetensors",
                 "transformers", "peft"):
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    assert "entrenar" not in sys.modules, "the mutation runner must not import entrenar itself"


def _child(src: Path, tests: list[str]) -> None:
    """In the forked child: run pytest on `tests` with `src` first on sys.path, then exit."""
    try:
        os.chdir(ROOT)
        sys.path.insert(0, str(src))
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        import pytest

        rc = int(pytest.main([*PYTEST_ARGS, *tests]))
    except BaseException:
        rc = 3
    os._exit(rc)


class Runner:
    """Up to `workers` forked pytest runs at once, each on its own copy of src/ with one mutant."""

    def __init__(self, workdirs: list[Path], timeout: float) -> None:
        self.free = list(workdirs)
        self.timeout = timeout
        # pid -> (mutant or None, its workdir, start time, the original text to restore, killed)
        self.running: dict[int, tuple[Mutant | None, Path, float, str | None, bool]] = {}
        self.later: dict[int, list[list[str]]] = {}  # pid -> the test stages still to run after it
        self.stage_start: dict[int, float] = {}

    def start(self, m: Mutant | None, runs: list[list[str]]) -> None:
        src = self.free.pop()
        original = None
        if m is not None:
            target = src.parent / m.file
            original = target.read_text()
            target.write_text(apply(original, m))
        self._fork(m, src, original, runs, time.perf_counter())

    def _fork(self, m: Mutant | None, src: Path, original: str | None, runs: list[list[str]],
              t0: float) -> None:
        pid = os.fork()
        if pid == 0:
            _child(src, runs[0])
        self.running[pid] = (m, src, t0, original, False)
        self.later[pid] = runs[1:]
        self.stage_start[pid] = time.perf_counter()  # the timeout is per stage

    def wait_one(self) -> tuple[Mutant | None, str, float]:
        """Block until a run ends: (mutant, 'passed' | 'failed' | 'timeout', seconds)."""
        while True:
            now = time.perf_counter()
            for pid, (m, src, t0, original, killed) in list(self.running.items()):
                if not killed and now - self.stage_start[pid] > self.timeout:
                    os.kill(pid, signal.SIGKILL)
                    self.running[pid] = (m, src, t0, original, True)
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0 or pid not in self.running:
                time.sleep(0.05)
                continue
            m, src, t0, original, killed = self.running.pop(pid)
            later = self.later.pop(pid)
            del self.stage_start[pid]
            rc = os.waitstatus_to_exitcode(status)
            if rc == 0 and later:  # passed this stage: on to the next, same mutant, same workdir
                self._fork(m, src, original, later, t0)
                continue
            if m is not None and original is not None:
                (src.parent / m.file).write_text(original)
            self.free.append(src)
            outcome = "timeout" if killed else "passed" if rc == 0 else "failed"
            return m, outcome, time.perf_counter() - t0


def make_workdirs(n: int, base: Path) -> list[Path]:
    dirs = []
    for i in range(n):
        src = base / f"w{i}" / "src"
        shutil.copytree(ROOT / "src", src, ignore=shutil.ignore_patterns("*.egg-info"))
        dirs.append(src)
    return dirs


OUTCOME = {"passed": "survived", "failed": "killed", "timeout": "timeout"}


def source_line(m: Mutant) -> str:
    path = ROOT / m.file
    lines = path.read_text().splitlines() if path.exists() else []
    return lines[m.line - 1].strip() if 0 < m.line <= len(lines) else ""


def main(argv: list[str] | None = None) -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    p.add_argument("--sample", type=int, default=0, help="run a seeded sample of this many (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per test run (stage) of a mutant")
    p.add_argument("--min-score", type=float, default=80.0, help="fail under this percentage killed")
    p.add_argument("--parts", default=",".join(TESTS), help="comma-separated subset of the core")
    p.add_argument("--match", default="", help="only mutants whose id contains this text")
    p.add_argument("--list", action="store_true", help="count the mutants per module and exit")
    p.add_argument("--check-clean", action="store_true", help="first check the tests pass unmutated")
    args = p.parse_args(argv)
    parts = [x for x in args.parts.split(",") if x]
    if unknown := sorted(set(parts) - set(TESTS)):
        print(f"error: unknown part(s) {unknown}; the core is {', '.join(TESTS)}", file=sys.stderr)
        return 2
    equivalent = read_equivalent()
    pool = [m for m in all_mutants()
            if part_of(m) in parts and m.id not in equivalent and args.match in m.id]
    if args.list:
        for file, n in sorted(Counter(m.file for m in pool).items()):
            print(f"{n:5d}  {file}")
        print(f"{len(pool):5d}  mutants ({len(equivalent)} listed as equivalent)")
        return 0
    chosen = sorted(random.Random(args.seed).sample(pool, min(args.sample, len(pool))) if args.sample
                    else pool, key=lambda m: (m.file, m.site))
    print(f"{len(chosen)} of {len(pool)} mutants (seed {args.seed}), {args.workers} worker(s)", flush=True)
    preload()
    t_start = time.perf_counter()
    results: list[tuple[Mutant, str]] = []
    with tempfile.TemporaryDirectory(prefix="entrenar-mutants-") as tmp:
        runner = Runner(make_workdirs(args.workers, Path(tmp)), args.timeout)
        if args.check_clean:
            runner.timeout = args.timeout * 10
            for part in sorted({part_of(m) for m in chosen}):
                runner.start(None, [TESTS[part]])
                if runner.wait_one()[1] != "passed":
                    print(f"error: the tests of {part} fail on the unmutated code", file=sys.stderr)
                    return 2
            runner.timeout = args.timeout
        pending = list(chosen)
        while pending or runner.running:
            while pending and runner.free:
                m = pending.pop(0)
                runner.start(m, stages(m))
            done, outcome, secs = runner.wait_one()
            assert done is not None
            results.append((done, OUTCOME[outcome]))
            line = f"{OUTCOME[outcome]:<8} {secs:5.1f}s {done.id}  {done.label}"
            print(f"[{len(results)}/{len(chosen)}] {line}", flush=True)
    return report(results, args.min_score, time.perf_counter() - t_start)


def report(results: list[tuple[Mutant, str]], min_score: float, seconds: float) -> int:
    by_file: dict[str, Counter[str]] = defaultdict(Counter)
    for m, outcome in results:
        by_file[m.file][outcome] += 1
    print(f"\n{'module':<36} {'run':>5} {'killed':>7} {'timeout':>8} {'survived':>9} {'score':>7}")
    for file, c in sorted(by_file.items()):
        run = sum(c.values())
        print(f"{file.removeprefix('src/entrenar/'):<36} {run:5d} {c['killed']:7d} {c['timeout']:8d} "
              f"{c['survived']:9d} {100 * (run - c['survived']) / run:6.1f}%")
    survived = [m for m, o in results if o == "survived"]
    total = len(results)
    score = 100.0 * (total - len(survived)) / total if total else 100.0
    print(f"{'total':<36} {total:5d} {'':7} {'':8} {len(survived):9d} {score:6.1f}%   ({seconds:.0f} s)")
    if survived:
        print("\nsurviving mutants:")
        for m in survived:
            print(f"  {m.id}  {m.label}   | {source_line(m)}")
    ok = score >= min_score
    print(f"\nmutation score {score:.1f}% ({'meets' if ok else 'FAILS'} the gate >= {min_score:.0f}%)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
