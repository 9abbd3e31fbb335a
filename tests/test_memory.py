"""``pin_mmap_threshold``: after it, a large buffer freed and a slightly smaller one asked
for again is still a mapping of its own (given back when freed), not carved from the heap.
Each case runs in a fresh interpreter: the threshold is process-wide."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

SCRIPT = """
import ctypes, sys
from embedding_gateway.memory import pin_mmap_threshold

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "pinned":
    assert pin_mmap_threshold()
first = bytearray(2_000_000)
del first  # glibc, left alone, now raises its threshold above this size
mapped = libc.mallinfo2().hblkhd
second = bytearray(1_500_000)
print(libc.mallinfo2().hblkhd - mapped)
"""


def mapped_for_second_buffer(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True,
                          text=True, check=True)
    return int(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_large_buffers_stay_mappings_of_their_own_once_pinned() -> None:
    assert mapped_for_second_buffer("default") == 0  # from the heap: what the soak saw grow
    assert mapped_for_second_buffer("pinned") >= 1_500_000
