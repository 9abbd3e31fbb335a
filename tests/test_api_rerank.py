"""``POST /v1/rerank`` end to end: a real gateway in front of fake TEI, vLLM and Infinity
rerankers (and embedding models, which must not rerank)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from embedding_gateway.state import GATEWAY
from tests.conftest import run_gateway, serve_app
from tests.fakes import FAKE_STATE, FakeState, serve_fake
from tests.fakes.infinity import create_infinity_app
from tests.fakes.scores import fake_score
from tests.fakes.tei import TEI_STATE, create_tei_app
from tests.fakes.vectors import count_tokens
from tests.fakes.vllm import create_vllm_app

TEI_RERANKER = "BAAI/bge-reranker-v2-m3"
TEI_EMBEDDER = "intfloat/e5-small-v2"
VLLM_RERANKER = "Qwen/Qwen3-Reranker-0.6B"
VLLM_EMBEDDER = "jinaai/jina-embeddings-v3"
INFINITY_RERANKER = "mixedbread-ai/mxbai-rerank-xsmall-v1"
QUERY = "where do llamas live"
DOCUMENTS = [f"document {i} about {'llamas' if i % 3 == 0 else 'the sea'}" for i in range(10)]
pytestmark = pytest.mark.timeout(30)


@dataclass
class Stack:
    url: str
    session: aiohttp.ClientSession
    apps: dict[str, web.Application]

    async def rerank(self, body: dict[str, Any], path: str = "/v1/rerank") -> tuple[int, Any]:
        async with self.session.post(f"{self.url}{path}", json=body) as resp:
            return resp.status, await resp.json()

    def fake(self, name: str) -> FakeState:
        return self.apps[name][FAKE_STATE]

    def calls(self, name: str, word: str) -> list[dict[str, Any]]:
        return [body for path, body in self.fake(name).requests if word in path]


@asynccontextmanager
async def stack(*, tei_batch: int = 4, vllm_legacy: bool = False, tei_permits: int = 512,
                **tei_options: Any) -> AsyncIterator[Stack]:
    apps: dict[str, web.Application] = {
        "tei": create_tei_app(TEI_RERANKER, max_client_batch_size=tei_batch,
                              model_type="reranker", max_concurrent_requests=tei_permits),
        "tei-embed": create_tei_app(TEI_EMBEDDER),
        "vllm": create_vllm_app(VLLM_RERANKER, task="score", error_shape="nested",
                                legacy_score=vllm_legacy),
        "vllm-embed": create_vllm_app(VLLM_EMBEDDER, error_shape="nested"),
        "infinity": create_infinity_app({"bge-small": 8}, rerankers=(INFINITY_RERANKER,)),
    }
    async with AsyncExitStack() as exits:
        urls = {name: await exits.enter_async_context(serve_fake(app))
                for name, app in apps.items()}

        def backend(name: str, kind: str, models: dict[str, Any]) -> dict[str, Any]:
            return {"kind": kind, "base_url": urls[name], "models": models}

        config = {"backends": {
            "tei": {**backend("tei", "tei", {TEI_RERANKER: {"aliases": ["bge-reranker"]}}),
                    **tei_options},
            "tei-embed": backend("tei-embed", "tei", {TEI_EMBEDDER: {}}),
            "vllm": backend("vllm", "vllm", {VLLM_RERANKER: {"task": "rerank"}}),
            "vllm-embed": backend("vllm-embed", "vllm", {VLLM_EMBEDDER: {}}),
            "infinity": backend("infinity", "openai", {INFINITY_RERANKER: {}, "bge-small": {}}),
        }}
        url = await exits.enter_async_context(run_gateway(config))
        session = await exits.enter_async_context(aiohttp.ClientSession())
        yield Stack(url, session, apps)


def expected_order(model: str, documents: list[str]) -> list[int]:
    scores = [fake_score(model, QUERY, d) for d in documents]
    return sorted(range(len(documents)), key=lambda i: -scores[i])


def assert_ranked(body: Any, model: str, asked: str, documents: list[str]) -> None:
    assert set(body) == {"object", "model", "results", "usage"}
    assert body["model"] == asked
    indices = [item["index"] for item in body["results"]]
    assert indices == expected_order(model, documents)[:len(indices)]
    for item in body["results"]:
        assert item["relevance_score"] == pytest.approx(
            fake_score(model, QUERY, documents[item["index"]]), abs=1e-6)


async def test_tei_documents_beyond_its_batch_limit_are_split_and_ranked_globally() -> None:
    async with stack(tei_batch=4) as s:
        status, body = await s.rerank({"model": "bge-reranker", "query": QUERY,
                                       "documents": DOCUMENTS})
        assert status == 200, body
        assert_ranked(body, TEI_RERANKER, "bge-reranker", DOCUMENTS)
        assert len(body["results"]) == len(DOCUMENTS)
        assert all("document" not in item for item in body["results"])
        calls = s.calls("tei", "rerank")
        assert sorted(len(call["texts"]) for call in calls) == [3, 3, 4]
        assert sorted(t for call in calls for t in call["texts"]) == sorted(DOCUMENTS)
        assert {call["raw_scores"] for call in calls} == {False}  # the sigmoid, as elsewhere
        # TEI counts tokens only in its x-compute-tokens header: the three calls' counts, summed
        pairs = sum(count_tokens(QUERY) + count_tokens(document) for document in DOCUMENTS)
        assert body["usage"]["prompt_tokens"] == pairs


@pytest.mark.parametrize(("bound", "peak"), [
    ({"tei_permits": 5}, 4),  # TEI's max_concurrent_requests: inputs in flight
    ({"max_concurrency": 1}, 4),  # the backend's calls in flight
    ({"max_calls_per_request": 2}, 8),  # one request's calls in flight
])
async def test_rerank_calls_keep_within_the_backends_bounds(bound: dict[str, int],
                                                            peak: int) -> None:
    async with stack(tei_batch=4, **bound) as s:
        s.apps["tei"][TEI_STATE].delay = 0.05
        status, body = await s.rerank({"model": TEI_RERANKER, "query": QUERY,
                                       "documents": DOCUMENTS + DOCUMENTS})
        assert status == 200, body
        assert_ranked(body, TEI_RERANKER, TEI_RERANKER, DOCUMENTS + DOCUMENTS)
        assert len(s.calls("tei", "rerank")) == 5
        assert s.apps["tei"][TEI_STATE].peak_in_flight == peak


async def test_top_n_return_documents_and_object_documents() -> None:
    async with stack() as s:
        documents = [{"text": d} if i % 2 else d for i, d in enumerate(DOCUMENTS)]
        status, body = await s.rerank({"model": TEI_RERANKER, "query": QUERY,
                                       "documents": documents, "top_n": 3,
                                       "return_documents": True}, path="/rerank")
        assert status == 200, body
        assert_ranked(body, TEI_RERANKER, TEI_RERANKER, DOCUMENTS)
        assert len(body["results"]) == 3
        for item in body["results"]:
            assert item["document"] == {"text": DOCUMENTS[item["index"]]}
        status, body = await s.rerank({"model": TEI_RERANKER, "query": QUERY,
                                       "documents": DOCUMENTS[:2], "top_n": 5})
        assert status == 200 and len(body["results"]) == 2


@pytest.mark.parametrize(("change", "param"), [
    ({"documents": []}, "documents"),
    ({"documents": "one"}, "documents"),
    ({"documents": [{"title": "no text"}]}, "documents"),
    ({"documents": ["a", ""]}, "documents"),
    ({"query": ""}, "query"),
    ({"top_n": 0}, "top_n"),
    ({"return_documents": "yes"}, "return_documents"),
])
async def test_bad_requests_are_400_in_the_envelope_before_any_call(
        change: dict[str, Any], param: str) -> None:
    async with stack() as s:
        status, body = await s.rerank({"model": TEI_RERANKER, "query": QUERY,
                                       "documents": DOCUMENTS, **change})
        assert status == 400
        assert body["error"]["type"] == "invalid_request_error"
        assert body["error"]["param"] == param
        assert s.calls("tei", "rerank") == []


async def test_each_model_does_only_its_task() -> None:
    async with stack() as s:
        for model in (TEI_EMBEDDER, VLLM_EMBEDDER, "bge-small"):
            status, body = await s.rerank({"model": model, "query": QUERY,
                                           "documents": DOCUMENTS})
            assert status == 400, body
            assert body["error"]["code"] == "model_task_mismatch"
            assert "embedding model" in body["error"]["message"]
        for model in (TEI_RERANKER, VLLM_RERANKER, INFINITY_RERANKER):
            async with s.session.post(f"{s.url}/v1/embeddings",
                                      json={"model": model, "input": "x"}) as resp:
                body = await resp.json()
                assert resp.status == 400, body
                assert body["error"]["code"] == "model_task_mismatch"
                assert "/v1/rerank" in body["error"]["message"]
        for name in ("tei-embed", "vllm-embed", "infinity"):
            assert s.calls(name, "rerank") == []
        async with s.session.get(f"{s.url}/v1/models") as resp:
            tasks = {m["id"]: m["task"] for m in (await resp.json())["data"]}
        assert tasks == {TEI_RERANKER: "rerank", "bge-reranker": "rerank",
                         TEI_EMBEDDER: "embed", VLLM_RERANKER: "rerank",
                         VLLM_EMBEDDER: "embed", INFINITY_RERANKER: "rerank",
                         "bge-small": "embed"}


@pytest.mark.parametrize("legacy", [False, True])
async def test_vllm_reranks_at_v1_rerank_or_at_v1_score_where_that_is_all_it_has(
        legacy: bool) -> None:
    async with stack(vllm_legacy=legacy) as s:
        for _ in range(2):
            status, body = await s.rerank({"model": VLLM_RERANKER, "query": QUERY,
                                           "documents": DOCUMENTS, "top_n": 4})
            assert status == 200, body
            assert_ranked(body, VLLM_RERANKER, VLLM_RERANKER, DOCUMENTS)
            assert len(body["results"]) == 4
            assert body["usage"]["prompt_tokens"] > 0
        paths = [path for path, _ in s.fake("vllm").requests if path.endswith(("rerank", "score"))]
        assert paths == (["/v1/rerank", "/v1/score", "/v1/score"] if legacy
                         else ["/v1/rerank", "/v1/rerank"])


async def test_infinity_reranks_without_a_v1_prefix_and_its_task_is_learnt() -> None:
    async with stack() as s:
        status, body = await s.rerank({"model": INFINITY_RERANKER, "query": QUERY,
                                       "documents": DOCUMENTS, "return_documents": True})
        assert status == 200, body
        assert_ranked(body, INFINITY_RERANKER, INFINITY_RERANKER, DOCUMENTS)
        assert body["results"][0]["document"] == {"text": DOCUMENTS[body["results"][0]["index"]]}
        [call] = s.calls("infinity", "rerank")
        assert call["model"] == INFINITY_RERANKER and "top_n" not in call


async def test_scores_from_another_model_are_never_returned() -> None:
    """TEI's /rerank names no model: a TEI replaced by another model between the gateway's
    check and the answer is caught by the /info read after the answer."""
    async with stack() as s:
        status, _ = await s.rerank({"model": TEI_RERANKER, "query": QUERY,
                                    "documents": DOCUMENTS[:2]})
        assert status == 200
        s.apps["tei"][TEI_STATE].model = "someone/else"
        status, body = await s.rerank({"model": TEI_RERANKER, "query": QUERY,
                                       "documents": DOCUMENTS[:2]})
        assert status == 502, body
        assert body["error"]["code"] == "model_mismatch"
        assert "someone/else" in body["error"]["message"]


async def test_a_vllm_answer_named_for_another_model_is_refused() -> None:
    async with stack() as s:
        s.fake("vllm").fail = (200, {"id": "x", "model": "other", "usage": {},
                                     "results": [{"index": 0, "relevance_score": 0.9}]})
        status, body = await s.rerank({"model": VLLM_RERANKER, "query": QUERY,
                                       "documents": DOCUMENTS[:1]})
        assert status == 502, body
        assert body["error"]["code"] == "model_mismatch"


async def test_upstream_errors_reach_the_client_in_the_envelope() -> None:
    async with stack() as s:
        s.apps["tei"][TEI_STATE].fail = (424, "Backend error: Inference failed")
        status, body = await s.rerank({"model": TEI_RERANKER, "query": QUERY,
                                       "documents": DOCUMENTS})
        assert status == 502
        assert "Inference failed" in body["error"]["message"]


async def test_the_log_line_and_the_metrics_carry_the_task() -> None:
    async with stack() as s:
        with capture_logs() as logs:
            status, _ = await s.rerank({"model": TEI_RERANKER, "query": QUERY,
                                        "documents": DOCUMENTS})
            assert status == 200
        [line] = [e for e in logs if e["event"] == "request"]
        assert line["task"] == "rerank" and line["inputs"] == len(DOCUMENTS)
        async with s.session.get(f"{s.url}/metrics") as resp:
            text = await resp.text()
        assert (f'embedding_gateway_inputs_total{{backend="tei",model="{TEI_RERANKER}",'
                f'task="rerank"}} {float(len(DOCUMENTS))}') in text


async def test_a_shutdown_answers_rerank_calls_still_waiting_for_a_place_with_503() -> None:
    app = create_tei_app(TEI_RERANKER, max_client_batch_size=4, model_type="reranker")
    async with serve_fake(app) as tei, serve_app({"backends": {"tei": {
            "kind": "tei", "base_url": tei, "max_concurrency": 1,
            "models": {TEI_RERANKER: {}}}}}) as (url, gateway_app), \
            aiohttp.ClientSession() as session:

        async def rerank() -> tuple[int, str | None, Any]:
            body = {"model": TEI_RERANKER, "query": QUERY, "documents": DOCUMENTS[:4]}
            async with session.post(f"{url}/v1/rerank", json=body) as response:
                return response.status, response.headers.get("Retry-After"), await response.json()

        assert (await rerank())[0] == 200  # the backend is checked and serving
        app[TEI_STATE].hang = True
        first = asyncio.create_task(rerank())
        await soon(lambda: sum(path == "/rerank" for path, _ in app[FAKE_STATE].requests) == 2)
        second = asyncio.create_task(rerank())  # the first holds the one place: this waits
        batcher = gateway_app[GATEWAY].batchers["tei"]
        await soon(lambda: any(address.waiting for address in batcher.addresses.values()))
        assert await gateway_app[GATEWAY].drain(0.05) == 2
        status, retry_after, body = await second
        assert (status, retry_after) == (503, "1")
        assert "shutting down" in body["error"]["message"]
        app[TEI_STATE].hang = False
        assert (await first)[0] == 200


async def soon(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the condition never held")
