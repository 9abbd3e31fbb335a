"""``Gateway.reload``: unchanged backends are kept as they are, and a changed managed backend
hands its running containers to its successor instead of reloading the model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import docker
import pytest
from aiohttp import web

from embedding_gateway.config import ManagedConfig, parse_config
from embedding_gateway.runtimes.base import InstanceHandle, InstanceSpec
from embedding_gateway.state import GATEWAY
from tests.conftest import serve_app
from tests.docker_support import (
    clean_containers,  # noqa: F401
    docker_available,  # noqa: F401
    test_image,  # noqa: F401
    unique_name,
)
from tests.fake_runtime import FakeRuntime
from tests.fakes import serve_fake
from tests.fakes.tei import create_tei_app
from tests.fakes.vectors import which_model
from tests.fakes.vllm import create_vllm_app
from tests.ports import free_pair, free_port
from tests.test_supervisor import backend as fake_managed_backend
from tests.test_supervisor import until
from tests.test_supervisor_docker import DIMS, CountingDocker, containers, managed_backend


async def embed(session: aiohttp.ClientSession, url: str, model: str, text: str) -> list[float]:
    async with session.post(f"{url}/v1/embeddings", json={"model": model, "input": text}) as r:
        body = await r.json()
        assert r.status == 200, body
        return body["data"][0]["embedding"]


def one_managed_backend() -> dict[str, Any]:
    """Backend ``m`` with model ``m-a``, managed through a ``FakeRuntime``."""
    return {"server": {"playground": False},
            "backends": {"m": fake_managed_backend(free_pair(), ["m-a"])}}


@asynccontextmanager
async def managed_beside_a_vllm(
    runtime: FakeRuntime, config: dict[str, Any]
) -> AsyncIterator[tuple[str, str, web.Application, aiohttp.ClientSession]]:
    """The gateway of ``config`` serving, ``m-a`` loaded once, and a fake vLLM to add later.
    Yields the vLLM's URL, the gateway's URL and app, and a client session."""
    async with serve_fake(create_vllm_app("org/v", dims=DIMS)) as vllm, \
            serve_app(config, runtime_factory=lambda _: runtime) as (url, app), \
            aiohttp.ClientSession() as session:
        await embed(session, url, "m-a", "before")
        yield vllm, url, app, session


async def test_an_unchanged_managed_backend_keeps_its_loaded_instance() -> None:
    runtime = FakeRuntime()
    config = one_managed_backend()
    try:
        async with managed_beside_a_vllm(runtime, config) as (vllm, url, app, session):
            gateway = app[GATEWAY]
            supervisor = gateway.upstreams["m"]

            config["backends"]["v"] = {"kind": "vllm", "base_url": vllm,
                                       "models": {"org/v": {}}}
            await gateway.reload(parse_config(config, env={}))

            assert gateway.upstreams["m"] is supervisor
            assert which_model(await embed(session, url, "m-a", "after"), "after",
                               ["m-a"], DIMS) == "m-a"
            await embed(session, url, "org/v", "new backend")
            assert runtime.starts == ["m-a"]  # loaded once, before the reload
    finally:
        await runtime.shutdown()


@pytest.mark.docker
@pytest.mark.timeout(300)
async def test_a_changed_managed_backend_adopts_the_running_container(
    clean_containers: str,  # noqa: F811
) -> None:
    name, port = unique_name("reload"), free_port()
    runtimes: list[CountingDocker] = []

    def factory(managed: ManagedConfig) -> CountingDocker:
        runtimes.append(CountingDocker(managed))
        return runtimes[-1]

    config: dict[str, Any] = {
        "server": {"playground": False},
        "backends": {name: managed_backend(clean_containers, port, ["org/model-a"])},
    }
    client = docker.from_env()
    try:
        async with serve_app(config, runtime_factory=factory) as (url, app), \
                aiohttp.ClientSession() as session:
            await embed(session, url, "org/model-a", "before")
            [before] = [c.id for c in containers(client, name)]

            config["backends"][name]["models"]["org/model-b"] = {}  # the backend changes
            await app[GATEWAY].reload(parse_config(config, env={}))

            vector = await embed(session, url, "org/model-a", "after")
            assert which_model(vector, "after", ["org/model-a", "org/model-b"], DIMS) \
                == "org/model-a"
            assert [c.id for c in containers(client, name)] == [before]  # adopted, not redone
            assert len(runtimes) == 2 and runtimes[1].starts == []

            # A change to what the container runs with is applied: replaced, not adopted.
            config["backends"][name]["managed"]["env"] = {"EMBEDDING_FLAVOUR": "new"}
            await app[GATEWAY].reload(parse_config(config, env={}))
            await embed(session, url, "org/model-a", "replaced")
            [after] = [c.id for c in containers(client, name)]
            assert after != before
            assert runtimes[2].starts == ["org/model-a"]
    finally:
        client.close()


async def test_a_removed_managed_backend_stops_its_instances() -> None:
    runtime = FakeRuntime()
    config = one_managed_backend()
    try:
        async with managed_beside_a_vllm(runtime, config) as (vllm, url, app, session):
            config["backends"] = {"v": {"kind": "vllm", "base_url": vllm,
                                        "models": {"org/v": {}}}}
            await app[GATEWAY].reload(parse_config(config, env={}))
            assert runtime.stops == ["m-a"]  # no successor to adopt it: stopped, not leaked
            assert runtime.running() == []
            async with session.post(f"{url}/v1/embeddings",
                                    json={"model": "m-a", "input": "x"}) as resp:
                assert resp.status == 404
    finally:
        await runtime.shutdown()


async def test_requests_still_queued_when_the_drain_ends_get_a_503() -> None:
    runtime = FakeRuntime()
    runtime.start_delay = {"m-a": 30}
    config: dict[str, Any] = {
        "server": {"playground": False},
        "backends": {"m": fake_managed_backend(free_pair(), ["m-a"], start_timeout=60,
                                               queue_timeout=60)},
    }
    try:
        async with serve_app(config, runtime_factory=lambda _: runtime) as (url, app), \
                aiohttp.ClientSession() as session:
            async def queued() -> tuple[int, dict[str, Any], str | None]:
                async with session.post(f"{url}/v1/embeddings",
                                        json={"model": "m-a", "input": "x"}) as resp:
                    return resp.status, await resp.json(), resp.headers.get("Retry-After")

            request = asyncio.create_task(queued())
            async def starting() -> bool:
                return bool(runtime.starts)

            await until(starting, "the start began")
            assert await app[GATEWAY].drain(0.2) == 1
            status, body, retry_after = await asyncio.wait_for(request, 5)
            assert status == 503 and retry_after, body
            assert "shutting down" in body["error"]["message"]
    finally:
        await runtime.shutdown()


async def test_a_request_waiting_for_a_remote_check_survives_a_reload() -> None:
    """It waited on the backend's first check when the reload retired that backend."""
    app = create_tei_app("org/t", dims=DIMS)

    @web.middleware
    async def slow_info(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/info":
            await asyncio.sleep(1.0)
        return await handler(request)

    app.middlewares.append(slow_info)
    async with serve_fake(app) as tei:
        config: dict[str, Any] = {
            "server": {"playground": False, "health_timeout": 5},
            "backends": {"r": {"kind": "tei", "base_url": tei, "models": {"org/t": {}}}},
        }
        async with serve_app(config) as (url, gateway_app), aiohttp.ClientSession() as session:
            async def embed_once() -> int:
                async with session.post(f"{url}/v1/embeddings",
                                        json={"model": "org/t", "input": "x"}) as resp:
                    await resp.read()
                    return resp.status

            request = asyncio.create_task(embed_once())
            await asyncio.sleep(0.3)  # it now waits on the check of /info
            config["backends"]["r"]["max_concurrency"] = 8  # the backend changes
            await gateway_app[GATEWAY].reload(parse_config(config, env={}))
            assert await request in (200, 503)  # answered either way, never cut off


async def test_a_gateway_closed_during_a_reload_starts_nothing_afterwards() -> None:
    runtime = FakeRuntime()
    runtime.stop_delay = {"m-a": 1.0}
    config = one_managed_backend()
    config["server"]["shutdown_timeout"] = 0.2
    try:
        async with serve_app(config, runtime_factory=lambda _: runtime) as (_url, app):
            gateway = app[GATEWAY]
            async with gateway.upstreams["m"].lease("m-a"):
                pass
            config["backends"]["m"]["models"]["m-p"] = {"preload": True}
            reload = asyncio.create_task(gateway.reload(parse_config(config, env={})))
            await asyncio.sleep(0.4)  # the old supervisor is stopping m-a
            successor = gateway.upstreams["m"]
        # the gateway has closed (what a SIGTERM does); the reload then finishes
        await reload
        await asyncio.sleep(0.3)
        assert runtime.starts == ["m-a"]  # no preload of m-p after the close
        assert successor.closed
    finally:
        await runtime.shutdown()


async def test_a_start_cancelled_by_close_still_stops_what_it_started() -> None:
    """Docker's blocking start goes on in its thread after its waiter is cancelled."""

    class ThreadLikeRuntime(FakeRuntime):
        async def start(self, spec: InstanceSpec) -> InstanceHandle:
            async def in_a_thread() -> InstanceHandle:
                await asyncio.sleep(1.0)
                return await FakeRuntime.start(self, spec)

            return await asyncio.shield(asyncio.ensure_future(in_a_thread()))

    runtime = ThreadLikeRuntime()
    config = one_managed_backend()
    config["backends"]["m"]["models"]["m-a"] = {"preload": True}
    try:
        async with serve_app(config, runtime_factory=lambda _: runtime):
            await asyncio.sleep(0.3)  # the preload's start is under way; now the gateway stops
        await asyncio.sleep(1.2)  # long enough for a start left behind to have finished
        assert runtime.running() == []
        assert runtime.stops == ["m-a"]
    finally:
        await runtime.shutdown()


async def test_a_new_alias_or_idle_timeout_keeps_the_running_instance() -> None:
    """For TEI or vLLM a restart is a model load of minutes: a reload that changes only
    aliases, timeouts or queue bounds keeps the instance, and what changed applies."""
    runtime = FakeRuntime()
    config = one_managed_backend()
    try:
        async with managed_beside_a_vllm(runtime, config) as (_vllm, url, app, session):
            gateway = app[GATEWAY]
            supervisor = gateway.upstreams["m"]
            config["backends"]["m"]["models"]["m-a"]["aliases"] = ["first-a"]
            config["backends"]["m"]["managed"]["idle_timeout"] = 0.3
            await gateway.reload(parse_config(config, env={}))
            assert gateway.upstreams["m"] is supervisor
            assert which_model(await embed(session, url, "first-a", "via alias"), "via alias",
                               ["m-a"], DIMS) == "m-a"
            assert runtime.starts == ["m-a"]
            await until(lambda: _idle(supervisor), "the new idle_timeout unloads m-a")

            config["backends"]["m"]["managed"]["command"] = ["changed"]  # how it is launched
            await gateway.reload(parse_config(config, env={}))
            assert gateway.upstreams["m"] is not supervisor
    finally:
        await runtime.shutdown()


async def _idle(supervisor: Any) -> bool:
    return supervisor.model_state("m-a").state == "idle"
