"""``/openapi.json`` is a valid OpenAPI 3.1 document, describes every route the app serves, and
real answers of a real gateway (in front of fake upstreams on loopback), success and error
ones, validate against it with openapi-core."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest
from openapi_core import OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from openapi_spec_validator import validate as validate_spec
from werkzeug.datastructures import Headers

from embedding_gateway.config import parse_config
from embedding_gateway.openapi import build_document
from embedding_gateway.rerank_schemas import RerankRequest
from embedding_gateway.schemas import EmbeddingRequest
from tests.conftest import serve_app
from tests.fakes import FAKE_STATE, serve_fake
from tests.fakes.tei import create_tei_app
from tests.fakes.vllm import create_vllm_app
from tests.ports import free_port

KEY = "sk-openapi-test"
E5 = "intfloat/multilingual-e5-small"
RERANKER = "BAAI/bge-reranker-base"
MAX_INPUTS = 4


@dataclass
class Exchange:
    """One real request and the gateway's real answer."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None
    query: dict[str, str]
    status: int = 0
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: bytes = b""


@dataclass
class Client:
    base_url: str
    session: aiohttp.ClientSession
    document: dict[str, Any]
    openapi: OpenAPI
    seen: set[tuple[str, str]] = field(default_factory=set)  # (METHOD, template) answered

    async def call(self, method: str, path: str, *, template: str | None = None,
                   json: Any = None, data: bytes | None = None, key: bool = True,
                   headers: dict[str, str] | None = None,
                   query: dict[str, str] | None = None) -> Exchange:
        """Send the request, validate the answer against the document, and return both."""
        sent = {"Content-Type": "application/json"} if json is not None or data else {}
        sent.update({"Authorization": f"Bearer {KEY}"} if key else {})
        sent.update(headers or {})
        body = orjson.dumps(json) if json is not None else data
        exchange = Exchange(method, path, sent, body, query or {})
        async with self.session.request(method, self.base_url + path, data=body, headers=sent,
                                        params=query, skip_auto_headers=["Content-Type"]
                                        ) as response:
            exchange.status = response.status
            exchange.response_headers = dict(response.headers)
            exchange.response_body = await response.read()
        self.openapi.validate_response(self._request(exchange, template),
                                       self._response(exchange))
        self._check_status_is_named(exchange, template or path)
        self.seen.add((method, template or path))
        return exchange

    def _check_status_is_named(self, exchange: Exchange, template: str) -> None:
        """Only an upstream's own refusal may fall under ``4XX``: every status the gateway
        itself answers is listed for the operation."""
        responses = self.document["paths"][template][exchange.method.lower()]["responses"]
        if str(exchange.status) not in responses:
            error = orjson.loads(exchange.response_body)["error"]
            assert error["code"] == "upstream_rejected", (exchange.status, template, error)

    def _request(self, exchange: Exchange, template: str | None) -> MockRequest:
        return MockRequest(
            self.base_url, exchange.method, urlsplit(self.base_url + exchange.path).path,
            path_pattern=template, args=exchange.query,
            view_args=path_arguments(exchange, template), headers=exchange.headers,
            data=exchange.body,
            content_type=exchange.headers.get("Content-Type", "application/json"),
        )

    def _response(self, exchange: Exchange) -> MockResponse:
        headers = Headers(exchange.response_headers)
        media = headers.get("Content-Type", "").split(";")[0]
        return MockResponse(exchange.response_body, exchange.status,
                            headers=exchange.response_headers, content_type=media)

    def request_is_valid(self, exchange: Exchange, template: str | None = None) -> bool:
        """Does the document accept this request (body, parameters, auth) as it was sent?"""
        result = self.openapi.unmarshal_request(self._request(exchange, template))
        return not result.errors


def path_arguments(exchange: Exchange, template: str | None) -> dict[str, str]:
    """``{model}`` of ``/v1/models/{model}``: the rest of the path, slashes and all."""
    if template is None or "{" not in template:
        return {}
    prefix, _, rest = template.partition("{")
    return {rest.split("}")[0]: exchange.path.removeprefix(prefix)}


