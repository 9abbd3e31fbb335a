"""The per-input embedding cache: tiers in front of the upstream, and one computation per input.

A request's inputs are looked up tier by tier (memory, then the shared tier); those found
are answered from there, the rest go upstream through the router's ``compute`` (the
batcher), and the answer is assembled in the client's order. An input already being computed
for another request is awaited rather than computed again (single flight); if that
computation fails or its client goes away, the waiter computes it itself.

Entries live under a namespace (``cache_keys.namespace``: the model's fingerprint and the
options that change a vector), so a model whose weights change never meets its old entries.
Vectors are stored whole, as float32: ``dimensions`` and the encoding are applied after.
"""

from __future__ import annotations

import asyncio
import enum
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any

import numpy as np

from .cache_keys import Item
from .metrics import Metrics
from .schemas import Embeddings, Inputs

Compute = Callable[[Inputs], Awaitable[Embeddings]]
ENTRY_OVERHEAD = 256  # bytes of bookkeeping per memory entry beside its vector and input


class CacheMode(enum.Enum):
    USE = "use"  # read, then compute and store what is missing
    REFRESH = "refresh"  # Cache-Control: no-cache: compute everything, store the results
    BYPASS = "bypass"  # no-store, cache: false, or no fingerprint: neither read nor write


def cache_mode(cache_control: str | None) -> CacheMode:
    """A request's ``Cache-Control``: ``no-store`` wins over ``no-cache``."""
    if not cache_control:
        return CacheMode.USE
    directives = {part.strip().split("=", 1)[0].lower() for part in cache_control.split(",")}
    if "no-store" in directives:
        return CacheMode.BYPASS
    return CacheMode.REFRESH if "no-cache" in directives else CacheMode.USE


def input_key(item: Item) -> Hashable:
    return item if isinstance(item, str) else item.tobytes()  # token ids: a uint32 array


class Tier(ABC):
    """One place vectors are kept. A tier never fails a request: what it cannot answer is a
    miss, and what it cannot store is dropped."""

    name: str

    @abstractmethod
    async def get(self, model: str, namespace: str,
                  items: Sequence[Item]) -> list[np.ndarray | None]:
        """The vector of each item, or ``None`` where it has none."""

    @abstractmethod
    def put(self, model: str, namespace: str, items: Sequence[Item],
            vectors: Sequence[np.ndarray]) -> None:
        """Keep these vectors (float32 rows); may finish in the background."""

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """What ``/health`` shows of this tier."""

    async def close(self) -> None:  # noqa: B027 - only tiers with connections have work here
        """Release what the tier holds."""


class MemoryTier(Tier):
    """An in-process LRU bounded by bytes: vectors, inputs and bookkeeping all counted."""

    name = "memory"

    def __init__(self, max_bytes: int, metrics: Metrics) -> None:
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.entries: OrderedDict[tuple[str, Hashable], tuple[np.ndarray, int, str]] = \
            OrderedDict()
        self.bytes = 0
        self.bytes_by_model: dict[str, int] = {}

    async def get(self, model: str, namespace: str,
                  items: Sequence[Item]) -> list[np.ndarray | None]:
        entries = self.entries
        found: list[np.ndarray | None] = []
        for item in items:
            key = (namespace, input_key(item))
            entry = entries.get(key)
            if entry is None:
                found.append(None)
            else:
                entries.move_to_end(key)
                found.append(entry[0])
        return found

    def put(self, model: str, namespace: str, items: Sequence[Item],
            vectors: Sequence[np.ndarray]) -> None:
        changed = {model}
        for item, vector in zip(items, vectors, strict=True):
            stored = np.array(vector, dtype=np.float32)  # a copy: not a view of a whole batch
            stored.flags.writeable = False
            size = stored.nbytes + (len(item) if isinstance(item, str) else item.nbytes) \
                + ENTRY_OVERHEAD
            if size > self.max_bytes:
                continue
            key = (namespace, input_key(item))
            old = self.entries.pop(key, None)
            if old is not None:
                self._account(old[2], -old[1])
            self.entries[key] = (stored, size, model)
            self._account(model, size)
            while self.bytes > self.max_bytes:
                _, (_, evicted_size, evicted_model) = self.entries.popitem(last=False)
                self._account(evicted_model, -evicted_size)
                self.metrics.cache_evicted(model=evicted_model)
                changed.add(evicted_model)
        for name in changed:
            self.metrics.set_cache_bytes(model=name, tier=self.name,
                                         size=self.bytes_by_model.get(name, 0))

    def _account(self, model: str, size: int) -> None:
        self.bytes += size
        self.bytes_by_model[model] = self.bytes_by_model.get(model, 0) + size

    def state(self) -> dict[str, Any]:
        return {"state": "on", "entries": len(self.entries), "bytes": self.bytes,
                "max_bytes": self.max_bytes}


