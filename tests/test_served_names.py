"""Servers that answer under another of their names: vLLM started with several
``--served-model-name``s answers with the first, whatever was asked; TEI started with
``--served-model-name`` answers with it, though ``/info`` also reports ``model_id``. Both are
one set of weights by construction, learnt from what the server reports; other weights are
still never served."""

from __future__ import annotations

import aiohttp
import pytest

from tests.conftest import run_gateway
from tests.fakes import serve_fake
from tests.fakes.tei import create_tei_app
from tests.fakes.vectors import which_model
from tests.fakes.vllm import create_vllm_app


async def embed(url: str, model: str, text: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session, session.post(
        f"{url}/v1/embeddings", json={"model": model, "input": text}
    ) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize("asked", ["bge-m3", "bge", "BAAI/bge-m3"])
async def test_vllm_with_several_served_names_answers_with_the_first(asked: str) -> None:
    app = create_vllm_app("/models/bge-m3", dims=8, error_shape="nested",
                          served_model_name=["bge-m3", "bge", "BAAI/bge-m3"])
    async with serve_fake(app) as vllm:
        config = {"backends": {"v": {"kind": "vllm", "base_url": vllm, "models": {asked: {}}}}}
        async with run_gateway(config) as url:
            for _ in range(3):
                status, body = await embed(url, asked, "안녕하세요")
                assert status == 200, body
                assert body["model"] == asked
                vector = body["data"][0]["embedding"]
                assert which_model(vector, "안녕하세요", ["/models/bge-m3"], 8) == "/models/bge-m3"
            async with aiohttp.ClientSession() as session, session.get(f"{url}/health") as resp:
                assert resp.status == 200, await resp.text()


async def test_tei_with_a_served_model_name_is_reached_by_its_model_id() -> None:
    app = create_tei_app("nlpai-lab/KURE-v1", dims=8, served_model_name="kure")
    async with serve_fake(app) as tei:
        config = {"backends": {"t": {"kind": "tei", "base_url": tei,
                                     "models": {"nlpai-lab/KURE-v1": {}}}}}
        async with run_gateway(config) as url:
            status, body = await embed(url, "nlpai-lab/KURE-v1", "한국어")
            assert status == 200, body
            vector = body["data"][0]["embedding"]
            assert which_model(vector, "한국어", ["nlpai-lab/KURE-v1"], 8) == "nlpai-lab/KURE-v1"


async def test_other_weights_under_a_name_it_was_not_asked_for_are_still_refused() -> None:
    """A vLLM serving other weights as its only name: never its vectors."""
    app = create_vllm_app("/models/other", dims=8, error_shape="nested",
                          served_model_name=["other", "bge"])
    async with serve_fake(app) as vllm:
        config = {"backends": {"v": {"kind": "vllm", "base_url": vllm,
                                     "models": {"bge-m3": {"served_name": "bge-m3"}}}}}
        async with run_gateway(config) as url:
            status, body = await embed(url, "bge-m3", "x")
            assert status in (502, 503), body
            assert "data" not in body
