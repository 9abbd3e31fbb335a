"""``POST /v1/embeddings`` end to end: a real gateway in front of fake TEI, Ollama and vLLM."""

from __future__ import annotations

import asyncio
import base64
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
import numpy as np
import orjson
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from tests.conftest import run_gateway
from tests.fakes import FAKE_STATE, FakeState, serve_fake
from tests.fakes.ollama import create_ollama_app
from tests.fakes.tei import create_tei_app
from tests.fakes.vectors import count_tokens, cut, fake_vector, which_model
from tests.fakes.vllm import create_vllm_app

TEI_MODEL = "intfloat/e5-small-v2"
OLLAMA_MODEL = "bge-m3"
VLLM_MODEL = "jinaai/jina-embeddings-v3"
ALL_MODELS = [TEI_MODEL, OLLAMA_MODEL, VLLM_MODEL]
TEI_DIMS, OLLAMA_DIMS, VLLM_DIMS = 384, 32, 64


@dataclass
class Stack:
    url: str
    session: aiohttp.ClientSession
    fakes: dict[str, FakeState]

    async def post(self, body: Any) -> tuple[int, Any]:
        async with self.session.post(f"{self.url}/v1/embeddings", json=body) as resp:
            return resp.status, await resp.json()

    def embedding_requests(self, backend: str) -> list[dict[str, Any]]:
        return [body for path, body in self.fakes[backend].requests if "embed" in path]


@asynccontextmanager
async def stack(tei_batch: int = 32, token_ids: str = "openai",
                limits: dict[str, Any] | None = None) -> AsyncIterator[Stack]:
    """TEI, Ollama and vLLM fakes behind a gateway; ``token_ids`` for every model but
    Ollama's (which takes text only)."""
    apps: dict[str, web.Application] = {
        "tei": create_tei_app(TEI_MODEL, dims=TEI_DIMS, max_client_batch_size=tei_batch),
        "ollama": create_ollama_app({OLLAMA_MODEL: OLLAMA_DIMS}),
        "vllm": create_vllm_app(VLLM_MODEL, dims=VLLM_DIMS, error_shape="nested"),
    }
    async with AsyncExitStack() as exits:
        urls = {name: await exits.enter_async_context(serve_fake(app))
                for name, app in apps.items()}
        config = {"server": {"limits": limits or {}}, "backends": {
            "tei": {"kind": "tei", "base_url": urls["tei"], "models": {
                TEI_MODEL: {"aliases": ["e5"], "matryoshka": True, "dimensions": TEI_DIMS,
                            "token_ids": token_ids}}},
            "ollama": {"kind": "ollama", "base_url": urls["ollama"], "models": {
                OLLAMA_MODEL: {"aliases": ["bge"]}}},
            "vllm": {"kind": "vllm", "base_url": urls["vllm"], "models": {
                VLLM_MODEL: {"token_ids": token_ids}}},
        }}
        url = await exits.enter_async_context(run_gateway(config))
        session = await exits.enter_async_context(aiohttp.ClientSession())
        yield Stack(url, session, {name: app[FAKE_STATE] for name, app in apps.items()})


def assert_envelope(status: int, body: Any, model: str, count: int) -> None:
    assert status == 200, body
    assert set(body) == {"object", "data", "model", "usage"}
    assert body["object"] == "list"
    assert body["model"] == model
    assert set(body["usage"]) == {"prompt_tokens", "total_tokens"}
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"]
    assert len(body["data"]) == count
    for i, item in enumerate(body["data"]):
        assert set(item) == {"object", "index", "embedding"}
        assert item["object"] == "embedding"
        assert item["index"] == i


def sent_inputs(body: dict[str, Any]) -> Any:
    """The inputs of one upstream call: ``input`` (OpenAI's shape), ``inputs`` (TEI's /embed)."""
    return body["input"] if "input" in body else body["inputs"]


def from_base64(value: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(value), dtype="<f4")


