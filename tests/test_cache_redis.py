"""The shared tier on a real ``redis-server``: two gateways sharing it, Redis killed, restarted
and frozen under load without a failed request, and a model whose weights change under the
same name in the middle of a cached load without one wrong vector, in memory and in Redis."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from tests.cache_support import (
    DIMS,
    MODEL,
    Gateway,
    expected,
    gateway_for,
    metric,
    sent,
    tei,
)
from tests.fakes.tei import TeiState
from tests.fakes.vectors import fake_vector
from tests.redis_support import RedisServer, redis_server

POOL = [f"corpus chunk {i}" for i in range(60)]
WAIT = 15.0


def shared(server: RedisServer, **extra: object) -> dict[str, object]:
    # a bound generous enough for a busy test machine: only a frozen Redis passes it
    return {"redis": {"url": server.url, "timeout": 1.0, "retry_after": 0.3, **extra}}


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_two_gateways_share_vectors_through_redis(tmp_path: Path) -> None:
    async with redis_server(tmp_path) as server, tei() as (upstream, fake), \
            gateway_for(upstream, cache=shared(server)) as first, \
            gateway_for(upstream, cache={"memory_bytes": 0, **shared(server)}) as second:
        texts = POOL[:20]
        assert (await first.embed(texts)).cached == 0
        await until(lambda: _has_keys(server, 20), "the writes to reach Redis")
        fake.requests.clear()
        answer = await second.embed([*texts[::-1], "fresh"])
        assert answer.status == 200 and answer.cached == 20
        assert sent(fake) == ["fresh"]
        for text, vector in zip([*texts[::-1], "fresh"], answer.vectors(), strict=True):
            np.testing.assert_allclose(vector, expected(fake, text), atol=1e-6)
        metrics = await second.get("/metrics")
        assert metric(metrics, "embedding_gateway_cache_hits_total", model=MODEL,
                      tier="redis") == 20
        health = await second.get("/health")
        assert health["status"] == "ok" and health["cache"]["redis"]["state"] == "up"
        assert "memory" not in health["cache"]
        values = server.client().mget(server.keys())
        assert all(len(value) == DIMS * 4 for value in values)  # raw float32 bytes


async def _has_keys(server: RedisServer, count: int) -> bool:
    return len(server.keys()) >= count


async def _load(gateways: list[Gateway], fake: TeiState, stop: asyncio.Event,
                failures: list[str], *, workers: int = 6) -> int:
    """Requests of repeated texts until ``stop``; every answer checked row by row."""
    done = 0

    async def worker(seed: int) -> None:
        nonlocal done
        rng = random.Random(seed)
        while not stop.is_set():
            texts = rng.sample(POOL, 8)
            answer = await gateways[seed % len(gateways)].embed(texts)
            if answer.status != 200:
                failures.append(f"{answer.status}: {answer.body}")
                continue
            for text, vector in zip(texts, answer.vectors(), strict=True):
                if not np.allclose(vector, expected(fake, text), atol=1e-6):
                    failures.append(f"wrong vector for {text!r}")
            done += 1

    await asyncio.gather(*(worker(seed) for seed in range(workers)))
    return done


async def test_redis_killed_restarted_and_frozen_under_load_fails_no_request(
        tmp_path: Path) -> None:
    async with redis_server(tmp_path) as server, tei() as (upstream, fake), \
            gateway_for(upstream, cache={"memory_bytes": 0, **shared(server)}) as gateway:
        stop, failures = asyncio.Event(), []
        with capture_logs() as logs:
            load = asyncio.create_task(_load([gateway], fake, stop, failures))
            await until(lambda: _has_keys(server, 40), "a warm Redis")
            server.kill()
            await until(lambda: _redis_state(gateway, "down"), "Redis seen down")
            await asyncio.sleep(0.8)  # several retries against a dead Redis
            await server.start()  # empty again: no persistence
            await until(lambda: _redis_state(gateway, "up"), "Redis seen up")
            await until(lambda: _has_keys(server, 20), "Redis filled again")
            server.pause()  # it takes connections but answers nothing: a slow Redis
            await until(lambda: _redis_state(gateway, "down"), "a frozen Redis seen down")
            await asyncio.sleep(1.0)
            server.resume()
            await until(lambda: _redis_state(gateway, "up"), "Redis answering again")
            stop.set()
            answered = await load
        assert failures == []
        assert answered > 50
        events = [entry["event"] for entry in logs if entry["event"].startswith("cache_redis")]
        pairs = len(events) // 2  # once per change of state: down and up alternate
        assert pairs >= 2 and events == ["cache_redis_down", "cache_redis_up"] * pairs
        metrics = await gateway.get("/metrics")
        assert metric(metrics, "embedding_gateway_cache_redis_errors_total", model=MODEL) > 0
        assert metric(metrics, "embedding_gateway_cache_hits_total", model=MODEL,
                      tier="redis") > 0


async def _redis_state(gateway: Gateway, state: str) -> bool:
    return bool((await gateway.get("/health"))["cache"]["redis"]["state"] == state)


@pytest.mark.parametrize("tiers", ["memory", "memory and redis"])
async def test_new_weights_under_the_same_name_mid_load_never_get_old_vectors(
        tmp_path: Path, tiers: str) -> None:
    async with redis_server(tmp_path) as server, tei(sha="rev-a") as (upstream, fake):
        cache = {} if tiers == "memory" else shared(server)
        other = {"memory_bytes": 0, **shared(server)} if tiers != "memory" else {}
        async with gateway_for(upstream, cache=cache) as first, \
                gateway_for(upstream, cache=other) as second:
            gateways = [first, second]
            seen: list[tuple[float, str, np.ndarray, int]] = []

            async def worker(seed: int, stop: asyncio.Event) -> None:
                rng = random.Random(seed)
                while not stop.is_set():
                    texts = rng.sample(POOL[:30], 6)
                    started = time.monotonic()
                    answer = await gateways[seed % 2].embed(texts)
                    assert answer.status == 200, answer.body
                    seen.extend((started, t, v, answer.cached)
                                for t, v in zip(texts, answer.vectors(), strict=True))

            stop = asyncio.Event()
            load = asyncio.gather(*(worker(seed, stop) for seed in range(6)))
            await asyncio.sleep(1.0)  # the corpus is cached by now
            fake.model_sha = "rev-b"  # new weights under the same name
            await until(lambda: _both_report(gateways, "rev-b"), "the new revision seen")
            known = time.monotonic()
            await asyncio.sleep(1.0)
            stop.set()
            await load
        old = {t: fake_vector(f"{MODEL}@rev-a", t, DIMS) for t in POOL}
        new = {t: fake_vector(f"{MODEL}@rev-b", t, DIMS) for t in POOL}
        wrong = [text for started, text, vector, _ in seen
                 if not np.allclose(vector, new[text], atol=1e-6)
                 and (started > known or not np.allclose(vector, old[text], atol=1e-6))]
        assert wrong == []
        after = [cached for started, _, _, cached in seen if started > known]
        assert sum(after) > 0  # the cache kept answering with the new weights' vectors
        if tiers != "memory":
            assert server.keys()  # old entries are still in Redis, never served


async def _both_report(gateways: list[Gateway], revision: str) -> bool:
    cards = [await gateway.model_card() for gateway in gateways]
    return all(card["revision"] == revision for card in cards)
