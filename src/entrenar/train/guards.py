"""What keeps a run's work safe from faults: non-finite gradients found by name, Ctrl-C turned into a
checkpoint, and checkpoint-write failures (disk full, read-only folder) reported with what is intact.

Ctrl-C, as `Interrupts` handles it while the trainer runs:

    first SIGINT    only sets a flag; the trainer finishes the step it is in, writes a checkpoint and
                    raises KeyboardInterrupt (the CLI exits 130 and prints how to resume)
    second SIGINT   raises KeyboardInterrupt at once, wherever the run is (a checkpoint being written is
                    abandoned: its temporary folder is removed and `latest` still names the previous one)

Signal handlers can only be installed from the main thread; elsewhere `Interrupts` changes nothing and
Ctrl-C behaves as Python's default.
"""

from __future__ import annotations

import errno
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import numpy as np

__all__ = ["Interrupts", "checkpoint_write_error", "first_nonfinite_grad"]


def first_nonfinite_grad(names: Sequence[str], grads: Sequence[np.ndarray | None]) -> str | None:
    """The name of the first parameter (in optimizer order) whose gradient holds a NaN or an inf; None
    when all are finite (a parameter without a gradient counts as finite)."""
    for name, g in zip(names, grads, strict=True):
        if g is not None and not bool(np.isfinite(g).all()):
            return name
    return None


class Interrupts:
    """A context that catches the first SIGINT as a flag (`requested`) and lets a second one raise
    KeyboardInterrupt at once; the previous handler comes back on exit."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt("interrupted twice: stopping at once")
        self.requested = True

    def __enter__(self) -> Interrupts:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False


_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def checkpoint_write_error(exc: OSError, step: int, root: Path, previous: Path | None) -> OSError:
    """An OSError of the same errno (so of the same subclass) saying which checkpoint could not be
    written, why, and which one is still intact."""
    reason = _REASONS.get(exc.errno or 0, exc.strerror or str(exc))
    kept = (
        f"the previous checkpoint {previous} is intact"
        if previous is not None
        else "no earlier checkpoint of this run exists"
    )
    return OSError(
        exc.errno,
        f"cannot write the checkpoint of step {step} in {root}: {reason} ({exc}); {kept}; "
        "free space or fix the folder's permissions, then resume",
    )
