"""Fixtures that build the real gateway from a real config, on loopback, in front of fakes."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from embedding_gateway.app import create_app
from embedding_gateway.cl100k import write_tiktoken_cache
from embedding_gateway.config import parse_config
from embedding_gateway.connections import listen
from embedding_gateway.state import GATEWAY, RuntimeFactory

GatewayFactory = Callable[..., Any]


@asynccontextmanager
async def serve_app(
    config: dict[str, Any], *, runtime_factory: RuntimeFactory | None = None
) -> AsyncIterator[tuple[str, web.Application]]:
    """Serve a gateway built from ``config`` (a parsed YAML document) on 127.0.0.1; yields
    its URL and the app (``app[GATEWAY]`` is the running gateway)."""
    config.setdefault("server", {}).setdefault("health_interval", 0.5)
    app = create_app(parse_config(config, env={}), runtime_factory=runtime_factory)
    runner = web.AppRunner(app, shutdown_timeout=5, handler_cancellation=True)  # as cli.serve
    await runner.setup()
    await listen(runner, "127.0.0.1", 0, app[GATEWAY].config.server.limits)
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", app
    finally:
        await runner.cleanup()


@asynccontextmanager
async def run_gateway(
    config: dict[str, Any], *, runtime_factory: RuntimeFactory | None = None
) -> AsyncIterator[str]:
    """Serve a gateway built from ``config`` on 127.0.0.1; yields its URL."""
    async with serve_app(config, runtime_factory=runtime_factory) as (url, _):
        yield url


@pytest.fixture
def gateway() -> GatewayFactory:
    """``async with gateway(config) as url:`` runs a real gateway for one test."""
    return run_gateway


@pytest.fixture(scope="session")
def offline_tiktoken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """tiktoken in this process (LangChain's tokenizer) reads cl100k_base from the copy the
    gateway's install ships, as a machine without internet must: nothing is downloaded."""
    directory = tmp_path_factory.mktemp("tiktoken-cache")
    write_tiktoken_cache(directory)
    before = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(directory)
    yield
    if before is None:
        del os.environ["TIKTOKEN_CACHE_DIR"]
    else:
        os.environ["TIKTOKEN_CACHE_DIR"] = before
