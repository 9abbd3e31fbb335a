"""A gateway with its cache in front of a fake TEI that reports a revision, for the cache tests."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

from embedding_gateway.api import CACHE_HITS_HEADER
from tests.conftest import serve_app
from tests.fakes import serve_fake
from tests.fakes.tei import TEI_STATE, TeiState, create_tei_app, weights
from tests.fakes.vectors import fake_vector

MODEL = "org/e5-small"
DIMS = 32


@dataclass
class Answer:
    status: int
    body: Any
    cached: int  # the response's cache header

    def vectors(self) -> list[np.ndarray]:
        """The rows in index order; the indices must be exactly 0..n-1 in order."""
        data = self.body["data"]
        assert [item["index"] for item in data] == list(range(len(data)))
        return [np.frombuffer(base64.b64decode(item["embedding"]), "<f4")
                if isinstance(item["embedding"], str) else np.asarray(item["embedding"])
                for item in data]


@dataclass
class Gateway:
    url: str
    session: aiohttp.ClientSession
    app: web.Application

    async def embed(self, inputs: list[str] | str, *, headers: dict[str, str] | None = None,
                    **extra: Any) -> Answer:
        body = {"model": MODEL, "input": inputs, **extra}
        async with self.session.post(f"{self.url}/v1/embeddings", json=body,
                                     headers=headers or {}) as response:
            payload = await response.json()
            return Answer(response.status, payload,
                          int(response.headers.get(CACHE_HITS_HEADER, "-1")))

    async def get(self, path: str) -> Any:
        async with self.session.get(self.url + path) as response:
            return await response.json() if path != "/metrics" else await response.text()

    async def model_card(self) -> dict[str, Any]:
        cards = (await self.get("/v1/models"))["data"]
        return next(card for card in cards if card["id"] == MODEL)


def expected(fake: TeiState, text: str) -> np.ndarray:
    """The vector the fake's current weights give ``text``."""
    return fake_vector(weights(fake), text, DIMS)


def sent(fake: TeiState) -> list[str]:
    """Every input the fake was asked to embed, in order."""
    texts: list[str] = []
    for path, body in fake.requests:
        if path in ("/v1/embeddings", "/embed"):  # TEI's OpenAI route, or its own
            value = body.get("input", body.get("inputs"))
            texts += [value] if isinstance(value, str) else value
    return texts


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from the Prometheus text, 0 when absent."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            sample, _, value = line.rpartition(" ")
            found = sample[len(name):].strip("{}")
            if ",".join(sorted(found.split(","))) == wanted or (not labels and not found):
                return float(value)
    return 0.0


@asynccontextmanager
async def tei(sha: str | None = "rev-a", batch: int = 16) -> AsyncIterator[tuple[str, TeiState]]:
    app = create_tei_app(MODEL, dims=DIMS, max_client_batch_size=batch)
    app[TEI_STATE].model_sha = sha
    async with serve_fake(app) as url:
        yield url, app[TEI_STATE]


@asynccontextmanager
async def gateway_for(upstream: str, *, cache: dict[str, Any] | None = None,
                      model: dict[str, Any] | None = None) -> AsyncIterator[Gateway]:
    config = {"backends": {"tei": {"kind": "tei", "base_url": upstream,
                                   "models": {MODEL: {"matryoshka": True, **(model or {})}}}},
              "cache": cache or {}}
    async with AsyncExitStack() as exits:
        url, app = await exits.enter_async_context(serve_app(config))
        session = await exits.enter_async_context(aiohttp.ClientSession())
        yield Gateway(url, session, app)
