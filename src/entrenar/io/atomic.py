"""Atomic file writes: whoever opens the target sees the old file or the complete new one, never a part.

The recipe: write a temporary file in the target's own directory (so the final rename stays on one file
system), flush it to disk with fsync, `os.replace` it over the target (atomic on POSIX and Windows), then
fsync the directory so the rename itself survives a crash. On any error before the rename the temporary
file is removed and the target is left exactly as it was.

The temporary file is created with mode 0o666 less the umask, as `open(path, "w")` would create the
target, and named ``.<target name>.<random>.tmp`` so a crash leaves an obvious, hidden leftover. A symlink
at the target is replaced by the new file, not written through.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text"]

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)  # Windows: no newline translation on the raw descriptor


def _check_target(target: Path) -> None:
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"cannot write {target}: it is a directory", str(target))


def _create_temp(target: Path) -> Path:
    """An empty new file next to `target`, created exclusively so two writers never share one."""
    stem = target.name[:200]  # leave room under the usual 255-byte name limit for the suffix
    for _ in range(100):
        tmp = target.with_name(f".{stem}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC | _O_BINARY, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot write {target}: cannot create a temporary file in {target.parent} ({exc.strerror})",
                str(target),
            ) from exc
        os.close(fd)
        return tmp
    raise FileExistsError(errno.EEXIST, f"cannot write {target}: no free temporary file name", str(target))


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | _O_CLOEXEC | _O_BINARY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable; a no-op where directories cannot be opened (Windows)."""
    with suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on a clean exit it replaces `path`, on an error it is removed.

        with atomic_path("model.safetensors") as tmp:
            some_library.save(..., tmp)

    The writer may open, close and reopen the temporary file by name; it exists (empty) on entry.
    """
    target = Path(path)
    _check_target(target)
    tmp = _create_temp(target)
    try:
        yield tmp
        _fsync_path(tmp)
        os.replace(tmp, target)
    except BaseException:
        with suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(target.parent)  # Path("x").parent is Path(".")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | bytearray | memoryview) -> None:
    """Write `data` to `path` atomically (see the module docstring)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(
            f"atomic_write_bytes({os.fspath(path)!r}): data must be bytes, got {type(data).__name__}"
        )
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically, encoded with `encoding`, newlines written as given."""
    if not isinstance(text, str):
        raise TypeError(
            f"atomic_write_text({os.fspath(path)!r}): text must be str, got {type(text).__name__}"
        )
    atomic_write_bytes(path, text.encode(encoding))
