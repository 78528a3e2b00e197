"""What every command shares: checked argparse types, the help formatter, and turning bad input into a
message and exit status 2 (no traceback)."""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from entrenar.assets import AssetError

__all__ = [
    "INPUT_ERRORS",
    "USAGE_ERROR",
    "HelpFormatter",
    "checked",
    "fail",
    "refuse_nonempty",
    "say",
    "wrap",
]

USAGE_ERROR = 2
# What bad input raises on its way in: ConfigError, RunError, DataError, FormatError and
# UnsupportedModelError are ValueErrors; KeyError names missing checkpoint keys.
INPUT_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    KeyError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    FileExistsError,
    PermissionError,
    AssetError,
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs kept as written (`wrap` them); a default that says something (not None,
    False or empty) shown after the argument's help."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        silent = default is None or default is False or default == [] or default is argparse.SUPPRESS
        if "%(default)" not in text and not silent:
            text += " (default: %(default)s)"
        return text


def wrap(text: str, width: int = 100) -> str:
    """Paragraphs (separated by blank lines) filled to `width` columns, for descriptions."""
    return "\n\n".join(textwrap.fill(" ".join(p.split()), width) for p in text.split("\n\n"))


def checked(
    parse: Callable[[str], float], what: str, ok: Callable[[float], bool], rule: str
) -> Callable[[str], Any]:
    """An argparse type: parse the text, then check it, each failure saying what was expected."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{rule}, got {text}")
        return value

    return convert


def say(line: str) -> None:
    """Print a report line at once (the progress bar writes to stderr in between)."""
    print(line, flush=True)


def fail(command: str, exc: BaseException | str) -> int:
    """Print `entrenar COMMAND: error: ...` to stderr; the usage-error exit status."""
    # str() of a KeyError would put quotes around the whole message
    message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    print(f"entrenar {command}: error: {message}", file=sys.stderr)
    return USAGE_ERROR


def refuse_nonempty(path: Path, overwrite: bool, what: str) -> None:
    """FileExistsError when `path` is a file, or a non-empty folder and not `overwrite`."""
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{what} {path} is a file: expected a folder to write into")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{what} {path} already exists and is not empty: pass --overwrite to write into it"
        )
