"""The one error every entrenar reader raises for a malformed file."""

from __future__ import annotations

import os

__all__ = ["FormatError"]


class FormatError(ValueError):
    """A file is not what its reader expects.

    `path` is the file as the caller named it; the message reads ``"<path>: <what is wrong, and where>"``.
    """

    path: str
    message: str

    def __init__(self, path: str | os.PathLike[str], message: str) -> None:
        self.path = os.fspath(path)
        self.message = message
        super().__init__(f"{self.path}: {message}")

    def __reduce__(self) -> tuple[type[FormatError], tuple[str, str]]:
        # The default reduce would call FormatError(full_message) and fail: rebuild from both parts.
        return (type(self), (self.path, self.message))
