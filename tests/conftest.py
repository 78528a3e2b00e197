"""Test-session settings shared by every test file."""

from __future__ import annotations

from threadpoolctl import threadpool_limits

# pytest runs two workers on this two-core machine; a BLAS pool of two threads in each would
# oversubscribe the cores and make small matrix products many times slower. One thread each.
_BLAS_LIMIT = threadpool_limits(limits=1)

# the fuzz case counts per reader, summed over workers and reported at the end (tests/fuzz_counts.py)
from fuzz_counts import pytest_sessionfinish, pytest_terminal_summary, pytest_testnodedown  # noqa: E402, F401
