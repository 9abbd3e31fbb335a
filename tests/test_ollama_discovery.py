"""Ollama ``discover: true``: embedding models found in ``/api/tags`` are served too."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import GatewayFactory
from tests.fakes import serve_fake
from tests.fakes.ollama import create_ollama_app
from tests.fakes.vectors import which_model


async def _models(session: aiohttp.ClientSession, url: str) -> dict[str, dict]:
    async with session.get(f"{url}/v1/models") as resp:
        return {m["id"]: m for m in (await resp.json())["data"]}


async def test_discovered_embedding_models_are_listed_and_served(
    gateway: GatewayFactory,
) -> None:
    fake = create_ollama_app({"bge-m3": 8, "nomic-embed-text": 6}, chat_models=["llama3.2:3b"])
    async with serve_fake(fake) as ollama:
        config = {"backends": {"ollama": {
            "kind": "ollama", "base_url": ollama, "discover": True, "models": {"bge-m3": {}},
        }}}
        async with gateway(config) as url, aiohttp.ClientSession() as session:
            for _ in range(50):  # the first background check discovers
                models = await _models(session, url)
                if "nomic-embed-text:latest" in models:
                    break
                await asyncio.sleep(0.05)
            assert set(models) == {"bge-m3", "nomic-embed-text:latest"}
            assert models["nomic-embed-text:latest"]["backend"] == "ollama"

            body = {"model": "nomic-embed-text", "input": ["hello there"]}
            async with session.post(f"{url}/v1/embeddings", json=body) as resp:
                assert resp.status == 200
                data = await resp.json()
            assert data["model"] == "nomic-embed-text"
            vector = data["data"][0]["embedding"]
            assert which_model(vector, "hello there", ["bge-m3", "nomic-embed-text"], 6) \
                == "nomic-embed-text"

            body = {"model": "llama3.2:3b", "input": "not an embedding model"}
            async with session.post(f"{url}/v1/embeddings", json=body) as resp:
                assert resp.status == 404
                assert (await resp.json())["error"]["code"] == "model_not_found"


async def test_without_discover_only_configured_models_exist(gateway: GatewayFactory) -> None:
    async with serve_fake(create_ollama_app({"bge-m3": 8, "nomic-embed-text": 6})) as ollama:
        config = {"backends": {"ollama": {
            "kind": "ollama", "base_url": ollama, "models": {"bge-m3": {}},
        }}}
        async with gateway(config) as url, aiohttp.ClientSession() as session:
            body = {"model": "bge-m3", "input": "warm up"}
            async with session.post(f"{url}/v1/embeddings", json=body) as resp:
                assert resp.status == 200
            assert set(await _models(session, url)) == {"bge-m3"}
            body = {"model": "nomic-embed-text", "input": "x"}
            async with session.post(f"{url}/v1/embeddings", json=body) as resp:
                assert resp.status == 404


async def test_a_backend_with_only_discovered_models_is_ready(gateway: GatewayFactory) -> None:
    async with serve_fake(create_ollama_app({"bge-m3": 8})) as ollama:
        config = {"backends": {"ollama": {"kind": "ollama", "base_url": ollama,
                                          "discover": True}}}
        async with gateway(config) as url, aiohttp.ClientSession() as session:
            for _ in range(50):
                async with session.get(f"{url}/health/ready") as resp:
                    status, body = resp.status, await resp.json()
                if status == 200:
                    break
                await asyncio.sleep(0.05)
            assert status == 200, body
            assert body["serving_backends"] == ["ollama"]
