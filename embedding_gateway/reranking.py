"""One rerank request as upstream calls: split to the adapter's batch limit, scored
concurrently within the backend's bounds, merged back into the client's order.

Rerank calls stay out of the embedding lanes (a call carries one query, so two requests'
documents cannot share it), but they count against the same ceilings of the upstream address
as embedding calls (``Batcher.hold``): calls in flight, and inputs in flight where the
upstream says how many it takes. One request has at most ``max_calls_per_request`` calls in
flight. Every chunk's scores come from the same model with the same activation, so scores
from different calls of one request compare; the first failed call fails the request and
cancels the others.
"""

from __future__ import annotations

import asyncio

import numpy as np

from .batching import Batcher
from .config import ModelConfig
from .errors import GatewayError, QueueFull
from .rerank_schemas import Scores


def chunks(count: int, size: int) -> list[range]:
    """``range(count)`` in consecutive pieces of at most ``size``, as even as possible: 70
    documents at 32 a call are 24 + 23 + 23, not 32 + 32 + 6."""
    calls = -(-count // size)
    base, extra = divmod(count, calls)
    pieces, start = [], 0
    for call in range(calls):
        stop = start + base + (call < extra)
        pieces.append(range(start, stop))
        start = stop
    return pieces


async def rerank_documents(batcher: Batcher, base_url: str, model: str, options: ModelConfig,
                           query: str, documents: list[str]) -> Scores:
    backend = batcher.backend
    config = batcher.config
    if batcher.queued_inputs + len(documents) > config.max_queued_inputs:
        raise QueueFull(
            f"backend {batcher.name!r} has {batcher.queued_inputs} inputs waiting to be sent "
            f"(max_queued_inputs {config.max_queued_inputs}); retry shortly", retry_after=1)
    scores = np.empty(len(documents))
    tokens = 0
    per_request = asyncio.Semaphore(config.max_calls_per_request)

    async def score(piece: range) -> None:
        nonlocal tokens
        async with per_request:
            batcher.queued_inputs += len(piece)
            held = False
            try:
                async with batcher.hold(base_url, len(piece)):
                    batcher.queued_inputs -= len(piece)
                    held = True
                    batcher.metrics.observe_upstream_call(
                        backend=batcher.name, inputs=len(piece), requests=1, deduplicated=0)
                    result = await backend.rerank(
                        base_url, model, options, query, documents[piece.start:piece.stop])
            except GatewayError as exc:
                if exc.upstream_kind is not None:
                    batcher.metrics.upstream_error(backend=batcher.name, kind=exc.upstream_kind)
                raise
            finally:
                if not held:
                    batcher.queued_inputs -= len(piece)
        scores[piece.start:piece.stop] = result.scores
        tokens += result.prompt_tokens

    tasks = [asyncio.ensure_future(score(piece))
             for piece in chunks(len(documents), backend.batch_limit(options))]
    try:
        await asyncio.gather(*tasks)  # the first failure comes out at once
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return Scores(scores, tokens)
