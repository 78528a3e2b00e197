"""Compare benchmark ratios (entrenar / PyTorch, same run) with the committed bench/baseline.json.

Each bench writes bench/results/<bench>.<label>.json with a "ratio": entrenar's time over PyTorch's
(or over float32 NumPy for quant) measured in the same process, so a busy machine slows both sides
alike. Lower is better. A ratio r regresses against its baseline b when

    r > b * (1 + tolerance)        (tolerance 0.05: more than 5% worse)

Timings are noisy: `--run` runs each bench `--times` times and compares the median ratio, and one flag
is a reason to rerun, not yet a verdict. Not part of CI's pass/fail.

Usage:
  python bench/compare.py                          compare the results already in bench/results/
  python bench/compare.py --run overhead,mlp -n 3  run those benches 3 times each, then compare
  python bench/compare.py --update                 write the present results as the new baseline
Exit status: 0 when nothing regressed, 1 when something did, 2 for a bad baseline or bench name.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS_DIR = HERE / "results"
BASELINE = HERE / "baseline.json"
BENCHES = ("overhead", "mlp", "optim", "gpt", "quant", "lora")
LABELS = ("asis", "unset")
BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
TOLERANCE = 0.05


@dataclass(frozen=True)
class Row:
    """One bench/label: the baseline ratio, the fresh one (None when missing) and the verdict."""

    key: str
    baseline: float
    fresh: float | None
    tolerance: float

    @property
    def change(self) -> float | None:
        """Relative change fresh / baseline - 1 (positive: slower than the baseline)."""
        return None if self.fresh is None else self.fresh / self.baseline - 1.0

    @property
    def verdict(self) -> str:
        if self.fresh is None:
            return "missing"
        if self.fresh > self.baseline * (1.0 + self.tolerance):
            return "REGRESSED"
        if self.fresh < self.baseline * (1.0 - self.tolerance):
            return "improved"
        return "ok"


def load_baseline(path: Path = BASELINE) -> tuple[dict[str, float], float]:
    """({"<bench>.<label>": ratio}, tolerance) from the baseline file; ValueError names what is wrong."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the baseline ({exc})") from exc
    ratios = data.get("ratios") if isinstance(data, dict) else None
    if not isinstance(ratios, dict) or not ratios:
        raise ValueError(f'{path}: expected {{"ratios": {{"<bench>.<label>": <positive float>, ...}}}}')
    for key, value in ratios.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"{path}: ratios[{key!r}] = {value!r}, expected a positive number")
    tol = data.get("tolerance", TOLERANCE)
    if not isinstance(tol, int | float) or not 0 <= tol < 1:
        raise ValueError(f"{path}: tolerance = {tol!r}, expected a number in [0, 1)")
    return {k: float(v) for k, v in ratios.items()}, float(tol)


def read_ratio(results_dir: Path, key: str) -> float | None:
    """The "ratio" of bench/results/<key>.json, or None when that file is absent or has none."""
    path = results_dir / f"{key}.json"
    if not path.exists():
        return None
    value = json.loads(path.read_text()).get("ratio")
    return float(value) if isinstance(value, int | float) else None


def compare(baseline: dict[str, float], fresh: dict[str, float | None], tolerance: float) -> list[Row]:
    """One Row per baseline key, in the baseline's order."""
    return [Row(key, base, fresh.get(key), tolerance) for key, base in baseline.items()]


def format_table(rows: list[Row]) -> str:
    lines = [f"{'bench.label':<16} {'baseline':>9} {'fresh':>9} {'change':>8}  verdict"]
    for r in rows:
        fresh = f"{r.fresh:9.3f}" if r.fresh is not None else f"{'-':>9}"
        change = f"{r.change:+8.1%}" if r.change is not None else f"{'-':>8}"
        lines.append(f"{r.key:<16} {r.baseline:9.3f} {fresh} {change}  {r.verdict}")
    return "\n".join(lines)


def current_label() -> str:
    """The label bench/common.py gives this environment: 'unset' when no OpenBLAS variable is set."""
    return "unset" if all(os.environ.get(k) is None for k in BLAS_ENV) else "asis"


def run_benches(benches: list[str], times: int, python: str) -> dict[str, float | None]:
    """Run each bench `times` times (label 'compare') and return {"<bench>.<label>": median ratio}."""
    fresh: dict[str, float | None] = {}
    lab = current_label()
    for name in benches:
        ratios = []
        for i in range(times):
            print(f"## {name}: run {i + 1} of {times}", flush=True)
            subprocess.run([python, str(HERE / f"bench_{name}.py"), "--label", "compare"], check=True)
            ratio = read_ratio(RESULTS_DIR, f"{name}.compare")
            if ratio is not None:
                ratios.append(ratio)
        fresh[f"{name}.{lab}"] = statistics.median(ratios) if ratios else None
        print(f"## {name}: ratios {', '.join(f'{r:.3f}' for r in ratios)}", flush=True)
    return fresh


def write_baseline(ratios: dict[str, float], tolerance: float, path: Path = BASELINE) -> None:
    """Write the baseline atomically (temp file in the same folder, then os.replace)."""
    payload: dict[str, Any] = {
        "comment": "entrenar/torch time ratios (lower is better) per <bench>.<label>; see bench/compare.py",
        "tolerance": tolerance,
        "ratios": {k: round(v, 4) for k, v in sorted(ratios.items())},
    }
    fd, tmp = tempfile.mkstemp(prefix=".baseline.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--run", default="", help=f"comma-separated benches to run first, from {BENCHES}")
    parser.add_argument("-n", "--times", type=int, default=3, help="runs per bench with --run (median)")
    parser.add_argument("--update", action="store_true", help="write the present results as the baseline")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the benches")
    args = parser.parse_args(argv)
    benches = [b for b in args.run.split(",") if b]
    unknown = sorted(set(benches) - set(BENCHES))
    if unknown or args.times < 1:
        print(f"error: unknown bench {unknown} (known: {', '.join(BENCHES)}) or --times < 1", file=sys.stderr)
        return 2
    if args.update:
        found = {f"{b}.{lab}": read_ratio(RESULTS_DIR, f"{b}.{lab}") for b in BENCHES for lab in LABELS}
        write_baseline({k: v for k, v in found.items() if v is not None}, TOLERANCE, BASELINE)
        print(f"wrote {BASELINE}")
        return 0
    try:
        baseline, tolerance = load_baseline(BASELINE)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if benches:
        fresh = run_benches(benches, args.times, args.python)
        baseline = {k: v for k, v in baseline.items() if k in fresh}
    else:
        fresh = {key: read_ratio(RESULTS_DIR, key) for key in baseline}
    rows = compare(baseline, fresh, tolerance)
    print(format_table(rows))
    regressed = [r.key for r in rows if r.verdict == "REGRESSED"]
    if regressed:
        print(f"{len(regressed)} ratio(s) more than {tolerance:.0%} worse than the baseline: "
              f"{', '.join(regressed)} (rerun before calling it a regression)")
    return 1 if regressed else 0


if __name__ == "__main__":
    sys.exit(main())
