"""Cross-request micro-batching: concurrent requests' inputs share upstream calls.

One ``Batcher`` per backend. A request's inputs become a ``Ticket`` in the lane of its model
and upstream address. A call is formed from the lane's tickets in arrival order, up to the
adapter's limits (inputs per call, request body bytes), with identical inputs sent once; each
ticket gets exactly its own rows back, in its own order, and its share of the call's ``usage``.

When the upstream is idle a request goes out at once; requests that arrive while calls are in
flight gather for the next call. How many calls may be in flight is the ``concurrency`` limit
of the upstream address (learnt, or configured); a call that is already full goes out whenever
the hard ceiling allows. One request's calls in flight are bounded (``max_calls_per_request``)
so that one huge batch cannot starve the others. The queue is bounded in inputs (429) and in
time (503), both with ``Retry-After``.

A merged call that the upstream rejects as bad input is retried request by request, so only
the guilty request gets the error; a 413 is answered by splitting the call smaller, and so is
a call refused for an over-long input, down to that input alone (``truncation.py``). Lanes are
per model, address and ``CallOptions``: requests whose calls would differ are never merged. A client
that goes away takes its inputs out of calls not yet sent, and a call whose every request has
gone away is cancelled.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections import deque
from collections.abc import AsyncIterator, Hashable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from .backends.base import Backend
from .concurrency import AdaptiveLimit, FixedLimit
from .config import ModelConfig
from .errors import GatewayError, QueueFull, Unavailable, UpstreamFailed, UpstreamRejected
from .metrics import Metrics
from .prompts import NO_OPTIONS, CallOptions
from .schemas import Embeddings, Inputs
from .truncation import InputTooLong, refusal

DEFAULT_CEILING = 256  # calls in flight to one address unless max_concurrency says otherwise


@dataclass(eq=False)
class Ticket:
    """One request's inputs while they are being embedded."""

    inputs: Inputs
    weights: Sequence[int]  # relative size of each input: shares a call's token count
    future: asyncio.Future[Embeddings]
    enqueued: float
    truncate: bool = False  # an over-long input is cut by the upstream rather than refused
    truncated: set[int] = field(default_factory=set)  # its inputs that were cut
    taken: int = 0  # inputs handed to calls so far
    answered: int = 0
    calls: int = 0  # calls in flight carrying some of its inputs
    vectors: np.ndarray | None = None
    tokens: float = 0.0

    @property
    def gone(self) -> bool:
        return self.future.done()

    def result(self) -> Embeddings:
        assert self.vectors is not None
        truncated = sorted(self.truncated) if self.truncate else None
        return Embeddings(self.vectors, round(self.tokens), truncated)


@dataclass(eq=False)
class Part:
    ticket: Ticket
    start: int
    stop: int
    rows: list[int]  # for each of the ticket's inputs start..stop, its row in the call


@dataclass(eq=False)
class Call:
    inputs: list[Any]
    parts: list[Part]
    full: bool
    address: Address | None = None  # where it counts against the limits, once sent
    released: bool = False


@dataclass(eq=False)
class Address:
    """One upstream address: its calls in flight and its concurrency limit."""

    limit: AdaptiveLimit | FixedLimit
    lanes: list[Lane] = field(default_factory=list)
    calls: int = 0
    inputs: int = 0
    waiting: list[asyncio.Future[None]] = field(default_factory=list)  # calls held (hold())


@dataclass(eq=False)
class Lane:
    model: str
    options: ModelConfig
    base_url: str
    address: Address
    call: CallOptions
    queue: deque[Ticket] = field(default_factory=deque)


def _key(item: Any) -> Hashable:
    return item if isinstance(item, str) else item.tobytes()  # token ids: a uint32 array