class EmbeddingCache:
    """The tiers in order, and the computations in flight (namespace, input) -> their future."""

    def __init__(self, tiers: list[Tier], metrics: Metrics, *, unversioned: bool) -> None:
        self.tiers = tiers
        self.metrics = metrics
        self.unversioned = unversioned
        self.flights: dict[tuple[str, Hashable], asyncio.Future[np.ndarray | None]] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.tiers)

    def state(self) -> dict[str, Any]:
        return {tier.name: tier.state() for tier in self.tiers}

    async def close(self) -> None:
        for tier in self.tiers:
            await tier.close()

    async def embed(self, model: str, namespace: str, inputs: Inputs, compute: Compute,
                    mode: CacheMode = CacheMode.USE) -> Embeddings:
        """Vectors for ``inputs`` in their order: from the tiers where they are (``USE``),
        the rest from ``compute``. ``Embeddings.cached`` says how many came from a tier;
        ``prompt_tokens`` counts only what this request had computed."""
        if mode is CacheMode.BYPASS or not self.tiers:
            return await compute(inputs)
        count = len(inputs)
        found: list[np.ndarray | None] = [None] * count
        cached = 0
        if mode is CacheMode.USE:
            cached = await self._look_up(model, namespace, inputs, found)
        # the inputs still missing, once each, in order of first appearance
        positions: dict[Hashable, list[int]] = {}
        for index in range(count):
            if found[index] is None:
                positions.setdefault(input_key(inputs[index]), []).append(index)
        self.metrics.cache_lookup(model=model, misses=count - cached)
        cut: list[int] = []
        tokens, whole = await self._fill(model, namespace, inputs, found, positions, compute,
                                         mode, cut)
        if whole is not None:  # every input computed in one call, in order: its matrix as it is
            return Embeddings(whole, tokens, sorted(cut))
        if len({vector.shape[0] for vector in found}) != 1:  # type: ignore[union-attr]
            # entries of another length under this fingerprint: weights changed under it
            # before the gateway could tell. Nothing from the tiers is used.
            return await self.embed(model, namespace, inputs, compute, CacheMode.REFRESH)
        return Embeddings(np.vstack(found), tokens, sorted(cut),  # type: ignore[arg-type]
                          cached=cached)

    async def _fill(self, model: str, namespace: str, inputs: Inputs,
                    found: list[np.ndarray | None], positions: dict[Hashable, list[int]],
                    compute: Compute, mode: CacheMode,
                    cut: list[int]) -> tuple[int, np.ndarray | None]:
        """Compute the missing inputs at ``positions`` into ``found``, or wait for another
        request's computation of them; the positions of inputs the upstream cut go in
        ``cut``. Returns the tokens this request had computed, and the call's matrix when
        it holds every input in order."""
        joined: dict[Hashable, asyncio.Future[np.ndarray | None]] = {}
        own: list[Hashable] = []
        for key in positions:
            flight = self.flights.get((namespace, key)) if mode is CacheMode.USE else None
            if flight is not None:
                joined[key] = flight
            else:
                own.append(key)
        tokens = 0
        if own:
            result = await self._compute(model, namespace, [inputs[positions[k][0]] for k in own],
                                         own, compute)
            tokens = result.prompt_tokens
            cut += [i for row in result.truncated or () for i in positions[own[row]]]
            if len(own) == len(inputs):  # no hits, no duplicates, nothing shared
                return tokens, result.vectors
            for row, key in enumerate(own):
                for index in positions[key]:
                    found[index] = result.vectors[row]
        again: list[Hashable] = []
        for key, flight in joined.items():
            vector = await asyncio.shield(flight)  # our client leaving must not cancel theirs
            if vector is None:  # that computation failed or its client left: ours, then
                again.append(key)
                continue
            for index in positions[key]:
                found[index] = vector
        if joined:
            self.metrics.cache_shared(model=model, inputs=len(joined) - len(again))
        if again:
            result = await self._compute(model, namespace,
                                         [inputs[positions[k][0]] for k in again], [], compute)
            tokens += result.prompt_tokens
            cut += [i for row in result.truncated or () for i in positions[again[row]]]
            for row, key in enumerate(again):
                for index in positions[key]:
                    found[index] = result.vectors[row]
        return tokens, None

    async def _look_up(self, model: str, namespace: str, inputs: Inputs,
                       found: list[np.ndarray | None]) -> int:
        """Fill ``found`` from the tiers in order; what a later tier had is kept by the
        earlier ones too. Returns how many were found."""
        missing = list(range(len(inputs)))
        earlier: list[Tier] = []
        total = 0
        for tier in self.tiers:
            vectors = await tier.get(model, namespace, [inputs[i] for i in missing])
            hits = [i for i, vector in zip(missing, vectors, strict=True) if vector is not None]
            for i, vector in zip(missing, vectors, strict=True):
                if vector is not None:
                    found[i] = vector
            if hits:
                total += len(hits)
                self.metrics.cache_hit(model=model, tier=tier.name, inputs=len(hits))
                for previous in earlier:
                    previous.put(model, namespace, [inputs[i] for i in hits],
                                 [found[i] for i in hits])  # type: ignore[misc]
                missing = [i for i in missing if found[i] is None]
            if not missing:
                break
            earlier.append(tier)
        return total

    async def _compute(self, model: str, namespace: str, items: Inputs, keys: list[Hashable],
                       compute: Compute) -> Embeddings:
        """``compute(items)``, stored in every tier; ``keys`` (the items' own) are announced
        as in flight meanwhile, so that other requests wait for them instead. An input the
        upstream cut (``truncated``) is neither stored nor shared: each request that has it
        computes it, and so learns that it was cut."""
        loop = asyncio.get_running_loop()
        flights = {key: loop.create_future() for key in keys
                   if (namespace, key) not in self.flights}
        for key, flight in flights.items():
            self.flights[(namespace, key)] = flight
        result: Embeddings | None = None
        cut: set[int] = set()
        try:
            result = await compute(items)
            cut = set(result.truncated or ())
        finally:
            for row, key in enumerate(keys):
                flight = flights.get(key)
                if flight is None:
                    continue
                del self.flights[(namespace, key)]
                whole = result is not None and row not in cut
                flight.set_result(result.vectors[row] if whole else None)  # type: ignore[union-attr]
        kept = [row for row in range(len(items)) if row not in cut]
        for tier in self.tiers:
            tier.put(model, namespace, [items[row] for row in kept],
                     [result.vectors[row] for row in kept])
        return result