@contextlib.asynccontextmanager
async def gateway_client(*, api_keys: list[str], down: bool) -> AsyncIterator[tuple[Client, Any]]:
    """A gateway with TEI (e5-small, alias e5), vLLM (token ids, Matryoshka), a TEI reranker,
    a TEI whose every embedding fails and, if ``down``, a backend nobody listens on; and a
    client for it that has validated the app's own /openapi.json."""
    broken = create_tei_app("BAAI/bge-small-en-v1.5", dims=384)
    broken[FAKE_STATE].fail = (424, "Backend error: Inference failed")
    async with contextlib.AsyncExitStack() as stack:
        tei = await stack.enter_async_context(serve_fake(create_tei_app(E5, dims=384)))
        vllm = await stack.enter_async_context(
            serve_fake(create_vllm_app("jina-v3", dims=64, matryoshka=True)))
        failing = await stack.enter_async_context(serve_fake(broken))
        reranker = await stack.enter_async_context(serve_fake(
            create_tei_app(RERANKER, model_type="reranker")))
        backends: dict[str, Any] = {
            "tei": {"kind": "tei", "base_url": tei,
                    "models": {E5: {"aliases": ["e5"], "dimensions": 384}}},
            "vllm": {"kind": "vllm", "base_url": vllm,
                     "models": {"jina-v3": {"dimensions": 64, "matryoshka": True}}},
            "rerank": {"kind": "tei", "base_url": reranker,
                       "models": {RERANKER: {"aliases": ["reranker"]}}},
            "broken": {"kind": "tei", "base_url": failing,
                       "models": {"BAAI/bge-small-en-v1.5": {"aliases": ["broken"]}}},
        }
        if down:
            backends["down"] = {"kind": "tei", "base_url": f"http://127.0.0.1:{free_port()}",
                                "models": {"nobody/home": {}}}
        config = {"server": {"api_keys": api_keys, "debug_endpoints": True, "health_timeout": 10,
                             "limits": {"max_inputs": MAX_INPUTS}},
                  "backends": backends}
        base_url, app = await stack.enter_async_context(serve_app(config))
        session = await stack.enter_async_context(aiohttp.ClientSession())
        async with session.get(f"{base_url}/openapi.json") as response:
            assert response.status == 200
            document = await response.json()
        validate_spec(document)
        client = Client(base_url, session, document, OpenAPI.from_dict(document))
        served = {(route.method, route.resource.canonical) for route in app.router.routes()
                  if route.method != "HEAD" and route.resource is not None}
        described = {(method.upper(), path) for path, item in document["paths"].items()
                     for method in item}
        assert described == served
        yield client, document


def operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