@pytest.mark.parametrize(
    ("model", "expected", "dims"),
    [
        (TEI_MODEL, TEI_MODEL, TEI_DIMS),
        ("e5", TEI_MODEL, TEI_DIMS),
        (OLLAMA_MODEL, OLLAMA_MODEL, OLLAMA_DIMS),
        ("bge", OLLAMA_MODEL, OLLAMA_DIMS),
        (VLLM_MODEL, VLLM_MODEL, VLLM_DIMS),
    ],
)
async def test_string_and_list_of_strings_reach_the_right_model(
    model: str, expected: str, dims: int
) -> None:
    async with stack() as s:
        status, body = await s.post({"model": model, "input": "hello world"})
        assert_envelope(status, body, model, 1)
        vector = body["data"][0]["embedding"]
        assert len(vector) == dims
        assert which_model(vector, "hello world", ALL_MODELS, dims) == expected
        assert body["usage"]["prompt_tokens"] == 2

        texts = ["alpha", "beta gamma", "delta epsilon zeta"]
        status, body = await s.post({"model": model, "input": texts})
        assert_envelope(status, body, model, 3)
        for text, item in zip(texts, body["data"], strict=True):
            assert which_model(item["embedding"], text, ALL_MODELS, dims) == expected
        assert body["usage"]["total_tokens"] == sum(count_tokens(t) for t in texts)


@pytest.mark.parametrize(("model", "dims"), [(TEI_MODEL, TEI_DIMS), (VLLM_MODEL, VLLM_DIMS)])
async def test_the_models_own_token_ids_go_to_tei_and_vllm_unchanged(
    model: str, dims: int
) -> None:
    async with stack(token_ids="model") as s:
        status, body = await s.post({"model": model, "input": [101, 2023, 102]})
        assert_envelope(status, body, model, 1)
        assert which_model(body["data"][0]["embedding"], [101, 2023, 102], ALL_MODELS, dims) \
            == model

        batch = [[1, 2, 3], [4, 5], [6]]
        status, body = await s.post({"model": model, "input": batch})
        assert_envelope(status, body, model, 3)
        for ids, item in zip(batch, body["data"], strict=True):
            assert which_model(item["embedding"], ids, ALL_MODELS, dims) == model
        assert body["usage"]["prompt_tokens"] == 6
        backend = "tei" if model == TEI_MODEL else "vllm"
        assert [sent_inputs(r) for r in s.embedding_requests(backend)] == [[[101, 2023, 102]],
                                                                        batch]


@pytest.mark.parametrize(("model", "dims"), [(TEI_MODEL, TEI_DIMS), (OLLAMA_MODEL, OLLAMA_DIMS),
                                             (VLLM_MODEL, VLLM_DIMS)])
async def test_base64_is_float32_little_endian_of_the_float_answer(model: str, dims: int) -> None:
    texts = ["one", "two three"]
    async with stack() as s:
        _, floats = await s.post({"model": model, "input": texts, "encoding_format": "float"})
        status, b64 = await s.post({"model": model, "input": texts, "encoding_format": "base64"})
        assert_envelope(status, b64, model, 2)
        for f, b in zip(floats["data"], b64["data"], strict=True):
            assert isinstance(b["embedding"], str)
            decoded = from_base64(b["embedding"])
            assert decoded.shape == (dims,)
            np.testing.assert_array_equal(decoded, np.asarray(f["embedding"], dtype=np.float32))


async def test_dimensions_cut_and_renormalise_a_matryoshka_model() -> None:
    texts = ["matryoshka doll", "nested"]
    async with stack() as s:
        for fmt in ("float", "base64"):
            status, body = await s.post(
                {"model": "e5", "input": texts, "dimensions": 16, "encoding_format": fmt}
            )
            assert_envelope(status, body, "e5", 2)
            for text, item in zip(texts, body["data"], strict=True):
                raw = item["embedding"]
                got = from_base64(raw) if fmt == "base64" else np.asarray(raw, dtype=np.float32)
                assert got.shape == (16,)
                assert abs(float(np.linalg.norm(got)) - 1.0) < 1e-5
                expected = cut(fake_vector(TEI_MODEL, text, TEI_DIMS), 16)
                np.testing.assert_allclose(got, expected, atol=1e-6)


async def test_dimensions_refused_for_a_model_not_marked_matryoshka() -> None:
    async with stack() as s:
        status, body = await s.post({"model": OLLAMA_MODEL, "input": "x", "dimensions": 8})
        assert status == 400
        assert body["error"]["param"] == "dimensions"
        assert "Matryoshka" in body["error"]["message"]
        assert s.embedding_requests("ollama") == []


