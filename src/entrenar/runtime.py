"""Process-wide settings that make training faster, applied only when asked for.

`keep_freed_memory()` tunes glibc's malloc for training: it stops giving freed memory back to the
operating system after every step.

Why. A training step allocates its activations in the forward pass and frees them in the backward
one. glibc returns the freed top of its heap to the kernel once it exceeds its trim threshold (twice
its dynamic mmap threshold, so about 8 MB once 4 MB arrays have been freed). The next forward pass
then gets fresh pages, and each first write to one is a page fault with a page of zeroing. On the
GPT-style LM of bench/bench_gpt.py (2 layers, d 256, T 128, batch 8) that was 7,780 page faults a
step (30 MB of pages, 6,740 of the faults in the forward pass) and 28 ms of system time. With the
setting it is 1 fault and 1.6 ms. The wall time went 180 -> 169 ms (medians of three processes
each, 25 steps each, under a load average of about 1.4).

The setting is process-wide: every allocation of the process (NumPy's, other libraries') keeps up to
`keep_bytes` of freed heap for reuse instead of returning it, so the resident size stays at its high
mark. So the library never applies it on its own. The `entrenar` command does, at start, since the
process is its own; a program that trains with the library calls it once itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["keep_freed_memory"]

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# The largest mmap threshold glibc accepts on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX): larger
# blocks are still mapped and unmapped one by one.
_MMAP_THRESHOLD_MAX = 32 << 20


def keep_freed_memory(keep_bytes: int = 1 << 30) -> bool:
    """Make glibc's malloc keep up to `keep_bytes` of freed memory for reuse, and take blocks of up to
    32 MB from its heap (where freed memory is reused) instead of mapping each from the kernel.

    Returns True when applied, False where the C library is not glibc (macOS, musl), where it does
    nothing. Raises ValueError for a keep_bytes that is not a positive int below 2**31.
    """
    if isinstance(keep_bytes, bool) or not isinstance(keep_bytes, int) or not 0 < keep_bytes < 1 << 31:
        raise ValueError(
            f"keep_freed_memory: keep_bytes must be a positive int below 2**31, got {keep_bytes!r}"
        )
    if platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # both, or neither: setting either one turns off glibc's dynamic thresholds, and the mmap one then
    # stays at 128 kB, where every array of a step would be mapped (and faulted in) afresh
    mapped = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX))
    return mapped and bool(mallopt(_M_TRIM_THRESHOLD, keep_bytes))