async def test_every_answer_of_a_gateway_with_keys_matches_the_document() -> None:
    async with gateway_client(api_keys=[KEY], down=True) as (client, document):
        call, valid = client.call, client.request_is_valid
        assert document["security"] == [{"bearer": []}]

        ok = [
            await call("POST", "/v1/embeddings", json={"model": "e5", "input": ["a", "b"]}),
            await call("POST", "/v1/embeddings", json={"model": E5, "input": "one text",
                                                        "encoding_format": "base64"}),
            await call("POST", "/v1/embeddings", json={"model": "jina-v3", "input": [[1, 2, 3]],
                                                        "dimensions": 16, "user": "u"}),
            await call("POST", "/v1/embeddings", json={"model": "jina-v3",
                                                        "input": [[5], [6, 7]]}),
            await call("POST", "/v1/embeddings", json={"model": "e5", "input": ["a", "b"],
                                                        "encoding_format": "int8",
                                                        "input_type": "search_query",
                                                        "truncate": "END"}),
            await call("POST", "/v1/embeddings", json={"model": "e5", "input": ["a"],
                                                        "encoding_format": "ubinary",
                                                        "truncate": False}),
        ]
        assert [e.status for e in ok] == [200] * 6
        cut = await call("POST", "/v1/embeddings", json={"model": "e5", "truncate": True,
                                                          "input": ["word " * 600, "short"]})
        assert cut.status == 200 and valid(cut)
        assert orjson.loads(cut.response_body)["truncated_inputs"] == [0]
        assert cut.response_headers["X-Truncated-Inputs"] == "0" and all(valid(e) for e in ok)

        refused = {
            400: [await call("POST", "/v1/embeddings", data=b"{not json"),
                  await call("POST", "/v1/embeddings", json={"model": "e5"}),
                  await call("POST", "/v1/embeddings", json={"model": "e5", "input": []}),
                  await call("POST", "/v1/embeddings", json={"model": "e5", "input": [""]}),
                  await call("POST", "/v1/embeddings", json={"model": "e5", "input": "x",
                                                              "encoding_format": "int7"}),
                  await call("POST", "/v1/embeddings", json={"model": "e5", "input": "x",
                                                              "dimensions": 0}),
                  await call("POST", "/v1/embeddings", json={"model": "e5", "input": "x",
                                                              "input_type": "poem"}),
                  await call("POST", "/v1/embeddings", json={"model": "e5", "input": "x",
                                                              "truncate": "START"})],
            401: [await call("POST", "/v1/embeddings", json={"model": "e5", "input": "x"},
                             key=False)],
            413: [await call("POST", "/v1/embeddings",
                             json={"model": "e5", "input": ["x"] * (MAX_INPUTS + 1)})],
        }
        for status, exchanges in refused.items():
            assert [e.status for e in exchanges] == [status] * len(exchanges)
            assert not any(valid(e) for e in exchanges), status  # the document refuses them too

        others = [
            await call("POST", "/v1/embeddings", json={"model": "nope", "input": "x"}),
            await call("POST", "/v1/embeddings", json={"model": "e5", "input": "x"},
                       headers={"Origin": "https://elsewhere.example"}),
            await call("POST", "/v1/embeddings", data=b'{"model":"e5","input":"x"}',
                       headers={"Origin": client.base_url, "Content-Type": "text/plain"}),
            await call("POST", "/v1/embeddings", json={"model": "e5", "input": "x"},
                       headers={"Expect": "the-unexpected"}),
            await call("POST", "/v1/embeddings", json={"model": "broken", "input": "x"}),
            await call("POST", "/v1/embeddings", json={"model": "nobody/home", "input": "x"}),
            await call("POST", "/v1/embeddings", json={"model": E5, "input": "x",
                                                        "dimensions": 8}),
        ]
        assert [e.status for e in others][:4] == [404, 403, 415, 417]
        assert others[4].status in (424, 502) and others[5].status in (502, 503)
        assert others[6].status == 400
        assert orjson.loads(others[0].response_body)["error"]["code"] == "model_not_found"

        docs = ["Seoul is sunny.", {"text": "Markets fell."}, "It rains in Busan."]
        ranked = [
            await call("POST", "/v1/rerank", json={"model": "reranker", "query": "weather",
                                                    "documents": docs}),
            await call("POST", "/rerank", json={"model": RERANKER, "query": "weather",
                                                 "documents": docs, "top_n": 2,
                                                 "return_documents": True}),
            await call("POST", "/v2/rerank", json={"model": "reranker", "query": "weather",
                                                    "documents": docs[::2]}),
        ]
        assert [e.status for e in ranked] == [200] * 3 and all(valid(e) for e in ranked)
        assert len(orjson.loads(ranked[1].response_body)["results"]) == 2
        rerank_refused = [
            await call("POST", "/v1/rerank", json={"model": "reranker", "query": "",
                                                    "documents": docs}),
            await call("POST", "/v1/rerank", json={"model": "reranker", "query": "q",
                                                    "documents": []}),
            await call("POST", "/v1/rerank", json={"model": "reranker", "query": "q",
                                                    "documents": docs, "top_n": 0}),
            await call("POST", "/v1/rerank", json={"model": "reranker", "query": "q",
                                                    "documents": ["d"] * (MAX_INPUTS + 1)}),
        ]
        assert [e.status for e in rerank_refused] == [400, 400, 400, 413]
        assert not any(valid(e) for e in rerank_refused)
        wrong_task = [
            await call("POST", "/v1/rerank", json={"model": "e5", "query": "q",
                                                    "documents": docs}),
            await call("POST", "/v1/embeddings", json={"model": "reranker", "input": "x"}),
            await call("POST", "/rerank", json={"model": "nope", "query": "q",
                                                 "documents": docs}),
        ]
        assert [e.status for e in wrong_task] == [400, 400, 404]

        listed = await call("GET", "/v1/models")
        ids = [m["id"] for m in orjson.loads(listed.response_body)["data"]]
        assert {"e5", E5, "jina-v3", "broken"} <= set(ids)
        model = "/v1/models/{model}"
        for name in ("e5", E5, "jina-v3"):
            one = await call("GET", f"/v1/models/{name}", template=model)
            assert one.status == 200 and valid(one, model)
        assert (await call("GET", "/v1/models/nope", template=model)).status == 404
        assert (await call("GET", "/v1/models/e5", template=model, key=False)).status == 401
        assert (await call("GET", "/v1/models", key=False)).status == 401

        health = await call("GET", "/health")
        assert health.status == 503 and "backends" in orjson.loads(health.response_body)
        anonymous = await call("GET", "/health", key=False)
        assert "backends" not in orjson.loads(anonymous.response_body)
        assert (await call("GET", "/health/ready")).status == 200
        assert (await call("GET", "/health/ready", key=False)).status == 200
        assert (await call("GET", "/metrics")).status == 200
        assert (await call("GET", "/metrics", key=False)).status == 401
        unmet = await call("GET", "/health", headers={"Expect": "the-unexpected"})
        assert unmet.status == 417 and "X-Request-ID" in unmet.response_headers
        for page in ("/", "/docs", "/playground", "/openapi.json"):
            assert (await call("GET", page, key=False)).status == 200
        blocked = await call("POST", "/debug/block-loop", query={"seconds": "0"})
        assert blocked.status == 200 and valid(blocked)
        assert (await call("POST", "/debug/block-loop", query={"seconds": "x"})).status == 400

        assert client.seen >= operations(document)


