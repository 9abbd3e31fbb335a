"""Upstream failures read by meaning, not only by status: a vLLM whose engine died (its API
server still up), Ollama's runner crashing behind a 400, FastAPI's 422 bodies (Infinity)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import web

from tests.conftest import run_gateway
from tests.fakes import FAKE_STATE, serve_fake
from tests.fakes.ollama import create_ollama_app
from tests.fakes.vllm import VLLM_STATE, create_vllm_app


async def post(url: str, model: str, text: str = "x") -> tuple[int, dict[str, Any], Any]:
    async with aiohttp.ClientSession() as session, session.post(
        f"{url}/v1/embeddings", json={"model": model, "input": text}
    ) as resp:
        return resp.status, await resp.json(), resp.headers


async def test_a_vllm_whose_engine_died_is_not_routed_to() -> None:
    app = create_vllm_app("/m/a", dims=8, error_shape="nested", served_model_name="a")
    async with serve_fake(app) as vllm:
        config = {"server": {"health_interval": 0.1},
                  "backends": {"v": {"kind": "vllm", "base_url": vllm, "models": {"a": {}}}}}
        async with run_gateway(config) as url:
            assert (await post(url, "a"))[0] == 200
            app[VLLM_STATE].healthy = False  # /health 503; /v1/models still lists "a"
            await asyncio.sleep(0.4)
            status, body, _ = await post(url, "a")
            assert status in (502, 503), body
            embeds = [p for p, _ in app[FAKE_STATE].requests if p == "/v1/embeddings"]
            assert len(embeds) == 1, "a request was sent to the dead engine"


async def test_ollamas_runner_crash_behind_a_400_is_not_the_clients_fault() -> None:
    app = create_ollama_app({"bge-m3": 8})
    async with serve_fake(app) as ollama:
        config = {"backends": {"o": {"kind": "ollama", "base_url": ollama,
                                     "models": {"bge-m3": {}}}}}
        async with run_gateway(config) as url:
            assert (await post(url, "bge-m3"))[0] == 200
            crash = "llama runner process has terminated: exit status 2"
            app[FAKE_STATE].fail = (400, crash)
            status, body, _ = await post(url, "bge-m3", "y")  # not cached: sent upstream
            assert status == 502, body
            assert crash in body["error"]["message"]
            app[FAKE_STATE].fail = (400, "the input length exceeds the context length")
            status, body, _ = await post(url, "bge-m3", "z")
            assert status == 400, body
            assert body["error"]["code"] == "input_too_long"
            assert "the input length exceeds the context length" in body["error"]["message"]


async def test_a_fastapi_422_reaches_the_client_as_its_message() -> None:
    detail = {"detail": [{"type": "string_type", "loc": ["body", "input", 0],
                          "msg": "Input should be a valid string", "input": 5}]}

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m", "object": "model"}]})

    async def embeddings(_: web.Request) -> web.Response:
        return web.json_response(detail, status=422)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/embeddings", embeddings)
    async with serve_fake(app) as server:
        config = {"backends": {"i": {"kind": "openai", "base_url": server,
                                     "models": {"m": {}}}}}
        async with run_gateway(config) as url:
            status, body, _ = await post(url, "m")
            assert status == 422, body
            assert body["error"]["message"] == "body.input.0: Input should be a valid string"