class Batcher:
    def __init__(self, backend: Backend, metrics: Metrics) -> None:
        self.backend = backend
        self.config = backend.config
        self.metrics = metrics
        self.name = backend.name
        self.lanes: dict[tuple[str, str, CallOptions], Lane] = {}
        self.addresses: dict[str, Address] = {}
        self.queued_inputs = 0
        self._calls: dict[asyncio.Task[None], Call] = {}

    # -- what the router calls ------------------------------------------------------------

    async def embed(
        self, base_url: str, model: str, options: ModelConfig, inputs: Inputs, *,
        call: CallOptions = NO_OPTIONS, truncate: bool = False,
    ) -> Embeddings:
        """Vectors for ``inputs`` of ``model`` from the upstream at ``base_url``, which the
        caller holds a lease on for as long as this runs. ``call``: what the upstream call
        carries beyond the inputs; ``truncate``: cut over-long inputs rather than refuse."""
        if self.queued_inputs + len(inputs) > self.config.max_queued_inputs:
            raise QueueFull(
                f"backend {self.name!r} has {self.queued_inputs} inputs waiting to be sent "
                f"(max_queued_inputs {self.config.max_queued_inputs}); retry shortly",
                retry_after=1,
            )
        lane = self._lane(base_url, model, options, call)
        if self._alone(lane, inputs):
            return await self._embed_alone(lane, inputs, truncate)
        loop = asyncio.get_running_loop()
        weights = [len(item) for item in inputs]
        ticket = Ticket(inputs, weights, loop.create_future(), time.monotonic(), truncate)
        lane.queue.append(ticket)
        self.queued_inputs += len(inputs)
        self._pump(lane.address)
        expiry = None
        if ticket.taken < len(inputs):
            expiry = loop.call_later(self.config.max_queue_wait, self._expire, lane, ticket)
        try:
            return await ticket.future
        except asyncio.CancelledError:
            self._withdraw(lane, ticket, None)
            raise
        finally:
            if expiry is not None:
                expiry.cancel()

    def _alone(self, lane: Lane, inputs: Inputs) -> bool:
        """Can this request go out at once as a call of its own, with nothing to merge it
        with? (The common case at low load: it skips the queue, the ticket and a task.)"""
        address = lane.address
        return (
            not lane.queue
            and address.calls < address.limit.limit
            and len(inputs) <= self.backend.batch_limit(lane.options)
            and self.backend.request_byte_limit is None
            and self.backend.inflight_input_ceiling is None
            and (len(inputs) == 1 or (isinstance(inputs[0], str)
                                      and len(set(inputs)) == len(inputs)))
        )

    async def _embed_alone(self, lane: Lane, inputs: Inputs, truncate: bool) -> Embeddings:
        address = lane.address
        address.calls += 1
        address.inputs += len(inputs)
        in_flight = address.calls
        self.metrics.observe_upstream_call(backend=self.name, inputs=len(inputs), requests=1,
                                           deduplicated=0)
        started = time.monotonic()
        try:
            result = await self._call(lane, list(inputs))
        except GatewayError as exc:
            if exc.upstream_kind is not None:
                self.metrics.upstream_error(backend=self.name, kind=exc.upstream_kind)
            if not isinstance(exc, InputTooLong) and (exc.status != 413 or len(inputs) == 1):
                raise
            too_big = exc
        else:
            address.limit.observe(time.monotonic() - started, in_flight, len(inputs))
            if truncate:
                result.truncated = []
            return result
        finally:
            address.calls -= 1
            address.inputs -= len(inputs)
            self._pump(address)
        # the upstream's body limit is smaller than known, or an input is too long: split, as
        # for any call
        ticket = Ticket(inputs, [len(item) for item in inputs],
                        asyncio.get_running_loop().create_future(), started, truncate,
                        taken=len(inputs))
        part = Part(ticket, 0, len(inputs), list(range(len(inputs))))
        await self._recover(lane, Call(list(inputs), [part], full=True), too_big)
        return await ticket.future

    def refuse_waiting(self, reason: str) -> None:
        """Answer every request whose inputs still wait for a call with a retryable 503
        (a shutdown that ran out of time): better than a connection cut off."""
        for lane in self.lanes.values():
            for ticket in list(lane.queue):
                self._withdraw(lane, ticket, Unavailable(reason, retry_after=1))
        for address in self.addresses.values():  # calls held for a place (hold())
            for waiter in address.waiting:
                if not waiter.done():
                    waiter.set_exception(Unavailable(reason, retry_after=1))

    async def close(self) -> None:
        for task in list(self._calls):
            task.cancel()
        await asyncio.gather(*self._calls, return_exceptions=True)

    # -- lanes and addresses ----------------------------------------------------------------

    def address(self, base_url: str) -> Address:
        address = self.addresses.get(base_url)
        if address is None:
            configured = self.config.max_concurrency
            limit: AdaptiveLimit | FixedLimit
            if self.config.merge_mode == "wait":
                limit = (FixedLimit(configured) if configured is not None
                         else AdaptiveLimit(maximum=DEFAULT_CEILING))
            else:  # nothing is held back for merging: the upstream queues and batches
                limit = FixedLimit(configured or DEFAULT_CEILING)
            address = self.addresses[base_url] = Address(limit)
        return address

    def _lane(self, base_url: str, model: str, options: ModelConfig, call: CallOptions) -> Lane:
        lane = self.lanes.get((model, base_url, call))
        if lane is None:
            address = self.address(base_url)
            lane = self.lanes[(model, base_url, call)] = Lane(model, options, base_url, address,
                                                              call)
            address.lanes.append(lane)
        return lane

    @asynccontextmanager
    async def hold(self, base_url: str, inputs: int) -> AsyncIterator[None]:
        """A place for one call of ``inputs`` that is not an embedding call (a rerank call):
        it waits, at most ``max_queue_wait``, until the address has a call and the inputs to
        spare under the same ceilings as embedding calls, and counts against them while it
        runs."""
        address = self.address(base_url)
        deadline = time.monotonic() + self.config.max_queue_wait
        while not self._has_room(address, inputs):
            waiter = asyncio.get_running_loop().create_future()
            address.waiting.append(waiter)
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
                    await waiter
            except TimeoutError:
                raise Unavailable(
                    f"backend {self.name!r} had no room for this request within "
                    f"max_queue_wait ({self.config.max_queue_wait:g} s); retry later",
                    retry_after=5) from None
            finally:
                if waiter in address.waiting:
                    address.waiting.remove(waiter)
        address.calls += 1
        address.inputs += inputs
        try:
            yield
        finally:
            address.calls -= 1
            address.inputs -= inputs
            self._pump(address)

    def _has_room(self, address: Address, inputs: int) -> bool:
        room = self.backend.inflight_input_ceiling
        return address.calls < address.limit.maximum and (
            room is None or address.inputs == 0 or address.inputs + inputs <= room)

    # -- forming and sending calls ----------------------------------------------------------

    def _pump(self, address: Address) -> None:
        """Send every call the limits allow now, taking turns between the address's lanes."""
        sent = True
        while sent:
            sent = False
            for lane in address.lanes:
                if lane.queue and self._send_next(lane):
                    sent = True
        for waiter in address.waiting:  # held calls look again for room (hold())
            if not waiter.done():
                waiter.set_result(None)
        self.metrics.set_batch_state(
            backend=self.name, queued_inputs=self.queued_inputs,
            calls=sum(a.calls for a in self.addresses.values()),
            limit=sum(a.limit.limit for a in self.addresses.values()),
        )

    def _send_next(self, lane: Lane) -> bool:
        address = lane.address
        ceiling = address.limit.maximum
        if address.calls >= ceiling:
            return False
        room = self.backend.inflight_input_ceiling
        budget = self.backend.batch_limit(lane.options)
        if room is not None:
            if address.inputs >= room:
                return False
            budget = min(budget, room - address.inputs)
        call = self._plan(lane, budget)
        if call is None:
            return False
        if not call.full and address.calls >= address.limit.limit:
            address.limit.held()
            return False
        for part in call.parts:
            ticket = part.ticket
            ticket.taken, ticket.calls = part.stop, ticket.calls + 1
            self.queued_inputs -= part.stop - part.start
            if ticket.taken == len(ticket.inputs):
                lane.queue.remove(ticket)
                self.metrics.observe_batch_wait(
                    backend=self.name, seconds=time.monotonic() - ticket.enqueued)
        address.calls += 1
        address.inputs += len(call.inputs)
        call.address = address
        task = asyncio.create_task(self._run(lane, call, address.calls))
        self._calls[task] = call
        task.add_done_callback(self._forget)
        return True

    def _forget(self, task: asyncio.Task[None]) -> None:
        call = self._calls.pop(task)
        if call.address is not None:
            self._release(call.address, call)

    def _plan(self, lane: Lane, budget: int) -> Call | None:
        """The next call from the lane's queue, without taking anything yet."""
        per_request = self.config.max_calls_per_request
        byte_limit = self.backend.request_byte_limit
        merge = self.config.merge_mode != "off"
        unique: dict[Hashable, int] = {}
        sent: list[Any] = []
        parts: list[Part] = []
        size = 0
        full = False
        for ticket in lane.queue:
            if ticket.calls >= per_request:
                continue
            if merge is False and parts:
                break
            inputs, start = ticket.inputs, ticket.taken
            rows: list[int] = []
            index = start
            while index < len(inputs):
                key = _key(inputs[index])
                row = unique.get(key)
                if row is None:
                    if len(sent) >= budget:
                        full = True
                        break
                    if byte_limit is not None:
                        cost = len(orjson.dumps(inputs[index],
                                                option=orjson.OPT_SERIALIZE_NUMPY)) + 1
                        if sent and size + cost > byte_limit:
                            full = True
                            break
                        size += cost
                    row = unique[key] = len(sent)
                    sent.append(inputs[index])
                rows.append(row)
                index += 1
            if index > start:
                parts.append(Part(ticket, start, index, rows))
            if full:
                break
        if not parts:
            return None
        return Call(sent, parts, full or len(sent) >= budget)

    async def _run(self, lane: Lane, call: Call, in_flight: int) -> None:
        started = time.monotonic()
        self.metrics.observe_upstream_call(
            backend=self.name, inputs=len(call.inputs), requests=len(call.parts),
            deduplicated=sum(p.stop - p.start for p in call.parts) - len(call.inputs),
        )
        try:
            result = await self._call(lane, call.inputs)
            lane.address.limit.observe(time.monotonic() - started, in_flight,
                                       len(call.inputs))
            self._release(lane.address, call)  # the next call goes before its answers
            self._deliver(lane, call.parts, result)
        except asyncio.CancelledError:
            self._fail(lane, call.parts, Unavailable(
                f"backend {self.name!r} was reconfigured while the request was in flight; "
                "retry", retry_after=1))
            raise
        except GatewayError as exc:
            if exc.upstream_kind is not None:
                self.metrics.upstream_error(backend=self.name, kind=exc.upstream_kind)
            await self._recover(lane, call, exc)

    def _release(self, address: Address, call: Call) -> None:
        """Free the call's place and send what waited for it, before anything else: the
        upstream's next batch should not wait for this call's bookkeeping. Once per call,
        also for a call task cancelled before it ever ran (its ``finally`` never runs)."""
        if call.released:
            return
        call.released = True
        address.calls -= 1
        address.inputs -= len(call.inputs)
        for part in call.parts:
            part.ticket.calls -= 1
        self._pump(address)

    async def _call(self, lane: Lane, inputs: list[Any], truncate: bool = False) -> Embeddings:
        return await self.backend.embed(lane.base_url, lane.model, lane.options, inputs,
                                        options=lane.call, truncate=truncate)

    async def _recover(self, lane: Lane, call: Call, error: GatewayError) -> None:
        """A failed call: its requests get the error, unless the error is about one input
        (then each request is tried alone) or the body's size (then the call is split)."""
        live = [part for part in call.parts if not part.ticket.gone]
        if isinstance(error, InputTooLong) and len(call.inputs) == 1:
            await self._too_long(lane, live, error)
            return
        if (error.status == 413 or isinstance(error, InputTooLong)) and len(call.inputs) > 1:
            half = len(call.inputs) // 2
            await asyncio.gather(*(
                self._retry(lane, parts) for parts in _split(live, half)
            ))
            return
        if isinstance(error, UpstreamRejected) and len({id(p.ticket) for p in live}) > 1:
            by_ticket: dict[int, list[Part]] = {}
            for part in live:
                by_ticket.setdefault(id(part.ticket), []).append(part)
            await asyncio.gather(*(self._retry(lane, parts) for parts in by_ticket.values()))
            return
        self._fail(lane, live, error)

    async def _too_long(self, lane: Lane, parts: list[Part], error: InputTooLong) -> None:
        """One input, refused alone as too long: each request that has it is refused with its
        index, or has it cut by the upstream, as the request asked."""
        limit = self.backend.input_limit(lane.model, lane.options)
        for part in parts:
            if not part.ticket.truncate:
                self._fail(lane, [part], refusal(error, index=part.start, model=lane.model,
                                                 limit=limit))
        cut = [Part(p.ticket, p.start, p.stop, [0] * (p.stop - p.start))
               for p in parts if p.ticket.truncate]
        if not cut:
            return
        try:
            result = await self._call(lane, [cut[0].ticket.inputs[cut[0].start]], truncate=True)
        except GatewayError as exc:
            self._fail(lane, cut, exc)
            return
        for part in cut:
            part.ticket.truncated.update(range(part.start, part.stop))
        self._deliver(lane, cut, result)

    async def _retry(self, lane: Lane, parts: list[Part]) -> None:
        """Send ``parts`` again as a call of their own (their inputs are already in flight:
        they count against no queue)."""
        unique: dict[Hashable, int] = {}
        inputs: list[Any] = []
        again: list[Part] = []
        for part in parts:
            rows = []
            for index in range(part.start, part.stop):
                item = part.ticket.inputs[index]
                row = unique.setdefault(_key(item), len(inputs))
                if row == len(inputs):
                    inputs.append(item)
                rows.append(row)
            again.append(Part(part.ticket, part.start, part.stop, rows))
        call = Call(inputs, again, full=True)
        try:
            result = await self._call(lane, inputs)
        except GatewayError as exc:
            await self._recover(lane, call, exc)
        else:
            self._deliver(lane, again, result)

    def _deliver(self, lane: Lane, parts: list[Part], result: Embeddings) -> None:
        vectors = result.vectors
        weight = {id(part): sum(part.ticket.weights[part.start:part.stop]) for part in parts}
        total = sum(weight.values()) or 1
        for part in parts:
            ticket = part.ticket
            if ticket.gone:
                continue
            count = part.stop - part.start
            ticket.tokens += result.prompt_tokens * weight[id(part)] / total
            identity = count == len(vectors) and part.rows == list(range(count))
            if identity and count == len(ticket.inputs):
                ticket.vectors = vectors
            else:
                if ticket.vectors is None:
                    ticket.vectors = np.empty((len(ticket.inputs), vectors.shape[1]), np.float32)
                elif ticket.vectors.shape[1] != vectors.shape[1]:
                    self.metrics.upstream_error(backend=self.name, kind="mismatch")
                    self._fail(lane, [part], UpstreamFailed(
                        f"upstream {self.name!r} returned vectors of "
                        f"{ticket.vectors.shape[1]} and {vectors.shape[1]} dimensions for one "
                        f"request to {lane.model!r}; they were discarded",
                        code="model_mismatch", upstream_kind="mismatch"))
                    continue
                ticket.vectors[part.start:part.stop] = vectors[part.rows]
            ticket.answered += count
            if ticket.answered == len(ticket.inputs):
                ticket.future.set_result(ticket.result())

    def _fail(self, lane: Lane, parts: list[Part], error: GatewayError) -> None:
        for ticket in {id(p.ticket): p.ticket for p in parts}.values():
            self._withdraw(lane, ticket, copy.copy(error))

    def _withdraw(self, lane: Lane, ticket: Ticket, error: GatewayError | None) -> None:
        """Take the ticket's inputs out of the queue and end it: with ``error``, or (its
        client went away) silently. A call left carrying only gone tickets is cancelled."""
        if ticket.taken < len(ticket.inputs):
            self.queued_inputs -= len(ticket.inputs) - ticket.taken
            ticket.taken = len(ticket.inputs)
            lane.queue.remove(ticket)
        if not ticket.future.done():
            if error is None:
                ticket.future.cancel()
            else:
                ticket.future.set_exception(error)
        if error is None:
            for task, call in list(self._calls.items()):
                if all(p.ticket.gone for p in call.parts):
                    task.cancel()
        self._pump(lane.address)

    def _expire(self, lane: Lane, ticket: Ticket) -> None:
        if ticket.taken < len(ticket.inputs) and not ticket.gone:
            self._withdraw(lane, ticket, Unavailable(
                f"backend {self.name!r} could not take this request within max_queue_wait "
                f"({self.config.max_queue_wait:g} s); retry later", retry_after=5))


def _split(parts: list[Part], half: int) -> list[list[Part]]:
    """The parts of a call as two calls of about ``half`` distinct inputs each."""
    first: list[Part] = []
    second: list[Part] = []
    seen = 0
    for part in parts:
        count = part.stop - part.start
        if seen + count <= half or not first:
            cut = min(count, max(half - seen, 1))
            first.append(Part(part.ticket, part.start, part.start + cut, []))
            if cut < count:
                second.append(Part(part.ticket, part.start + cut, part.stop, []))
        else:
            second.append(Part(part.ticket, part.start, part.stop, []))
        seen += count
    return [p for p in (first, second) if p]
