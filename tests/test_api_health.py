"""``/health``, ``/health/ready`` and ``/v1/models`` over real fakes, one of them down or hung."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp

from tests.conftest import run_gateway
from tests.fakes import FAKE_STATE, FakeState, serve_fake
from tests.fakes.ollama import create_ollama_app
from tests.fakes.tei import create_tei_app
from tests.fakes.vllm import create_vllm_app

LIVENESS_BOUND = 2.0  # seconds; far above any normal answer, far below a hung probe's wait


def closed_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as resp:
        return resp.status, await resp.json()


async def settle(session: aiohttp.ClientSession, url: str, status: int) -> Any:
    """Poll ``url`` until the first background probes have run and it answers ``status``."""
    for _ in range(100):
        got, body = await get(session, url)
        if got == status:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} stayed at {got}: {body}")


async def settle_backends(session: aiohttp.ClientSession, url: str, up: set[str]) -> Any:
    """Poll ``/health`` until exactly the backends in ``up`` are healthy."""
    for _ in range(100):
        _, body = await get(session, url + "/health")
        if {n for n, b in body["backends"].items() if b["healthy"]} == up:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"backends never settled to {up}: {body}")


@asynccontextmanager
async def gateway_over(
    backends: dict[str, dict[str, Any]], **server: Any
) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    config: dict[str, Any] = {"backends": backends}
    if server:
        config["server"] = server
    async with run_gateway(config) as url, aiohttp.ClientSession() as session:
        yield url, session


@asynccontextmanager
async def three_fakes() -> AsyncIterator[tuple[dict[str, str], dict[str, FakeState]]]:
    apps = {
        "tei": create_tei_app("BAAI/bge-small-en-v1.5", dims=8),
        "ollama": create_ollama_app({"bge-m3": 8}),
        "vllm": create_vllm_app("intfloat/e5-large-v2", dims=8),
    }
    async with AsyncExitStack() as exits:
        urls = {n: await exits.enter_async_context(serve_fake(a)) for n, a in apps.items()}
        yield urls, {n: a[FAKE_STATE] for n, a in apps.items()}


def backends_for(urls: dict[str, str]) -> dict[str, dict[str, Any]]:
    return {
        "tei": {"kind": "tei", "base_url": urls["tei"],
                "models": {"BAAI/bge-small-en-v1.5": {"aliases": ["bge-small", "small"]}}},
        "ollama": {"kind": "ollama", "base_url": urls["ollama"], "models": {"bge-m3": {}}},
        "vllm": {"kind": "vllm", "base_url": urls["vllm"],
                 "models": {"intfloat/e5-large-v2": {"aliases": ["e5"]}}},
    }


async def test_health_is_200_when_every_backend_is_healthy() -> None:
    async with three_fakes() as (urls, _), gateway_over(backends_for(urls)) as (url, session):
        body = await settle(session, url + "/health", 200)
        assert body["status"] == "ok"
        assert set(body["backends"]) == {"tei", "ollama", "vllm"}
        for backend in body["backends"].values():
            assert backend["healthy"] is True
            assert backend["reason"] is None
        status, ready = await get(session, url + "/health/ready")
        assert status == 200
        assert ready["serving_backends"] == ["ollama", "tei", "vllm"]


async def test_health_is_503_naming_the_backend_that_is_down() -> None:
    async with three_fakes() as (urls, _):
        backends = backends_for(urls)
        backends["vllm"]["base_url"] = closed_url()
        async with gateway_over(backends) as (url, session):
            body = await settle_backends(session, url, {"tei", "ollama"})
            status, body = await get(session, url + "/health")
            assert status == 503
            assert body["status"] == "degraded"
            down = body["backends"]["vllm"]
            assert down["healthy"] is False
            assert "could not be reached" in down["reason"]
            assert body["backends"]["tei"]["healthy"] is True
            assert body["backends"]["ollama"]["healthy"] is True
            status, ready = await get(session, url + "/health/ready")
            assert status == 200
            assert "vllm" not in ready["serving_backends"]


async def test_ready_is_503_when_no_backend_can_serve() -> None:
    backends = {
        "a": {"kind": "tei", "base_url": closed_url(), "models": {"m1": {}}},
        "b": {"kind": "ollama", "base_url": closed_url(), "models": {"m2": {}}},
    }
    async with gateway_over(backends) as (url, session):
        body = await settle(session, url + "/health/ready", 503)
        assert body["status"] == "not_ready"
        assert body["serving_backends"] == []
        status, health = await get(session, url + "/health")
        assert status == 503
        assert all(b["reason"] for b in health["backends"].values())


async def test_a_hung_upstream_does_not_block_health() -> None:
    app = create_tei_app("BAAI/bge-small-en-v1.5", dims=8)
    app[FAKE_STATE].hang = True
    async with three_fakes() as (urls, _), serve_fake(app) as hung:
        backends = backends_for(urls)
        backends["tei"]["base_url"] = hung
        async with gateway_over(backends, health_interval=0.2, health_timeout=10) as (url,
                                                                                    session):
            await asyncio.sleep(0.3)  # let probes start and hang
            for path in ("/health", "/health/ready", "/v1/models"):
                async with asyncio.timeout(LIVENESS_BOUND), session.get(url + path) as resp:
                    body = await resp.json()
                    assert resp.status in (200, 503)
            status, body = await get(session, url + "/health")
            assert status == 503
            assert body["backends"]["tei"]["healthy"] is False
            app[FAKE_STATE].hang = False


async def test_models_lists_every_model_and_alias_with_its_state() -> None:
    async with three_fakes() as (urls, _):
        backends = backends_for(urls)
        backends["vllm"]["base_url"] = closed_url()
        async with gateway_over(backends) as (url, session):
            await settle_backends(session, url, {"tei", "ollama"})
            status, body = await get(session, url + "/v1/models")
    assert status == 200
    assert body["object"] == "list"
    by_id = {m["id"]: m for m in body["data"]}
    assert set(by_id) == {"BAAI/bge-small-en-v1.5", "bge-small", "small", "bge-m3",
                          "intfloat/e5-large-v2", "e5"}
    expected = {
        "BAAI/bge-small-en-v1.5": ("tei", "tei", None, True),
        "bge-small": ("tei", "tei", "BAAI/bge-small-en-v1.5", True),
        "small": ("tei", "tei", "BAAI/bge-small-en-v1.5", True),
        "bge-m3": ("ollama", "ollama", None, True),
        "intfloat/e5-large-v2": ("vllm", "vllm", None, False),
        "e5": ("vllm", "vllm", "intfloat/e5-large-v2", False),
    }
    for name, (backend, kind, alias_of, healthy) in expected.items():
        model = by_id[name]
        assert model["object"] == "model"
        assert (model["backend"], model["kind"], model["alias_of"], model["healthy"]) == (
            backend, kind, alias_of, healthy
        ), model
        assert model["state"] == "remote"
    assert by_id["e5"]["reason"]


async def test_one_failed_request_does_not_mark_a_remote_backend_down() -> None:
    app = create_vllm_app("org/v", dims=8)
    async with serve_fake(app) as vllm:
        config = {"server": {"health_interval": 60},
                  "backends": {"v": {"kind": "vllm", "base_url": vllm, "models": {"org/v": {}}}}}
        async with run_gateway(config) as url, aiohttp.ClientSession() as session:
            body = {"model": "org/v", "input": "x"}
            async with session.post(f"{url}/v1/embeddings", json=body) as resp:
                assert resp.status == 200
            app[FAKE_STATE].fail = (500, None)
            async with session.post(f"{url}/v1/embeddings", json={**body, "input": "y"}) as resp:
                assert resp.status == 502
            app[FAKE_STATE].fail = None
            async with session.get(f"{url}/health") as resp:
                assert resp.status == 200, await resp.text()


async def test_any_check_of_a_tei_teaches_its_batch_limit() -> None:
    """The limit is learnt by the adapter's own check, so every path that checks an upstream
    (background checks, a managed start, adoption) applies it."""
    from embedding_gateway.backends import create_backend
    from embedding_gateway.config import parse_config
    from embedding_gateway.http_client import HttpClient

    async with serve_fake(create_tei_app("org/e5", dims=8, max_client_batch_size=8)) as tei:
        config = parse_config({"backends": {"t": {"kind": "tei", "base_url": tei,
                                                  "models": {"org/e5": {}}}}}, env={})
        client = HttpClient()
        try:
            backend = create_backend("t", config.backends["t"], client)
            assert backend.batch_limit(config.backends["t"].models["org/e5"]) == 32
            probe = await backend.probe(tei, 2.0)
            assert "org/e5" in probe.served
            assert backend.batch_limit(config.backends["t"].models["org/e5"]) == 8
        finally:
            await client.close()
