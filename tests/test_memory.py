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


# Heap pages freed by a large request: 60 KB buffers (below the pinned threshold, as a large
# request's decoded texts are) all freed but the last, which pins the heap's top as a live
# object does; then the event loop runs with or without trim_soon().
TRIM_SCRIPT = """
import asyncio, sys
from pathlib import Path
from embedding_gateway import memory

def rss_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

async def main(trim):
    memory.pin_mmap_threshold()
    buffers = [bytearray(60_000) for _ in range(4000)]
    pin = buffers[-1]
    del buffers[:]
    before = rss_mb()
    if trim:
        assert memory.trim_soon()
        assert not memory.trim_soon()  # one trim for requests that end together
    await asyncio.sleep(memory.TRIM_DELAY + 0.3)
    print(before - rss_mb(), len(pin))

asyncio.run(main(sys.argv[1] == "trim"))
"""


def released_mb(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", TRIM_SCRIPT, mode], capture_output=True,
                          text=True, check=True)
    return float(done.stdout.split()[0])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator")
def test_heap_pages_a_large_request_freed_are_given_back() -> None:
    assert released_mb("keep") < 20  # glibc alone keeps the 240 MB freed
    assert released_mb("trim") > 200
