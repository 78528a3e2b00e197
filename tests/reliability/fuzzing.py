"""What the reader fuzz tests share: byte mutations of a valid file, hostile JSON values, the check
that a reader either accepts a file or refuses it with one of its own error types naming the file, and
the count of cases each reader was given.

Each reader's allowed errors are listed where it is tested; anything else (TypeError, KeyError,
RecursionError, MemoryError, ...) escaping a reader is a bug. Every reader gets EXAMPLES hypothesis
cases (derandomized, so every CI run tries the same ones) and SWEEP seeded byte mutations, at least
3,000 cases in all; `CASES` counts the cases actually run, per reader, and tests/fuzz_counts.py reports
the totals at the end of the run. Fuzzed files are written to a RAM-backed scratch folder when the
machine has one (/dev/shm): a file write there costs microseconds, on disk milliseconds.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXAMPLES = 500  # hypothesis cases per reader: mutated copies of a valid file and hostile values in it
SWEEP = 2500  # cheaper seeded byte mutations per reader, on top (no shrinking, so many more per second)
PER_READER = 3000  # the least number of cases each reader is given in one run
CASES: Counter[str] = Counter()  # reader -> cases run in this process (check_reader counts them)
FUZZ = settings(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])


def fuzz(examples: int) -> settings:
    """Hypothesis settings of a fuzz test: `examples` cases, the same ones every run, no deadline."""
    return settings(FUZZ, max_examples=examples)


def _flip(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for at, bit in flips:
        out[at % len(out)] ^= 1 << bit
    return bytes(out)


def mutations(valid: bytes) -> st.SearchStrategy[bytes]:
    """A valid file cut short, with 1..8 bits flipped, or with a span replaced by up to 16 random bytes."""
    n = len(valid)
    truncated = st.integers(0, n - 1).map(lambda k: valid[:k])
    flipped = st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 7)), min_size=1, max_size=8).map(
        lambda flips: _flip(valid, flips)
    )
    spliced = st.tuples(st.integers(0, n), st.integers(0, 16), st.binary(max_size=16)).map(
        lambda t: valid[: t[0]] + t[2] + valid[t[0] + t[1] :]
    )
    return st.one_of(truncated, flipped, spliced)


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([0, -1, 1, 2**31, 2**63, -(2**63), 10**30]),
    st.floats(),  # NaN and infinities included: Python's json writes and reads them
    st.text(max_size=12),
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path into the JSON document `doc` (object keys and list indices)."""
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:3]):
            out += paths(v, (*prefix, i))
    return out


def replaced(doc: Any, path: tuple[Any, ...], value: Any, delete: bool = False) -> Any:
    """A copy of `doc` with the value at `path` replaced by `value` (or its key removed)."""
    doc = json.loads(json.dumps(doc))
    node = doc
    for part in path[:-1]:
        node = node[part]
    if delete and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


def hostile_docs(valid: Any) -> st.SearchStrategy[Any]:
    """`valid` with one value somewhere replaced by an arbitrary JSON value, or one key removed."""
    return st.tuples(st.sampled_from(paths(valid)), JSON_VALUES, st.booleans()).map(
        lambda t: replaced(valid, *t)
    )


def scratch_dir() -> Path:
    """A new empty folder for fuzzed files: in RAM (/dev/shm) when the machine has it, else in the
    system temporary folder. The caller removes it (`remove_scratch`)."""
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="entrenar-fuzz-", dir=base))


def remove_scratch(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def check_reader(
    read: Callable[[], Any],
    path: str | os.PathLike[str],
    allowed: tuple[type[BaseException], ...],
    reader: str,
) -> bool:
    """Call `read`, counting one case of `reader`; True when it accepted the file. A refusal must be
    one of `allowed` and name `path`; any other exception propagates and fails the test."""
    CASES[reader] += 1
    try:
        read()
    except allowed as exc:
        assert os.fspath(path) in str(exc), f"the error does not name {path}: {exc}"
        return False
    return True


def run_sweep(
    valid: bytes,
    path: Path,
    read: Callable[[], Any],
    allowed: tuple[type[BaseException], ...],
    reader: str,
    count: int = SWEEP,
) -> int:
    """Write each of `count` seeded mutations of `valid` to `path` and check `reader` on it; the number
    of mutated files it accepted. Asserts that all `count` cases ran."""
    accepted = ran = 0
    for data in sweep(valid, count):
        path.write_bytes(data)
        accepted += check_reader(read, path, allowed, reader) and data != valid
        ran += 1
    path.write_bytes(valid)
    assert ran == count
    return accepted


def sweep(valid: bytes, count: int = SWEEP, seed: int = 0) -> Iterator[bytes]:
    """`count` mutated copies of `valid`, the same every run: in turn cut short at a random length, with
    1..8 random bits flipped, and with a random span replaced by 0..16 random bytes."""
    rng = np.random.default_rng(seed)
    n = len(valid)
    for i in range(count):
        if i % 3 == 0:
            yield valid[: int(rng.integers(0, n))]
        elif i % 3 == 1:
            flips = [
                (int(a), int(b)) for a, b in zip(rng.integers(0, n, 8), rng.integers(0, 8, 8), strict=True)
            ]
            yield _flip(valid, flips[: int(rng.integers(1, 9))])
        else:
            at, cut = int(rng.integers(0, n + 1)), int(rng.integers(0, 17))
            junk = rng.integers(0, 256, int(rng.integers(0, 17)), dtype=np.uint8).tobytes()
            yield valid[:at] + junk + valid[at + cut :]
