"""The fault suite: an upstream that misbehaves while clients keep sending, and a log target
that takes no more lines. For each fault, every request gets either its own correct vectors
or a clear error in the envelope (502, 503 or 504), none is dropped; and once the fault is
gone the same gateway, not restarted, serves every request correctly again.

The Docker engine freezes during a swap (a real engine behind a socket that stops passing
bytes, as a stopped ``dockerd`` does): requests wait or get 503, ``/health`` still answers,
and the swap completes once it answers again.

Also part of it, kept beside their modules: the shapes of garbage an upstream may answer
(``test_upstream_garbage.py``), a Docker engine that never answers
(``test_runtime_docker.py::test_an_engine_that_stops_answering_holds_only_its_own_threads``),
containers killed from outside (``test_supervisor_docker.py``), slow and silent clients
(``test_connections.py``) and malformed HTTP (``test_malformed.py``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import docker
import numpy as np
import pytest
from aiohttp import web

from tests.conftest import run_gateway
from tests.docker_support import (
    clean_containers,  # noqa: F401
    docker_available,  # noqa: F401
    test_image,  # noqa: F401
    unique_name,
)
from tests.fakes import FAKE_STATE, serve_fake
from tests.fakes.tei import create_tei_app
from tests.fakes.vectors import which_model
from tests.fakes.vllm import create_vllm_app
from tests.ports import free_port
from tests.service_support import GatewayProcess, NotifyListener, gateway_config
from tests.test_service import embed, start
from tests.test_supervisor_docker import DIMS as DOCKER_DIMS
from tests.test_supervisor_docker import MODELS, containers, embed_ok, managed_backend
from tests.test_supervisor_docker import embed as docker_embed
from tests.test_supervisor_docker import gateway as docker_gateway

MODEL, DIMS = "org/faulty", 8
TIMEOUT = 1.0  # the backend's timeout: a silent or slow upstream is a 504 after it
CLIENTS = 8
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def texts_for(client: int, round_: int) -> list[str]:
    return [f"client {client} round {round_} text {i}" for i in range(1 + client % 4)]


class FaultyUpstream:
    """The vLLM fake behind a switch: ``fault`` names how ``/v1/embeddings`` (and, for
    ``wrong_model``, the model list) misbehaves; ``None`` serves normally."""

    def __init__(self) -> None:
        self.fault: str | None = None
        self.app = create_vllm_app(MODEL, dims=DIMS)
        self.app.middlewares.append(self.middleware)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        fault = self.fault
        if fault is None or (request.path != "/v1/embeddings" and fault != "wrong_model"):
            return await handler(request)
        await request.read()
        transport = request.transport
        assert transport is not None
        if fault == "killed":  # the server dies halfway through its answer
            response = web.StreamResponse(headers={"Content-Type": "application/json",
                                                   "Content-Length": "4000"})
            await response.prepare(request)
            await response.write(b'{"object": "list", "data": [{"embedding": "AAAA')
            transport.abort()
            raise asyncio.CancelledError
        if fault == "reset":  # the connection is reset before any answer
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
            raise asyncio.CancelledError
        if fault == "silent":
            await asyncio.sleep(3600)
        if fault == "slow":
            await asyncio.sleep(TIMEOUT * 2)
            return await handler(request)
        if fault == "garbage":
            return web.Response(body=b"\x00\x1fnot json{", content_type="application/json")
        response = await handler(request)
        assert isinstance(response, web.Response) and response.body is not None
        body = json.loads(response.body)  # type: ignore[arg-type]
        if fault == "wrong_model":
            if "data" in body and request.path == "/v1/models":
                for card in body["data"]:
                    card["id"] = card["root"] = "someone/else"
            body["model"] = "someone/else"
        elif fault == "wrong_count":
            body["data"] = body["data"][:-1] or body["data"] * 2
        elif fault == "wrong_dims":
            for item in body["data"]:
                item["embedding"] = cut(item["embedding"])
        return web.json_response(body, status=response.status)


def cut(embedding: str | list[float]) -> str | list[float]:
    """One dimension fewer, in the encoding it came in."""
    if isinstance(embedding, list):
        return embedding[:-1]
    vector = np.frombuffer(base64.b64decode(embedding), dtype="<f4")[:-1]
    return base64.b64encode(vector.tobytes()).decode()


async def ask(session: aiohttp.ClientSession, url: str,
              texts: list[str]) -> tuple[int, dict[str, Any]]:
    async with session.post(f"{url}/v1/embeddings",
                            json={"model": MODEL, "input": texts}) as response:
        return response.status, await response.json()


def check(status: int, body: dict[str, Any], texts: list[str],
          expected: dict[str, list[float]], errors: tuple[int, ...] = (502, 503, 504)) -> bool:
    """Its own correct vectors (True), or a clear error with one of ``errors`` (False)."""
    if status == 200:
        assert [item["embedding"] for item in body["data"]] == [expected[t] for t in texts]
        return True
    assert status in errors, (status, body)
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"], body
    return False


FAULTS = {  # what the clients see while it lasts
    "killed": (502,), "reset": (502,), "silent": (504,), "slow": (504,), "garbage": (502,),
    "wrong_count": (502,), "wrong_dims": (502,), "wrong_model": (502, 503),
}


@pytest.mark.parametrize("fault", FAULTS)
async def test_an_upstream_fault_loses_nothing_and_is_recovered_from(fault: str) -> None:
    upstream = FaultyUpstream()
    async with serve_fake(upstream.app) as base_url:
        # the answers of a healthy upstream, straight from it; no cache, so that every later
        # request meets the fault
        config = {"backends": {"v": {"kind": "vllm", "base_url": base_url, "timeout": TIMEOUT,
                                     "models": {MODEL: {"dimensions": DIMS}}}},
                  "cache": {"memory_bytes": 0}}
        async with run_gateway(config) as url, aiohttp.ClientSession() as session:
            all_texts = [t for c in range(CLIENTS) for r in range(3) for t in texts_for(c, r)]
            status, body = await ask(session, url, all_texts)
            assert status == 200, body
            expected = {t: item["embedding"] for t, item in zip(all_texts, body["data"],
                                                                  strict=True)}

            upstream.fault = fault
            during = await asyncio.gather(*(ask(session, url, texts_for(c, 0))
                                            for c in range(CLIENTS)))
            served = [check(s, b, texts_for(c, 0), expected, FAULTS[fault])
                      for c, (s, b) in enumerate(during)]
            if fault != "slow":  # a slow answer may still come in time for some
                assert not any(served), during

            upstream.fault = None
            for attempt in range(100):  # the next health check sees it well again
                status, body = await ask(session, url, texts_for(0, 1))
                if check(status, body, texts_for(0, 1), expected):
                    break
                assert attempt < 99, body
                await asyncio.sleep(0.1)
            after = await asyncio.gather(*(ask(session, url, texts_for(c, 2))
                                           for c in range(CLIENTS)))
            assert all(check(s, b, texts_for(c, 2), expected)
                       for c, (s, b) in enumerate(after)), after


class FreezableEngine:
    """A unix socket in front of the real Docker engine. While frozen it accepts connections
    and passes no byte either way, as a ``dockerd`` stopped with SIGSTOP would (the kernel
    still accepts for it); thawed, everything held goes through."""

    def __init__(self, path: Path, engine: str = "/var/run/docker.sock") -> None:
        self.path, self.engine = path, engine
        self.running = asyncio.Event()
        self.running.set()
        self.server: asyncio.AbstractServer | None = None
        self.pumps: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_unix_server(self.connect, str(self.path))
        return f"unix://{self.path}"

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.server is not None
        self.running.set()
        self.server.close()
        for pump in self.pumps:
            pump.cancel()
        await asyncio.gather(*self.pumps, return_exceptions=True)

    async def connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self.running.wait()
        engine_reader, engine_writer = await asyncio.open_unix_connection(self.engine)
        for source, sink in ((reader, engine_writer), (engine_reader, writer)):
            pump = asyncio.create_task(self.pump(source, sink))
            self.pumps.add(pump)
            pump.add_done_callback(self.pumps.discard)

    async def pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                await self.running.wait()
                sink.write(data)
                await sink.drain()
        except ConnectionError:
            pass
        finally:
            sink.close()


@pytest.mark.docker
@pytest.mark.timeout(300)
async def test_a_docker_engine_frozen_during_a_swap_delays_it_and_loses_nothing(
    tmp_path: Path, clean_containers: str, docker_available: docker.DockerClient  # noqa: F811
) -> None:
    name = unique_name("frozen")
    engine = FreezableEngine(tmp_path / "engine.sock")
    async with engine as docker_host:
        backend = managed_backend(clean_containers, free_port(), MODELS[:2],
                                  docker_host=docker_host, queue_timeout=30)
        async with docker_gateway({name: backend}) as (url, session):
            await embed_ok(session, url, MODELS[0], "before")
            engine.running.clear()  # frozen: the swap to MODELS[1] cannot stop or start
            asks = [asyncio.create_task(docker_embed(session, url, MODELS[i % 2], f"t{i}"))
                    for i in range(6)]
            await asyncio.sleep(1)
            async with asyncio.timeout(5), session.get(f"{url}/health") as response:
                assert response.status in (200, 503)  # answered while the engine is frozen
            await asyncio.sleep(3)
            engine.running.set()
            for i, (status, body) in enumerate(await asyncio.gather(*asks)):
                if status == 200:  # its own model's vector, whenever it came
                    assert which_model(body["data"][0]["embedding"], f"t{i}", MODELS,
                                       DOCKER_DIMS) == MODELS[i % 2]
                else:
                    assert status == 503 and body["error"]["message"], body
            for model in (MODELS[1], MODELS[0]):  # both still served: no restart needed
                await embed_ok(session, url, model, "after")
        assert containers(docker_available, name) == []


FULL = Path("/dev/full")  # every write fails with ENOSPC


class GatewayLoggingToFull(GatewayProcess):
    def log_text(self) -> str:
        return "(the gateway's output went to /dev/full)"  # reading it would never end


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener.bind(tmp_path)
    yield listener
    listener.close()


async def until_health_is(session: aiohttp.ClientSession, gw: GatewayProcess,
                          status: int) -> None:
    for _ in range(100):
        async with session.get(f"{gw.url}/health") as response:
            if response.status == status:
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"/health never answered {status}")


@pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full")
async def test_a_full_log_target_breaks_nothing(tmp_path: Path, notify: NotifyListener) -> None:
    """Requests are answered, health checks go on, and SIGTERM exits cleanly."""
    gw = GatewayLoggingToFull(tmp_path / "gateway.yaml", FULL, free_port())
    app = create_tei_app(MODEL, dims=8)
    state = app[FAKE_STATE]
    try:
        async with serve_fake(app) as url, aiohttp.ClientSession() as session:
            backend = {"kind": "tei", "base_url": url, "models": {MODEL: {}}}
            await start(gw, notify, gateway_config(gw.port, {"t": backend}))
            for n in range(20):
                status, body = await embed(session, gw, MODEL, [f"text {n}"])
                assert status == 200, body
            state.healthy = False  # the health checks must still run, and see it
            await until_health_is(session, gw, 503)
            state.healthy = True
            await until_health_is(session, gw, 200)
            gw.signal(signal.SIGTERM)
            assert await gw.wait() == 0
    finally:
        gw.kill()
