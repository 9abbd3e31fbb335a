"""A reranker under the supervisor, as any model: swapped with an embedder on one GPU under
load, or beside it where memory allows; instances are fake TEI apps on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.fake_runtime import FakeRuntime
from tests.fakes.scores import fake_score
from tests.fakes.vectors import which_model
from tests.ports import free_pair
from tests.test_supervisor import DIMS, Client, backend, gateway

EMBEDDER, RERANKER = "m-a", "r-a"
ROUNDS = 12
pytestmark = pytest.mark.timeout(60)


async def rerank(client: Client, query: str, documents: list[str]) -> tuple[int, Any]:
    async with client.session.post(f"{client.url}/v1/rerank", json={
            "model": RERANKER, "query": query, "documents": documents}) as response:
        return response.status, await response.json()


async def test_a_reranker_and_an_embedder_swap_under_load_without_a_wrong_answer() -> None:
    runtime = FakeRuntime()
    runtime.rerankers = {RERANKER}
    runtime.request_delay = {EMBEDDER: 0.005, RERANKER: 0.005}
    wrong: list[str] = []
    answered = {"embed": 0, "rerank": 0}
    # max_wait 0.1: a model waiting while the other serves is swapped in after 0.1 s
    config = {**backend(free_pair(), [EMBEDDER, RERANKER], max_wait=0.1), "max_batch": 4}
    async with gateway(runtime, {"t": config}) as client:

        async def embedder(worker: int) -> None:
            for n in range(ROUNDS):
                text = f"text {worker} {n}"
                status, body, _ = await client.embed(EMBEDDER, text)
                if status != 200:
                    wrong.append(f"embed {status} {body}")
                elif which_model(body["data"][0]["embedding"], text, [EMBEDDER, RERANKER],
                                 DIMS) != EMBEDDER:
                    wrong.append(f"embed: a vector of another model for {text!r}")
                else:
                    answered["embed"] += 1

        async def reranker(worker: int) -> None:
            for n in range(ROUNDS):
                query = f"query {worker} {n}"
                documents = [f"document {worker} {n} {k}" for k in range(10)]  # 3 calls each
                status, body = await rerank(client, query, documents)
                if status != 200:
                    wrong.append(f"rerank {status} {body}")
                    continue
                expected = sorted(range(10), key=lambda k: -fake_score(RERANKER, query,
                                                                       documents[k]))
                got = [item["index"] for item in body["results"]]
                scores_right = all(
                    abs(item["relevance_score"]
                        - fake_score(RERANKER, query, documents[item["index"]])) < 1e-6
                    for item in body["results"])
                if got != expected or not scores_right:
                    wrong.append(f"rerank: wrong ranking or scores for {query!r}")
                else:
                    answered["rerank"] += 1

        await asyncio.gather(*(embedder(w) for w in range(3)), *(reranker(w) for w in range(3)))
        assert wrong == []
        assert answered == {"embed": 3 * ROUNDS, "rerank": 3 * ROUNDS}
        assert runtime.starts.count(RERANKER) >= 2 and runtime.starts.count(EMBEDDER) >= 2
        models = await client.models()
        assert models[RERANKER]["task"] == "rerank" and models[EMBEDDER]["task"] == "embed"


async def test_a_reranker_and_an_embedder_sit_side_by_side_when_memory_allows() -> None:
    runtime = FakeRuntime()
    runtime.rerankers = {RERANKER}
    models = {EMBEDDER: {"memory_gb": 2, "gpu": "0"}, RERANKER: {"memory_gb": 2, "gpu": "0"}}
    config = backend(free_pair(), models, max_instances=2)
    async with gateway(runtime, {"t": config}, gpus={"0": {"memory_gb": 4}}) as client:
        for _ in range(3):
            await client.ok(EMBEDDER)
            status, body = await rerank(client, "q", ["a", "b", "c"])
            assert status == 200, body
        assert sorted(runtime.starts) == [EMBEDDER, RERANKER]
        assert runtime.stops == []