async def test_dimensions_above_the_configured_size_are_refused() -> None:
    async with stack() as s:
        status, body = await s.post({"model": "e5", "input": "x", "dimensions": TEI_DIMS + 1})
        assert status == 400
        assert body["error"]["param"] == "dimensions"
        assert str(TEI_DIMS) in body["error"]["message"]
        status, body = await s.post({"model": "e5", "input": "x", "dimensions": TEI_DIMS})
        assert_envelope(status, body, "e5", 1)
        assert len(body["data"][0]["embedding"]) == TEI_DIMS


async def test_a_thousand_inputs_are_split_to_the_upstream_limit_and_kept_in_order() -> None:
    texts = [f"input number {i}" for i in range(1000)]
    async with stack(tei_batch=32) as s:
        status, body = await s.post({"model": TEI_MODEL, "input": texts})
        assert_envelope(status, body, TEI_MODEL, 1000)
        for text, item in zip(texts, body["data"], strict=True):
            assert which_model(item["embedding"], text, [TEI_MODEL], TEI_DIMS) == TEI_MODEL
        assert body["usage"]["prompt_tokens"] == 3 * 1000
        chunks = [len(b.get("input") or b["inputs"]) for b in s.embedding_requests("tei")]
        assert sum(chunks) == 1000
        assert max(chunks) <= 32
        assert len(chunks) >= 1000 // 32


async def test_a_small_upstream_batch_limit_learnt_from_tei_info_is_obeyed() -> None:
    texts = [f"t{i}" for i in range(23)]
    async with stack(tei_batch=5) as s:
        status, body = await s.post({"model": TEI_MODEL, "input": texts})
        assert_envelope(status, body, TEI_MODEL, 23)
        chunks = [len(b.get("input") or b["inputs"]) for b in s.embedding_requests("tei")]
        assert sum(chunks) == 23 and max(chunks) <= 5
        for text, item in zip(texts, body["data"], strict=True):
            assert which_model(item["embedding"], text, [TEI_MODEL], TEI_DIMS) == TEI_MODEL


async def test_a_large_float_response_parses() -> None:
    texts = [f"row {i}" for i in range(300)]
    async with stack() as s:
        async with s.session.post(
            f"{s.url}/v1/embeddings", json={"model": "e5", "input": texts}
        ) as resp:
            assert resp.status == 200
            assert resp.content_type == "application/json"
            body = await resp.json()
        assert_envelope(200, body, "e5", 300)
        matrix = np.asarray([item["embedding"] for item in body["data"]], dtype=np.float32)
        assert matrix.shape == (300, TEI_DIMS)
        np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)
        assert which_model(matrix[299], "row 299", ALL_MODELS, TEI_DIMS) == TEI_MODEL


async def test_a_json_body_sent_as_a_form_is_read_as_json() -> None:
    """``curl -d '{...}'`` without ``-H 'Content-Type: application/json'``."""
    async with serve_fake(create_vllm_app("org/v", dims=8)) as vllm:
        config = {"backends": {"v": {"kind": "vllm", "base_url": vllm, "models": {"org/v": {}}}}}
        async with run_gateway(config) as url, aiohttp.ClientSession() as session:
            body = b'{"model": "org/v", "input": "hello"}'
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            async with session.post(f"{url}/v1/embeddings", data=body, headers=headers) as resp:
                assert resp.status == 200
                assert len((await resp.json())["data"][0]["embedding"]) == 8


async def test_a_vllm_served_model_name_is_what_requests_carry() -> None:
    """``vllm serve /models/qwen --served-model-name qwen`` accepts only ``qwen``."""
    app = create_vllm_app("/models/qwen", dims=8, served_model_name="qwen")
    async with serve_fake(app) as vllm:
        config = {"backends": {"v": {"kind": "vllm", "base_url": vllm, "models": {
            "qwen-embed": {"upstream_model": "/models/qwen", "served_name": "qwen"}}}}}
        async with run_gateway(config) as url, aiohttp.ClientSession() as session:
            body = {"model": "qwen-embed", "input": "hello"}
            async with session.post(f"{url}/v1/embeddings", json=body) as resp:
                assert resp.status == 200, await resp.text()
                data = await resp.json()
            assert data["model"] == "qwen-embed"
            assert which_model(data["data"][0]["embedding"], "hello", ["/models/qwen"], 8) \
                == "/models/qwen"


