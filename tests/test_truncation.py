"""One contract for over-long inputs on Ollama, TEI and vLLM (their fakes follow each server's
own truncation and its own refusal): a 256-input batch with one over-long input is refused
naming that input, or has exactly that input cut at the model's limit and named, the same way
on every backend, per model and per request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import numpy as np
import openai
import pytest
from aiohttp import web

from tests.conftest import run_gateway
from tests.fakes import FAKE_STATE, serve_fake
from tests.fakes.ollama import create_ollama_app
from tests.fakes.tei import create_tei_app
from tests.fakes.vectors import fake_vector, truncate_item
from tests.fakes.vllm import VLLM_STATE, create_vllm_app

MODEL = "bge-m3"
DIMS = 16
LIMIT = 32
LONG_AT = 171
TEXTS = [f"input number {i}" for i in range(256)]
LONG = " ".join(f"word{i}" for i in range(LIMIT + 9))
BATCH = [*TEXTS[:LONG_AT], LONG, *TEXTS[LONG_AT + 1:]]

def vllm_cutting_from_the_left() -> web.Application:
    """A vLLM whose tokenizer truncates from the left unless asked otherwise."""
    app = create_vllm_app(MODEL, dims=DIMS, max_model_len=LIMIT)
    app[VLLM_STATE].truncation_side = "left"
    return app


FAKES = {
    "ollama": lambda: create_ollama_app({MODEL: DIMS}, context_length=LIMIT),
    "tei": lambda: create_tei_app(MODEL, dims=DIMS, max_input_length=LIMIT,
                                  max_client_batch_size=64),  # auto_truncate on, as TEI 1.9
    "vllm": vllm_cutting_from_the_left,
}


@asynccontextmanager
async def gateway(kind: str, **model: Any) -> AsyncIterator[tuple[str, web.Application]]:
    app = FAKES[kind]()
    async with serve_fake(app) as upstream, run_gateway({"backends": {"b": {
        "kind": kind, "base_url": upstream, "models": {MODEL: model},
    }}}) as url:
        yield url, app


async def post(url: str, **body: Any) -> tuple[int, dict[str, Any], Any]:
    async with aiohttp.ClientSession() as session, session.post(
            f"{url}/v1/embeddings", json={"model": MODEL, **body}) as resp:
        return resp.status, await resp.json(), resp.headers


def assert_rows(body: dict[str, Any], expected: list[str]) -> None:
    got = np.asarray([item["embedding"] for item in body["data"]], dtype=np.float32)
    want = np.stack([fake_vector(MODEL, text, DIMS) for text in expected])
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("kind", list(FAKES))
async def test_refused_by_default_naming_the_input_on_every_backend(kind: str) -> None:
    async with gateway(kind) as (url, _):
        status, body, headers = await post(url, input=BATCH)
        assert status == 400, body
        error = body["error"]
        assert (error["code"], error["param"], error["type"]) == (
            "input_too_long", "input", "invalid_request_error")
        assert error["message"].startswith(f"'input[{LONG_AT}]' ")
        if kind != "ollama":  # Ollama says neither length nor limit; TEI and vLLM say both
            assert f"is {LIMIT + 9} tokens long" in error["message"]
            assert f"takes at most {LIMIT} tokens" in error["message"]
        assert "X-Truncated-Inputs" not in headers
        status, body, _ = await post(url, input=TEXTS)  # the same batch, short: no trace of it
        assert status == 200 and "truncated_inputs" not in body
        assert_rows(body, TEXTS)


@pytest.mark.parametrize("kind", list(FAKES))
@pytest.mark.parametrize("where", ["request", "model"])
async def test_truncated_by_the_upstream_and_named_on_every_backend(kind: str, where: str) -> None:
    model = {"truncation": "truncate"} if where == "model" else {}
    request = {"truncate": True} if where == "request" else {}
    async with gateway(kind, **model) as (url, app):
        status, body, headers = await post(url, input=BATCH, **request)
        assert status == 200, body
        assert body["truncated_inputs"] == [LONG_AT]
        assert headers["X-Truncated-Inputs"] == str(LONG_AT)
        cut = str(truncate_item(LONG, LIMIT))
        assert_rows(body, [*TEXTS[:LONG_AT], cut, *TEXTS[LONG_AT + 1:]])
        # the one call that asked for truncation carried the long input alone (TEI 1.9's
        # /v1/embeddings truncates by itself, with --auto-truncate on by default)
        sent = [(path, r) for path, r in app[FAKE_STATE].requests if "embed" in path]
        with_truncation = [r for path, r in sent if r.get("truncate") is True
                           or r.get("truncate_prompt_tokens") == -1
                           or (path == "/v1/embeddings" and kind == "tei")]
        assert [r.get("input") or r.get("inputs") for r in with_truncation] == [[LONG]]
        status, body, headers = await post(url, input=TEXTS, **request)
        assert status == 200 and body["truncated_inputs"] == []
        assert headers["X-Truncated-Inputs"] == ""


@pytest.mark.parametrize("kind", list(FAKES))
async def test_the_limit_is_learnt_from_the_upstream_or_configured(kind: str) -> None:
    async def listed(url: str) -> Any:
        async with aiohttp.ClientSession() as session, session.get(f"{url}/v1/models") as resp:
            return {card["id"]: card["max_input_tokens"] for card in (await resp.json())["data"]}

    async with gateway(kind) as (url, _):  # Ollama reports no limit; TEI and vLLM do
        assert (await post(url, input="x"))[0] == 200  # served: the upstream has been checked
        assert await listed(url) == {MODEL: None if kind == "ollama" else LIMIT}
    async with gateway(kind, max_input_tokens=LIMIT - 2) as (url, _):
        assert await listed(url) == {MODEL: LIMIT - 2}
        status, body, _ = await post(url, input=["short", LONG])
        assert status == 400
        assert f"takes at most {LIMIT - 2} tokens" in body["error"]["message"]


@pytest.mark.parametrize("kind", list(FAKES))
async def test_a_request_may_refuse_what_its_model_would_truncate(kind: str) -> None:
    async with gateway(kind, truncation="truncate") as (url, _):
        status, body, _ = await post(url, input=[LONG], truncate="NONE")
        assert status == 400 and body["error"]["message"].startswith("'input[0]' ")
        status, body, _ = await post(url, input=LONG, truncate="END")
        assert status == 200 and body["truncated_inputs"] == [0]


async def test_requests_of_both_settings_merged_into_one_call_each_get_their_own() -> None:
    app = create_vllm_app(MODEL, dims=DIMS, max_model_len=LIMIT)
    app[FAKE_STATE].delay = 0.05
    async with serve_fake(app) as upstream, run_gateway({"backends": {"b": {
        "kind": "vllm", "merge": "wait", "max_concurrency": 1, "base_url": upstream,
        "models": {MODEL: {}},
    }}}) as url:
        import asyncio

        first = asyncio.create_task(post(url, input=["warm"]))
        await asyncio.sleep(0.01)
        results = await asyncio.gather(
            post(url, input=["a", LONG, "b"], truncate=True),
            post(url, input=["c", LONG], truncate=False),
            post(url, input=["d", "e"]),
        )
        assert (await first)[0] == 200
        (s1, b1, _), (s2, b2, _), (s3, b3, _) = results
        assert s1 == 200 and b1["truncated_inputs"] == [1]
        assert_rows(b1, ["a", str(truncate_item(LONG, LIMIT)), "b"])
        assert s2 == 400 and b2["error"]["message"].startswith("'input[1]' ")
        assert s3 == 200 and "truncated_inputs" not in b3
        assert_rows(b3, ["d", "e"])


async def test_the_official_sdk_reads_a_response_that_names_truncated_inputs() -> None:
    async with gateway("vllm", truncation="truncate") as (url, _):
        sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        try:
            for extra in ({"encoding_format": "float"}, {}):  # {}: the SDK asks for base64
                raw = await sdk.embeddings.with_raw_response.create(
                    model=MODEL, input=["short", LONG], **extra)
                result = raw.parse()
                assert raw.headers["X-Truncated-Inputs"] == "1"
                assert [d.index for d in result.data] == [0, 1]
                np.testing.assert_allclose(result.data[1].embedding, fake_vector(
                    MODEL, str(truncate_item(LONG, LIMIT)), DIMS), atol=1e-6)
                assert result.model_extra == {"truncated_inputs": [1]}
            with pytest.raises(openai.BadRequestError) as refused:
                await sdk.embeddings.create(model=MODEL, input=[LONG],
                                            extra_body={"truncate": False})
            assert refused.value.code == "input_too_long"
        finally:
            await sdk.close()


async def test_truncation_on_a_backend_that_cannot_be_asked_is_refused_up_front() -> None:
    app = create_vllm_app(MODEL, dims=DIMS, max_model_len=LIMIT)
    async with serve_fake(app) as upstream, run_gateway({"backends": {"b": {
        "kind": "openai", "base_url": upstream + "/v1", "models": {MODEL: {}},
    }}}) as url:
        status, body, _ = await post(url, input=["x"], truncate=True)
        assert status == 400 and body["error"]["param"] == "truncate"
        assert not [p for p, _ in app[FAKE_STATE].requests if p.endswith("embeddings")]


async def test_teis_embed_route_never_gives_another_models_vectors() -> None:
    """Strict calls to an auto-truncating TEI go to /embed, whose answers name no model: a TEI
    that starts serving other weights between health checks is caught by /info after the
    answer, as /v1/embeddings answers are by their ``model``."""
    from tests.fakes.tei import TEI_STATE

    async with gateway("tei") as (url, app):
        assert (await post(url, input=["x"]))[0] == 200
        app[TEI_STATE].model = "another/model"
        status, body, _ = await post(url, input=["y"])  # not cached: it reaches the upstream
        assert status == 502 and body["error"]["code"] == "model_mismatch", body
        assert [p for p, _ in app[FAKE_STATE].requests if p == "/embed"]
