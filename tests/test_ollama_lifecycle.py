"""Ollama loads models itself; the gateway passes ``keep_alive`` and honours ``preload`` with
an empty ``/api/embed``, and ``server.ready_after_preload`` waits for it."""

from __future__ import annotations

import aiohttp

from embedding_gateway.state import GATEWAY
from tests.conftest import serve_app
from tests.fakes import serve_fake
from tests.fakes.ollama import OLLAMA_STATE, create_ollama_app


async def test_preload_loads_at_start_and_keep_alive_is_passed_on() -> None:
    fake = create_ollama_app({"bge-m3": 8, "nomic-embed-text": 6})
    state = fake[OLLAMA_STATE]
    async with serve_fake(fake) as ollama:
        config = {"backends": {"ollama": {
            "kind": "ollama", "base_url": ollama, "keep_alive": "30m",
            "models": {"bge-m3": {"preload": True, "keep_alive": -1}, "nomic-embed-text": {}},
        }}}
        async with serve_app(config) as (url, app), aiohttp.ClientSession() as session:
            await app[GATEWAY].wait_preloaded()
            preloads = [body for path, body in state.requests
                        if path == "/api/embed" and body.get("input") == []]
            assert preloads == [{"model": "bge-m3", "input": [], "keep_alive": -1}]
            assert "bge-m3:latest" in state.loaded_now()
            assert "nomic-embed-text:latest" not in state.loaded_now()

            body = {"model": "nomic-embed-text", "input": ["hello"]}
            async with session.post(f"{url}/v1/embeddings", json=body) as resp:
                assert resp.status == 200
            assert state.keep_alives[-1] == ("nomic-embed-text:latest", "30m")  # backend default
            embeds = [b for p, b in state.requests if p == "/api/embed" and b.get("input")]
            assert embeds[-1]["truncate"] is False  # calls go out strict (truncation.py)
