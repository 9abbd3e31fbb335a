"""How the gateway's process asks the C allocator for memory."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import platform
import time
from collections.abc import Callable

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 64 * 1024
LARGE_BODY = 1024 * 1024  # bytes: a request body after which freed heap pages are given back
TRIM_DELAY = 0.2  # seconds: the trims of requests that end together are one


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


def _malloc_trim() -> Callable[[int], int] | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(None).malloc_trim  # type: ignore[no-any-return]
    return None


_MALLOC_TRIM = _malloc_trim()
_trim_due_until = 0.0  # a trim is already scheduled before this (monotonic seconds)


def trim_soon() -> bool:
    """Give back the heap pages a large request left free, once it is gone. Below the mmap
    threshold its pieces (decoded texts, Python objects) come from the heap, and glibc keeps
    free heap pages while anything lives above them: sixteen 15 MB token-id requests left
    about 500 MB held after they were answered (docs/benchmarks.md). ``malloc_trim`` hands
    them back. True when a trim was scheduled (glibc only)."""
    global _trim_due_until
    now = time.monotonic()
    if _MALLOC_TRIM is None or now < _trim_due_until:
        return False
    _trim_due_until = now + TRIM_DELAY
    asyncio.get_running_loop().call_later(TRIM_DELAY, _MALLOC_TRIM, 0)
    return True
