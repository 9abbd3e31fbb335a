"""The official ``cohere`` SDK (v1 and v2 clients, ``base_url`` pointed at the gateway)
reranking through a running gateway in front of a fake TEI reranker."""

from __future__ import annotations

from collections.abc import AsyncIterator

import cohere
import pytest

from tests.conftest import run_gateway
from tests.fakes import serve_fake
from tests.fakes.scores import fake_score
from tests.fakes.tei import create_tei_app

RERANKER = "BAAI/bge-reranker-v2-m3"
QUERY = "Where do llamas live?"
DOCUMENTS = ["Llamas live in the Andes.", "Stocks fell sharply.", "Alpacas are camelids.",
             "The sea is deep.", "Peru has many llamas."]
pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def gateway_url() -> AsyncIterator[str]:
    app = create_tei_app(RERANKER, max_client_batch_size=2, model_type="reranker")
    async with serve_fake(app) as tei, run_gateway({"backends": {"tei": {
            "kind": "tei", "base_url": tei, "models": {RERANKER: {"aliases": ["bge"]}}}}}) as url:
        yield url


def expected() -> list[int]:
    return sorted(range(len(DOCUMENTS)), key=lambda i: -fake_score(RERANKER, QUERY, DOCUMENTS[i]))


async def test_cohere_v1_client_reranks_with_documents(gateway_url: str) -> None:
    client = cohere.AsyncClient(api_key="unused", base_url=gateway_url)
    response = await client.rerank(model="bge", query=QUERY, documents=DOCUMENTS, top_n=3,
                                   return_documents=True)
    assert [r.index for r in response.results] == expected()[:3]
    for result in response.results:
        assert result.document is not None and result.document.text == DOCUMENTS[result.index]
        assert result.relevance_score == pytest.approx(
            fake_score(RERANKER, QUERY, DOCUMENTS[result.index]))


async def test_cohere_v2_client_reranks(gateway_url: str) -> None:
    client = cohere.AsyncClientV2(api_key="unused", base_url=gateway_url)
    response = await client.rerank(model="bge", query=QUERY, documents=DOCUMENTS)
    assert [r.index for r in response.results] == expected()


async def test_cohere_sdk_raises_on_the_gateways_400(gateway_url: str) -> None:
    client = cohere.AsyncClientV2(api_key="unused", base_url=gateway_url)
    with pytest.raises(cohere.BadRequestError) as caught:
        await client.rerank(model="bge", query=QUERY, documents=[])
    assert caught.value.body["error"]["param"] == "documents"
