"""Results of scripts/mutate.py as JSON lines: one record per finished mutant, appended as it finishes,
so that an interrupted run resumes where it stopped and shards run on several machines merge.

A record: {"id", "file", "part", "line", "kind", "label", "source" (the unmutated line),
"file_hash" (SHA-256 of the module the mutant edits), "status" (killed | survived | timeout),
"seconds", "cpu_seconds" (of the test runs),
"via" (how its tests were chosen: coverage | stages | uncovered | import | jit),
"tests" (how many test ids or files were run), "killed_by" (the first failing test, or null),
"tests_hash" (SHA-256 of tests/: a resumed run retries a survivor when the tests changed since)}.

    score = (killed + timeout) / all records          per module, per part and overall
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Record = dict[str, Any]
STATUSES = ("killed", "survived", "timeout")
REQUIRED = ("id", "file", "status", "file_hash")


def file_hash(path: Path) -> str:
    """SHA-256 of a file's bytes: a result is reused only while its module is unchanged."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def append(path: Path, record: Record) -> None:
    """Append one record as one line, in a single write, flushed to disk before returning."""
    missing = [k for k in REQUIRED if k not in record]
    if missing or record["status"] not in STATUSES:
        raise ValueError(f"result record needs {REQUIRED} and a status in {STATUSES}; got {record}")
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read(paths: Iterable[Path]) -> dict[str, Record]:
    """Merge result files: {mutant id: record}, a later line (or file) replacing an earlier one. A line
    cut short by a killed run (the last one) is skipped; any other malformed line is an error."""
    out: dict[str, Record] = {}
    for path in paths:
        if not path.exists():
            continue
        lines = path.read_text().splitlines()
        for n, text in enumerate(lines, 1):
            if not text.strip():
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError:
                if n == len(lines):
                    continue  # the run was stopped while writing its last line
                raise ValueError(f"{path}:{n}: not a JSON object: {text[:80]!r}") from None
            if not isinstance(rec, dict) or any(k not in rec for k in REQUIRED):
                raise ValueError(f"{path}:{n}: expected a JSON object with keys {REQUIRED}, "
                                 f"got {text[:80]!r}")
            out[rec["id"]] = rec
    return out


def score(records: Iterable[Record]) -> tuple[int, int, float]:
    """(mutants, survivors, percentage killed); 100% for none."""
    recs = list(records)
    survived = sum(r["status"] == "survived" for r in recs)
    return len(recs), survived, 100.0 * (len(recs) - survived) / len(recs) if recs else 100.0


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; 0 for no values."""
    if not values:
        return 0.0
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _table(title: str, groups: dict[str, list[Record]]) -> list[str]:
    out = [f"\n{title:<36} {'run':>5} {'killed':>7} {'timeout':>8} {'survived':>9} {'score':>7}"]
    for name, recs in sorted(groups.items()):
        c = Counter(r["status"] for r in recs)
        n, _, pct = score(recs)
        out.append(f"{name:<36} {n:5d} {c['killed']:7d} {c['timeout']:8d} {c['survived']:9d} {pct:6.1f}%")
    return out


def report_lines(records: dict[str, Record], root: Path | None = None) -> list[str]:
    """The report: score by module and by part, time per mutant, the survivors with their line and edit
    (the ones never reached by a test marked), and how many records are for since-changed files."""
    recs = sorted(records.values(), key=lambda r: (r["file"], r.get("line", 0), r["id"]))
    by_module: dict[str, list[Record]] = defaultdict(list)
    by_part: dict[str, list[Record]] = defaultdict(list)
    for r in recs:
        by_module[r["file"].removeprefix("src/entrenar/")].append(r)
        by_part[r.get("part") or Path(r["file"]).parts[2]].append(r)
    lines = _table("module", by_module) + _table("part", by_part)
    n, survived, pct = score(recs)
    secs = [float(r.get("seconds", 0.0)) for r in recs]
    lines.append(f"{'total':<36} {n:5d} {'':7} {'':8} {survived:9d} {pct:6.1f}%")
    via = Counter(r.get("via", "?") for r in recs)
    lines.append(f"\nseconds per mutant: median {statistics.median(secs) if secs else 0:.1f}, "
                 f"p90 {percentile(secs, 90):.1f}, total {sum(secs):.0f}; tests chosen by "
                 + ", ".join(f"{k} {v}" for k, v in sorted(via.items())))
    cpu = [float(r["cpu_seconds"]) for r in recs if "cpu_seconds" in r]
    if cpu:
        lines.append(f"CPU seconds per mutant: median {statistics.median(cpu):.1f}, "
                     f"p90 {percentile(cpu, 90):.1f}, total {sum(cpu):.0f}")
    if root is not None:
        stale = [r for r in recs if not (root / r["file"]).exists()
                 or file_hash(root / r["file"]) != r["file_hash"]]
        if stale:
            lines.append(f"{len(stale)} record(s) are for modules changed since they ran (ids may be stale)")
    survivors = [r for r in recs if r["status"] == "survived"]
    if survivors:
        lines.append("\nsurviving mutants (* never reached by a test):")
        for r in survivors:
            mark = "*" if r.get("via") == "uncovered" else " "
            lines.append(f" {mark}{r['id']}  {r.get('label', '')}   | {r.get('source', '')}")
    return lines


def compare_lines(a: dict[str, Record], b: dict[str, Record], names: tuple[str, str]) -> list[str]:
    """Verdicts (killed or timeout vs survived) and seconds per mutant of two runs over the same mutants,
    e.g. tests chosen by the coverage map vs the stage files: the agreement and every difference."""
    common = sorted(set(a) & set(b))
    lines = [f"{len(common)} mutants in both ({len(a)} in {names[0]}, {len(b)} in {names[1]})"]
    differ = [i for i in common if (a[i]["status"] == "survived") != (b[i]["status"] == "survived")]
    lines.append(f"same verdict: {len(common) - len(differ)} of {len(common)}")
    for name, recs in zip(names, (a, b), strict=True):
        secs = [float(recs[i].get("seconds", 0.0)) for i in common]
        _, survived, pct = score(recs[i] for i in common)
        lines.append(f"{name}: score {pct:.1f}% ({survived} survived); seconds per mutant median "
                     f"{statistics.median(secs) if secs else 0:.1f}, p90 {percentile(secs, 90):.1f}, "
                     f"mean {statistics.fmean(secs) if secs else 0:.1f}, total {sum(secs):.0f}")
        cpu = [float(recs[i]["cpu_seconds"]) for i in common if "cpu_seconds" in recs[i]]
        if cpu:
            lines.append(f"{name}: CPU seconds per mutant median {statistics.median(cpu):.1f}, "
                         f"p90 {percentile(cpu, 90):.1f}, mean {statistics.fmean(cpu):.1f}, "
                         f"total {sum(cpu):.0f}")
    for i in differ:
        lines.append(f"  differs: {i}  {names[0]} {a[i]['status']}, {names[1]} {b[i]['status']}")
    return lines
