"""A simulated accelerator for ``fast_upstream.py --accelerator``: GPU timing without a GPU.

An encoder on a GPU runs one batch at a time, and a batch costs about ``fixed + per_input * n``
(kernel launches and weights traffic, then the rows). The simulation only waits for that long
(``asyncio.sleep``), so it costs no CPU and a 2-core machine can drive it at GPU-like rates.

- ``batching`` (TEI, vLLM, Infinity): requests that arrive while a batch runs are queued, and
  the next batch takes all of them (up to ``max_batch`` inputs), whichever request they came in.
- ``serial`` (Ollama, many small OpenAI-compatible servers): one request at a time, in arrival
  order; a request's own inputs are its batch.

Every input gets the vector of its own text (``text_vector``), so a client can check that each
row it got back is the vector of the text it sent, and nothing else.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

Mode = Literal["batching", "serial"]
_BASIS_ROWS = 4096
_BASES: dict[int, np.ndarray] = {}


def _basis(dims: int) -> np.ndarray:
    basis = _BASES.get(dims)
    if basis is None:
        basis = np.random.default_rng(dims).standard_normal((_BASIS_ROWS, dims)).astype(np.float32)
        _BASES[dims] = basis
    return basis


def text_vector(item: str | list[int], dims: int) -> np.ndarray:
    """The unit vector of one input (text, or token ids): a fixed function of its content.

    A row of a shared random basis picked by the input's hash, with two more hash bytes
    written into its first values, then normalised: distinct inputs get distinct vectors
    (barring a 64-bit hash collision) at a few microseconds each.
    """
    raw = item.encode() if isinstance(item, str) else b"ids:" + ",".join(map(str, item)).encode()
    digest = int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little")
    vector = _basis(dims)[digest % _BASIS_ROWS].copy()
    vector[0] = ((digest >> 12) & 0xFFFF) / 65536.0 - 0.5
    vector[1 % dims] = ((digest >> 28) & 0xFFFF) / 65536.0 - 0.5
    return vector / np.linalg.norm(vector)


def text_vectors(items: list[Any], dims: int) -> np.ndarray:
    return np.vstack([text_vector(item, dims) for item in items])


@dataclass
class _Job:
    items: list[Any]
    done: asyncio.Future[None]

    @property
    def inputs(self) -> int:
        return len(self.items)


class Accelerator:
    """One device: ``await run(items)`` returns when a batch holding these inputs is done."""

    def __init__(
        self, mode: Mode, *, fixed_ms: float, per_input_ms: float, max_batch: int | None = None
    ) -> None:
        self.mode = mode
        self.fixed = fixed_ms / 1000
        self.per_input = per_input_ms / 1000
        self.max_batch = max_batch
        self.batches = 0
        self.inputs = 0
        self._queue: deque[_Job] = deque()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    def cost(self, inputs: int) -> float:
        return self.fixed + self.per_input * inputs

    async def run(self, items: list[Any]) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._work())
        job = _Job(items, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self._wake.set()
        await asyncio.shield(job.done)  # a client that leaves does not stop the device

    def _next_batch(self) -> list[_Job]:
        batch = [self._queue.popleft()]
        if self.mode == "serial":
            return batch
        total = batch[0].inputs
        while self._queue and (
            self.max_batch is None or total + self._queue[0].inputs <= self.max_batch
        ):
            job = self._queue.popleft()
            batch.append(job)
            total += job.inputs
        return batch

    async def _work(self) -> None:
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            batch = self._next_batch()
            items = [item for job in batch for item in job.items]
            await self.compute(items)
            self.batches += 1
            self.inputs += len(items)
            for job in batch:
                if not job.done.done():
                    job.done.set_result(None)

    def summary(self) -> str:
        return f"{self.batches} batches, {self.inputs} inputs"

    async def compute(self, items: list[Any]) -> None:
        """Run one batch: here, wait as long as the device would."""
        await asyncio.sleep(self.cost(len(items)))

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
