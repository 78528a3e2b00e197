"""The fuzz case counts of a test run, per reader: summed over pytest-xdist workers, printed at the
end of the run and, when ENTRENAR_FUZZ_REPORT names a file, written there as JSON.

The fuzz tests (tests/reliability) count every case they hand a reader in `fuzzing.CASES`; a worker
sends its counts to the controller when it finishes (`workeroutput`), and the controller adds them up.
Imported by tests/conftest.py, which makes these functions pytest hooks.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

_KEY = "fuzz_cases"
_TOTALS: Counter[str] = Counter()


def _local_counts() -> dict[str, int]:
    fuzzing = sys.modules.get("fuzzing")  # imported only when a fuzz test ran in this process
    return dict(getattr(fuzzing, "CASES", {}))


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:  # an xdist worker: hand the counts to the controller
        workeroutput[_KEY] = json.dumps(_local_counts())
    else:
        _TOTALS.update(_local_counts())


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    _TOTALS.update(json.loads(getattr(node, "workeroutput", {}).get(_KEY, "{}")))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _TOTALS:
        return
    terminalreporter.section("fuzz cases per reader")
    for reader, n in sorted(_TOTALS.items()):
        terminalreporter.write_line(f"{reader:<24} {n:>7,}")
    target = os.environ.get("ENTRENAR_FUZZ_REPORT")
    if target:
        path = Path(target)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(dict(sorted(_TOTALS.items())), f, indent=1)
        os.replace(tmp, path)
