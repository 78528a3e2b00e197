"""Fixtures of the reliability tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fuzzing import remove_scratch, scratch_dir


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    """A scratch folder for one test module's fuzzed files (in RAM when the machine allows)."""
    d = scratch_dir()
    yield d
    remove_scratch(d)
