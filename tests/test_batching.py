"""Cross-request batching end to end: a real gateway in front of fake vLLM and TEI servers.

Concurrent clients' inputs share upstream calls; each client checks that every row it got is
the vector of its own text. Merged calls respect the upstream's limits, one client's bad input
fails only that client, a client that hangs up takes its inputs out of calls not yet sent, and
the queue is bounded in inputs and in time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from embedding_gateway.batching import Ticket
from embedding_gateway.prompts import NO_OPTIONS
from embedding_gateway.state import GATEWAY
from tests.conftest import run_gateway, serve_app
from tests.fakes import FAKE_STATE, FakeState, serve_fake
from tests.fakes.tei import create_tei_app
from tests.fakes.vectors import fake_vector
from tests.fakes.vllm import create_vllm_app

MODEL = "intfloat/multilingual-e5-small"
DIMS = 32


@asynccontextmanager
async def through_gateway(
    app: web.Application, kind: str, **backend: Any
) -> AsyncIterator[tuple[str, FakeState, aiohttp.ClientSession]]:
    async with AsyncExitStack() as exits:
        upstream = await exits.enter_async_context(serve_fake(app))
        backend.setdefault("merge", "wait")  # TEI and vLLM default to eager
        config = {"backends": {"b": {"kind": kind, "base_url": upstream,
                                     "models": {MODEL: {}}, **backend}}}
        url = await exits.enter_async_context(run_gateway(config))
        session = await exits.enter_async_context(aiohttp.ClientSession())
        yield url, app[FAKE_STATE], session


async def embed(
    session: aiohttp.ClientSession, url: str, texts: list[str]
) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with session.post(f"{url}/v1/embeddings",
                            json={"model": MODEL, "input": texts}) as resp:
        return resp.status, await resp.json(), dict(resp.headers)


def assert_own_rows(body: dict[str, Any], texts: list[str]) -> None:
    assert [item["index"] for item in body["data"]] == list(range(len(texts)))
    for item, text in zip(body["data"], texts, strict=True):
        expected = fake_vector(MODEL, text, DIMS)
        assert np.allclose(item["embedding"], expected, atol=1e-6), text


def upstream_inputs(state: FakeState) -> list[list[str]]:
    return [body.get("input") or body["inputs"] for path, body in state.requests
            if path.endswith(("embeddings", "/embed"))]


async def test_concurrent_requests_share_calls_and_each_gets_its_own_rows() -> None:
    app = create_vllm_app(MODEL, dims=DIMS, error_shape="nested")
    app[FAKE_STATE].delay = 0.05  # calls overlap, so that requests arriving meanwhile gather
    async with through_gateway(app, "vllm") as (url, state, session):
        texts = [[f"client {c} text {i}" for i in range(1 + c % 3)] for c in range(40)]
        results = await asyncio.gather(*(embed(session, url, t) for t in texts))
        for (status, body, _), mine in zip(results, texts, strict=True):
            assert status == 200, body
            assert_own_rows(body, mine)
            assert body["usage"]["prompt_tokens"] > 0
        calls = upstream_inputs(state)
        assert sum(len(c) for c in calls) == sum(len(t) for t in texts)
        assert len(calls) < len(texts) / 2, f"{len(calls)} calls for {len(texts)} requests"
        metrics = await (await session.get(f"{url}/metrics")).text()
        assert f'embedding_gateway_upstream_calls_total{{backend="b"}} {len(calls)}.0' in metrics


async def test_servers_that_batch_by_themselves_get_every_request_at_once() -> None:
    """TEI and vLLM merge from their own queue better than the gateway can: by default
    nothing waits at the gateway, and there is no small cap on calls in flight."""
    app = create_tei_app(MODEL, dims=DIMS)
    app[FAKE_STATE].delay = 0.2
    async with through_gateway(app, "tei", merge=None) as (url, state, session):
        texts = [[f"eager {c}"] for c in range(12)]
        started = asyncio.get_running_loop().time()
        results = await asyncio.gather(*(embed(session, url, t) for t in texts))
        took = asyncio.get_running_loop().time() - started
        for (status, body, _), mine in zip(results, texts, strict=True):
            assert status == 200, body
            assert_own_rows(body, mine)
        assert len(upstream_inputs(state)) == len(texts)
        assert took < 0.6, f"{took:.2f} s: requests were sent one after another"


async def test_identical_inputs_in_one_call_are_sent_once() -> None:
    app = create_vllm_app(MODEL, dims=DIMS, error_shape="nested")
    app[FAKE_STATE].delay = 0.05
    async with through_gateway(app, "vllm") as (url, state, session):
        first = asyncio.create_task(embed(session, url, ["warm"]))
        await asyncio.sleep(0.01)  # in flight: the next ones gather behind it
        same = [["같은 문장", "other"], ["같은 문장"], ["같은 문장", "같은 문장"]]
        results = await asyncio.gather(*(embed(session, url, t) for t in same))
        assert (await first)[0] == 200
        for (status, body, _), mine in zip(results, same, strict=True):
            assert status == 200, body
            assert_own_rows(body, mine)
        calls = upstream_inputs(state)
        assert len(calls) == 2, calls  # the warm-up, then the three requests in one call
        assert sorted(calls[1]) == ["other", "같은 문장"]


async def test_one_poisoned_input_fails_only_its_own_request() -> None:
    app = create_tei_app(MODEL, dims=DIMS, max_input_length=8, auto_truncate=False)
    app[FAKE_STATE].delay = 0.05
    async with through_gateway(app, "tei") as (url, state, session):
        first = asyncio.create_task(embed(session, url, ["warm"]))
        await asyncio.sleep(0.01)
        poison = " ".join(["word"] * 50)
        texts = [[f"fine {c}", f"also fine {c}"] for c in range(6)]
        texts[3] = ["fine 3", poison]
        results = await asyncio.gather(*(embed(session, url, t) for t in texts))
        assert (await first)[0] == 200
        for index, ((status, body, _), mine) in enumerate(zip(results, texts, strict=True)):
            if index == 3:
                assert status == 400, body
                assert body["error"]["code"] == "input_too_long"
                assert body["error"]["message"].startswith("'input[1]' is 50 tokens long")
            else:
                assert status == 200, body
                assert_own_rows(body, mine)
        assert any(poison in call and len(call) > 2 for call in upstream_inputs(state)), (
            "the poisoned input never shared a call: nothing was isolated")


async def test_merged_calls_respect_the_batch_and_body_limits() -> None:
    app = create_tei_app(MODEL, dims=DIMS, max_client_batch_size=4)
    app[FAKE_STATE].delay = 0.02
    async with through_gateway(app, "tei", max_request_bytes=1500) as (url, state, session):
        await asyncio.sleep(0.6)  # /info read: the batch limit is TEI's own
        texts = [[f"{c}-{i} " + "x" * (40 + 30 * (i % 4)) for i in range(1 + c % 5)]
                 for c in range(24)]
        results = await asyncio.gather(*(embed(session, url, t) for t in texts))
        for (status, body, _), mine in zip(results, texts, strict=True):
            assert status == 200, body
            assert_own_rows(body, mine)
        calls = upstream_inputs(state)
        assert max(len(c) for c in calls) <= 4
        assert any(len(c) == 4 for c in calls)
        sizes = [len(str(c).encode()) for c in calls]
        assert max(sizes) <= 1500


@pytest.mark.parametrize("kind", ["tei", "vllm"])
async def test_a_413_splits_the_call_instead_of_failing_it(kind: str) -> None:
    """TEI's own limit is known (2 MB by default, but this one is smaller); vLLM's is not
    (a proxy in front of it may have one)."""
    app = (create_tei_app(MODEL, dims=DIMS, max_client_batch_size=64, payload_limit=3000)
           if kind == "tei" else create_vllm_app(MODEL, dims=DIMS, body_limit=3000))
    async with through_gateway(app, kind) as (url, state, session):
        texts = [f"{i} " + "y" * 300 for i in range(20)]  # ~6 kB: TEI's 2 MB default is wrong
        status, body, _ = await embed(session, url, texts)
        assert status == 200, body
        assert_own_rows(body, texts)
        assert len(upstream_inputs(state)) >= 3


async def test_a_client_that_hangs_up_takes_its_inputs_out_of_unsent_calls() -> None:
    app = create_vllm_app(MODEL, dims=DIMS, error_shape="nested")
    app[FAKE_STATE].delay = 0.3
    async with through_gateway(app, "vllm", max_concurrency=1) as (url, state, session):
        first = asyncio.create_task(embed(session, url, ["in flight"]))
        await asyncio.sleep(0.05)
        async with aiohttp.ClientSession() as leaving:
            gone = asyncio.create_task(embed(leaving, url, ["abandoned 1", "abandoned 2"]))
            await asyncio.sleep(0.05)
            gone.cancel()  # the connection closes with the session
        stays = asyncio.create_task(embed(session, url, ["stays"]))
        assert (await first)[0] == 200
        status, body, _ = await stays
        assert status == 200, body
        assert_own_rows(body, ["stays"])
        sent = [text for call in upstream_inputs(state) for text in call]
        assert "abandoned 1" not in sent and "abandoned 2" not in sent


async def test_past_the_queue_bound_requests_get_429_with_retry_after() -> None:
    app = create_vllm_app(MODEL, dims=DIMS, error_shape="nested")
    app[FAKE_STATE].delay = 0.3
    config = {"max_concurrency": 1, "max_queued_inputs": 4}
    async with through_gateway(app, "vllm", **config) as (url, _state, session):
        first = asyncio.create_task(embed(session, url, ["in flight"]))
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(embed(session, url, ["a", "b", "c"]))
        await asyncio.sleep(0.05)
        status, body, headers = await embed(session, url, ["d", "e"])
        assert status == 429 and headers["Retry-After"], body
        assert body["error"]["code"] == "queue_full"
        assert (await first)[0] == 200 and (await queued)[0] == 200


async def test_a_request_that_waits_too_long_gets_503_and_nothing_hangs() -> None:
    app = create_vllm_app(MODEL, dims=DIMS, error_shape="nested")
    app[FAKE_STATE].delay = 3.0  # its embedding calls hang; its /health does not
    config = {"max_concurrency": 1, "max_queue_wait": 0.2, "timeout": 1}
    async with through_gateway(app, "vllm", **config) as (url, state, session):
        stuck = asyncio.create_task(embed(session, url, ["stuck"]))
        await asyncio.sleep(0.05)
        status, body, headers = await asyncio.wait_for(embed(session, url, ["waits"]), 2)
        assert status == 503 and headers["Retry-After"], body
        assert "max_queue_wait" in body["error"]["message"]
        assert (await stuck)[0] == 504
        sent = [text for call in upstream_inputs(state) for text in call]
        assert "waits" not in sent


async def test_one_huge_request_does_not_starve_the_others() -> None:
    app = create_vllm_app(MODEL, dims=DIMS, error_shape="nested")
    app[FAKE_STATE].delay = 0.05
    config = {"max_batch": 8, "max_calls_per_request": 2, "max_concurrency": 3}
    async with through_gateway(app, "vllm", **config) as (url, _state, session):
        huge = [f"huge {i}" for i in range(160)]  # 20 calls, two at a time
        big = asyncio.create_task(embed(session, url, huge))
        await asyncio.sleep(0.02)
        small = [f"small {i}" for i in range(3)]
        status, body, _ = await asyncio.wait_for(embed(session, url, small), 1.5)
        assert status == 200, body
        assert not big.done(), "the small request should not wait for the whole big one"
        status, body, _ = await big
        assert status == 200
        assert_own_rows(body, huge)


async def test_a_shutdown_that_runs_out_of_time_answers_queued_requests_503() -> None:
    app = create_vllm_app(MODEL, dims=DIMS, error_shape="nested")
    app[FAKE_STATE].delay = 1.0
    backend = {"kind": "vllm", "merge": "wait", "max_concurrency": 1, "timeout": 5,
               "models": {MODEL: {}}}
    async with serve_fake(app) as upstream, aiohttp.ClientSession() as session:
        config = {"backends": {"b": {**backend, "base_url": upstream}}}
        async with serve_app(config) as (url, gateway_app):
            stuck = asyncio.create_task(embed(session, url, ["in flight"]))
            await asyncio.sleep(0.1)
            queued = asyncio.create_task(embed(session, url, ["queued"]))
            await asyncio.sleep(0.1)
            assert await gateway_app[GATEWAY].drain(0.2) == 2
            status, body, headers = await asyncio.wait_for(queued, 2)
            assert status == 503 and headers["Retry-After"], body
            assert (await stuck)[0] == 200


async def test_tei_never_gets_more_inputs_in_flight_than_its_permits() -> None:
    """TEI refuses a request at once (429) when its max_concurrent_requests permits, one per
    input, are used up; the gateway keeps within them, learnt from /info."""
    app = create_tei_app(MODEL, dims=DIMS, max_concurrent_requests=8, max_client_batch_size=4)
    app[FAKE_STATE].delay = 0.05
    async with through_gateway(app, "tei", merge=None) as (url, _state, session):
        await asyncio.sleep(0.6)  # /info has been read
        texts = [[f"permit {c} {i}" for i in range(1 + c % 3)] for c in range(32)]
        results = await asyncio.gather(*(embed(session, url, t) for t in texts))
        for (status, body, _), mine in zip(results, texts, strict=True):
            assert status == 200, body
            assert_own_rows(body, mine)


async def test_clients_hanging_up_at_any_moment_leave_nothing_behind() -> None:
    """Whenever a client hangs up (queued, in a call being formed, in flight), its place in
    the limits is given back: afterwards nothing is counted in flight or queued, and the
    next request goes straight through."""
    app = create_vllm_app(MODEL, dims=DIMS, error_shape="nested")
    app[FAKE_STATE].delay = 0.01
    backend = {"kind": "vllm", "merge": "wait", "models": {MODEL: {}}}
    rng = np.random.default_rng(7)
    config = {"backends": {"b": {**backend}}}
    async with serve_fake(app) as upstream, aiohttp.ClientSession() as session:
        config["backends"]["b"]["base_url"] = upstream
        async with serve_app(config) as (url, gateway_app):
            async def client(n: int) -> None:
                for i in range(12):
                    task = asyncio.ensure_future(embed(session, url, [f"{n} {i}"]))
                    if rng.random() < 0.4:
                        await asyncio.sleep(float(rng.uniform(0, 0.02)))
                        task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

            await asyncio.gather(*(client(n) for n in range(24)))
            await asyncio.sleep(0.2)
            batcher = gateway_app[GATEWAY].batchers["b"]
            assert batcher.queued_inputs == 0
            assert [a.calls for a in batcher.addresses.values()] == [0]
            status, body, _ = await asyncio.wait_for(embed(session, url, ["after"]), 2)
            assert status == 200, body


async def test_a_call_cancelled_before_it_ever_ran_gives_its_place_back() -> None:
    """The narrowest case of the one above, made to happen: a client's hang-up is handled
    in the same turn of the loop in which its call was formed, before the call's task runs
    (a soak run found it: the place stayed taken and every later request waited 30 s)."""
    app = create_vllm_app(MODEL, dims=DIMS, error_shape="nested")
    async with serve_fake(app) as upstream:
        config = {"backends": {"b": {"kind": "vllm", "merge": "wait", "base_url": upstream,
                                     "models": {MODEL: {}}}}}
        async with serve_app(config) as (_url, gateway_app):
            batcher = gateway_app[GATEWAY].batchers["b"]
            options = gateway_app[GATEWAY].config.backends["b"].models[MODEL]
            lane = batcher._lane(upstream, MODEL, options, NO_OPTIONS)
            loop = asyncio.get_running_loop()
            ticket = Ticket(["gone"], [4], loop.create_future(), loop.time())
            lane.queue.append(ticket)
            batcher.queued_inputs += 1
            batcher._pump(lane.address)  # the call is formed, its task not yet run
            assert lane.address.calls == 1
            batcher._withdraw(lane, ticket, None)  # the client hangs up: the call is cancelled
            await asyncio.sleep(0.05)
            assert lane.address.calls == 0 and lane.address.inputs == 0
            result = await asyncio.wait_for(batcher.embed(upstream, MODEL, options, ["next"]), 2)
            assert result.vectors.shape == (1, DIMS)
