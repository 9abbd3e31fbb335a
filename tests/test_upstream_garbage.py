"""An upstream that answers 200 with a body of the wrong shape: the client gets a 502 in the
envelope (never a 500), and the background checks keep running."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import run_gateway
from tests.fakes import serve_fake

GOOD_MODELS = {"object": "list", "data": [{"id": "m", "object": "model"}]}


def odd_upstream(answers: dict[str, Any]) -> web.Application:
    """``answers[path]`` is sent with status 200 as JSON (bytes are sent as they are)."""

    async def answer(request: web.Request) -> web.Response:
        value = answers[request.path]
        if isinstance(value, bytes):
            return web.Response(body=value, content_type="application/json")
        return web.json_response(value)

    app = web.Application()
    app.router.add_get("/v1/models", answer)
    app.router.add_post("/v1/embeddings", answer)
    return app


def item(index: Any, embedding: Any = (0.6, 0.8)) -> dict[str, Any]:
    return {"object": "embedding", "index": index, "embedding": list(embedding)}


def answer(data: Any, **extra: Any) -> dict[str, Any]:
    return {"object": "list", "model": "m", "data": data,
            "usage": {"prompt_tokens": 1, "total_tokens": 1}, **extra}


@pytest.mark.parametrize("body", [
    answer(["not an item"]),
    answer([item(None)]),
    answer([item(0)], usage="lots"),
    answer([item(0)], usage={"prompt_tokens": "abc"}),
    answer([item(0), item(0)]),  # two inputs, one index twice: order unknowable
    answer([item(0), {"object": "embedding", "embedding": [0.6, 0.8]}]),
    answer([item(0, ["x", "y"])]),
    answer([item(0, [True, False])]),
    answer([item(0, ["0.6", "0.8"])]),
    answer([item(0)], usage={"prompt_tokens": 10**30}),
    answer([item(0)], usage={"prompt_tokens": -5}),
    answer([item(0)], usage={"prompt_tokens": 2.5}),
    answer(None),
    [1, 2, 3],
    b"",
], ids=["strings", "null-index", "usage-str", "tokens-str", "dup-index", "missing-index",
        "non-numbers", "booleans", "numeric-strings", "tokens-1e30", "tokens-negative",
        "tokens-fraction", "null-data", "list-body", "empty-body"])
async def test_a_malformed_answer_is_a_502(body: Any) -> None:
    inputs = ["a", "b"] if isinstance(body, dict) and isinstance(body.get("data"), list) \
        and len(body["data"]) == 2 else ["a"]
    upstream = odd_upstream({"/v1/models": GOOD_MODELS, "/v1/embeddings": body})
    async with serve_fake(upstream) as base:
        config = {"backends": {"o": {"kind": "openai", "base_url": base, "models": {"m": {}}}}}
        async with run_gateway(config) as url, aiohttp.ClientSession() as session:
            request = {"model": "m", "input": inputs}
            async with session.post(f"{url}/v1/embeddings", json=request) as resp:
                envelope = await resp.json()
                assert resp.status == 502, envelope
            assert envelope["error"]["type"] == "upstream_error"


async def test_a_malformed_model_list_does_not_stop_the_checks() -> None:
    answers: dict[str, Any] = {"/v1/models": {"data": None},
                               "/v1/embeddings": answer([item(0)])}
    async with serve_fake(odd_upstream(answers)) as base:
        config = {"server": {"health_interval": 0.1},
                  "backends": {"o": {"kind": "openai", "base_url": base, "models": {"m": {}}}}}
        async with run_gateway(config) as url, aiohttp.ClientSession() as session:
            async with session.get(f"{url}/health") as resp:
                assert resp.status == 503
            answers["/v1/models"] = GOOD_MODELS  # the upstream mends: the next check sees it
            for _ in range(50):
                async with session.get(f"{url}/health") as resp:
                    if resp.status == 200:
                        break
                await asyncio.sleep(0.05)
            assert resp.status == 200
            async with session.post(f"{url}/v1/embeddings",
                                    json={"model": "m", "input": "x"}) as resp:
                assert resp.status == 200


async def test_chunks_of_different_sizes_are_a_mismatch_not_a_crash() -> None:
    """The upstream changed model between two chunks of one request."""
    sizes = iter([2, 3])

    async def models(request: web.Request) -> web.Response:
        return web.json_response(GOOD_MODELS)

    async def embeddings(request: web.Request) -> web.Response:
        return web.json_response(answer([item(0, [1.0] * next(sizes))]))

    upstream = web.Application()
    upstream.router.add_get("/v1/models", models)
    upstream.router.add_post("/v1/embeddings", embeddings)
    async with serve_fake(upstream) as base:
        config = {"backends": {"o": {"kind": "openai", "base_url": base, "max_batch": 1,
                                     "max_concurrency": 1, "models": {"m": {}}}}}
        async with run_gateway(config) as url, aiohttp.ClientSession() as session:
            request = {"model": "m", "input": ["a", "b"]}
            async with session.post(f"{url}/v1/embeddings", json=request) as resp:
                envelope = await resp.json()
                assert resp.status == 502, envelope
            assert envelope["error"]["code"] == "model_mismatch"



async def test_a_redirecting_upstream_is_a_502_that_names_the_redirect() -> None:
    """Redirects are not followed: a POST turned into a GET elsewhere is not the configured
    call."""

    async def models(request: web.Request) -> web.Response:
        return web.json_response(GOOD_MODELS)

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPMovedPermanently("/v2/embeddings")

    upstream = web.Application()
    upstream.router.add_get("/v1/models", models)
    upstream.router.add_post("/v1/embeddings", moved)
    async with serve_fake(upstream) as base:
        config = {"backends": {"o": {"kind": "openai", "base_url": base, "models": {"m": {}}}}}
        async with run_gateway(config) as url, aiohttp.ClientSession() as session:
            async with session.post(f"{url}/v1/embeddings",
                                    json={"model": "m", "input": "x"}) as resp:
                envelope = await resp.json()
                assert resp.status == 502, envelope
            assert "redirect (HTTP 301)" in envelope["error"]["message"]
