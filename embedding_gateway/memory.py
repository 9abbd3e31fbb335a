"""How the gateway's process asks the C allocator for memory."""

from __future__ import annotations

import contextlib
import ctypes
import platform

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 64 * 1024


def pin_mmap_threshold() -> bool:
    """Give large buffers (request and response bodies, vector arrays) back to the system
    when they are freed. glibc raises its mmap threshold each time such a buffer is freed,
    after which buffers of that size come from the heap, where the holes freed ones leave are
    reused only in part: the soak (docs/benchmarks.md) saw RSS grow steadily while Python's
    own heap did not. A fixed threshold keeps each large buffer a mapping of its own.
    True when it was set (glibc only)."""
    if platform.libc_ver()[0] != "glibc":
        return False
    with contextlib.suppress(OSError, AttributeError):
        return bool(ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    return False