async def test_without_keys_the_document_asks_for_none_and_health_is_200() -> None:
    async with gateway_client(api_keys=[], down=False) as (client, document):
        assert "security" not in document
        assert all("security" not in op for item in document["paths"].values()
                   for op in item.values())
        embedded = await client.call("POST", "/v1/embeddings", key=False,
                                     json={"model": "e5", "input": ["a"]})
        assert embedded.status == 200 and client.request_is_valid(embedded)
        for _ in range(100):  # the first checks of every backend, on a busy machine
            async with client.session.get(f"{client.base_url}/health") as response:
                if response.status == 200:
                    break
            await asyncio.sleep(0.1)
        health = await client.call("GET", "/health", key=False)
        assert health.status == 200 and "backends" in orjson.loads(health.response_body)
        assert (await client.call("GET", "/metrics", key=False)).status == 200


def test_every_request_field_the_gateway_reads_is_described() -> None:
    config = parse_config({"backends": {"tei": {
        "kind": "tei", "base_url": "http://127.0.0.1:9", "models": {E5: {}}}}}, env={})
    schemas = build_document(config, set())["components"]["schemas"]
    embedding = {f.name for f in dataclasses.fields(EmbeddingRequest)} - {"inputs", "tokens"}
    assert embedding | {"input"} <= set(schemas["EmbeddingRequest"]["properties"])
    rerank = {f.name for f in dataclasses.fields(RerankRequest)}
    assert rerank <= set(schemas["RerankRequest"]["properties"])


async def test_the_document_follows_the_config() -> None:
    async with gateway_client(api_keys=[KEY], down=False) as (_, document):
        request = document["components"]["schemas"]["EmbeddingRequest"]
        assert request["properties"]["input"]["oneOf"][1]["maxItems"] == MAX_INPUTS
        assert document["paths"]["/health"]["get"]["security"] == [{}, {"bearer": []}]
        assert document["paths"]["/docs"]["get"]["security"] == []
        assert "/debug/block-loop" in document["paths"]


@pytest.mark.parametrize("name", ["e5", E5])
async def test_the_openai_sdk_retrieves_a_model_by_name_or_alias(name: str) -> None:
    openai = pytest.importorskip("openai")
    async with gateway_client(api_keys=[KEY], down=False) as (client, _):
        sdk = openai.AsyncOpenAI(base_url=f"{client.base_url}/v1", api_key=KEY, max_retries=0)
        try:
            model = await sdk.models.retrieve(name)
            assert (model.id, model.object, model.owned_by) == (name, "model",
                                                                "embedding-gateway")
            with pytest.raises(openai.NotFoundError) as raised:
                await sdk.models.retrieve("no/such-model")
            assert raised.value.code == "model_not_found"
        finally:
            await sdk.close()