@asynccontextmanager
async def vllm_gateway(dims: int, delay: float = 0.0) -> AsyncIterator[tuple[str, int]]:
    """A gateway over one fake vLLM serving ``org/v``; yields the gateway's host and port.
    Answers of more than 64 inputs of 1024-d are streamed."""
    app = create_vllm_app("org/v", dims=dims)
    app[FAKE_STATE].delay = delay
    async with serve_fake(app) as vllm:
        config = {"backends": {"v": {"kind": "vllm", "base_url": vllm, "max_batch": 512,
                                     "models": {"org/v": {}}}}}
        async with run_gateway(config) as url:
            host, port = url.removeprefix("http://").split(":")
            yield host, int(port)


def raw_request(inputs: int, request_id: str = "raw-1") -> bytes:
    body = orjson.dumps({"model": "org/v", "input": [f"t{i}" for i in range(inputs)]})
    return (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-Request-ID: %s\r\nContent-Length: %d\r\n\r\n" % (request_id.encode(),
                                                                  len(body)) + body)


async def request_line(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The request's log line, once it is written."""
    for _ in range(100):
        if any(e["event"] == "request" for e in events):
            break
        await asyncio.sleep(0.05)
    [line] = [e for e in events if e["event"] == "request"]
    return line


async def test_a_client_gone_before_the_answer_is_logged_as_gone() -> None:
    """The answer is written before the log line; a client that left while the upstream
    worked is named in that line, and nothing fails."""
    async with vllm_gateway(dims=8, delay=0.3) as (host, port):
        with capture_logs() as events:
            _, writer = await asyncio.open_connection(host, port)
            writer.write(raw_request(1))
            await writer.drain()
            await asyncio.sleep(0.1)
            writer.transport.abort()  # gone while the upstream is still at work
            line = await request_line(events)
        assert "went away" in line["error"]
        assert line["model"] == "org/v"
        assert not [e for e in events if e["event"] == "unhandled_error"]


async def test_a_streamed_answer_carries_the_request_id() -> None:
    async with vllm_gateway(dims=1024) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(raw_request(128, request_id="big-1"))
        head = await reader.readuntil(b"\r\n\r\n")
        writer.close()
    assert b"Transfer-Encoding: chunked" in head  # streamed
    assert b"X-Request-ID: big-1" in head


async def test_a_failure_midway_through_a_streamed_answer_cuts_the_connection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once a 200 is on the wire, a later failure cannot become a second answer."""
    import embedding_gateway.api

    real_chunks = embedding_gateway.api.response_chunks

    def failing_chunks(*args: Any, **kwargs: Any) -> Any:
        chunks = real_chunks(*args, **kwargs)
        yield next(chunks)
        raise RuntimeError("an encoder bug")

    monkeypatch.setattr(embedding_gateway.api, "response_chunks", failing_chunks)
    async with vllm_gateway(dims=1024) as (host, port):
        with capture_logs() as events:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(raw_request(128))
            received = await asyncio.wait_for(reader.read(), 10)  # until it is cut
            writer.close()
            line = await request_line(events)
    assert received.startswith(b"HTTP/1.1 200")
    assert received.count(b"HTTP/1.1") == 1
    assert not received.endswith(b"0\r\n\r\n")  # no clean end of the chunked body
    assert line["error"] == "internal error"
    assert [e for e in events if e["event"] == "unhandled_error"]


async def test_a_client_leaving_during_a_large_response_is_not_an_internal_error() -> None:
    async with vllm_gateway(dims=1024) as (host, port):
        with capture_logs() as events:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # back-pressure soon
            sock.connect((host, port))
            reader, writer = await asyncio.open_connection(sock=sock)
            writer.write(raw_request(2048))
            await writer.drain()
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            writer.transport.abort()  # gone, with megabytes still to come
            line = await request_line(events)
        assert "went away" in line["error"]
        assert not [e for e in events if e["event"] == "unhandled_error"]
