"""Fixtures of the command-line tests: a tiny model, data and config in a fresh folder, and one finished
tiny run shared by the tests that only read it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tiny_run import TinySetup

from entrenar.cli import main


@pytest.fixture
def tiny(tmp_path: Path) -> TinySetup:
    return TinySetup(tmp_path)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinySetup]:
    """A tiny run trained to the end (read-only for the tests that use it)."""
    setup = TinySetup(tmp_path_factory.mktemp("finished"))
    assert main(["train", str(setup.config_path), "output.plot=true"]) == 0
    yield setup
