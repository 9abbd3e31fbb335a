"""Every failure a client can see comes in OpenAI's error envelope with the right status."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import run_gateway
from tests.fakes import FAKE_STATE, FakeState, serve_fake
from tests.fakes.ollama import create_ollama_app
from tests.fakes.tei import create_tei_app
from tests.fakes.vllm import create_vllm_app

TEI_MODEL = "BAAI/bge-small-en-v1.5"
VLLM_MODEL = "intfloat/e5-mistral-7b-instruct"
OLLAMA_MODEL = "nomic-embed-text"
LONG_TEXT = " ".join(["word"] * 40)


async def call(
    session: aiohttp.ClientSession,
    url: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    method: str = "POST",
    path: str = "/v1/embeddings",
    headers: dict[str, str] | None = None,
) -> tuple[int, Any, Mapping[str, str]]:
    kwargs: dict[str, Any] = {"headers": dict(headers or {})}
    if raw is not None:
        kwargs["data"] = raw
        kwargs["headers"].setdefault("Content-Type", "application/json")
    elif body is not None:
        kwargs["json"] = body
    async with session.request(method, url + path, **kwargs) as resp:
        text = await resp.text()
        assert "Traceback" not in text and 'File "' not in text, text
        try:
            parsed: Any = await resp.json(content_type=None)
        except ValueError:
            parsed = text
        return resp.status, parsed, resp.headers


def assert_error(status: int, body: Any, expected: int, param: str | None = None) -> str:
    """Check the envelope and return its message."""
    assert status == expected, body
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    if param is not None:
        assert error["param"] == param, error
    return error["message"]


@asynccontextmanager
async def tei_gateway(
    *, backend: dict[str, Any] | None = None, server: dict[str, Any] | None = None, **tei: Any
) -> AsyncIterator[tuple[str, aiohttp.ClientSession, FakeState]]:
    app = create_tei_app(TEI_MODEL, dims=16, **tei)
    async with serve_fake(app) as tei_url:
        config: dict[str, Any] = {"backends": {"tei": {
            "kind": "tei", "base_url": tei_url, "models": {TEI_MODEL: {"aliases": ["bge"]}},
            **(backend or {}),
        }}}
        if server:
            config["server"] = server
        async with run_gateway(config) as url, aiohttp.ClientSession() as session:
            yield url, session, app[FAKE_STATE]


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'"a string"', None),
        (b'{"input": "x"}', "model"),
        (b'{"model": 5, "input": "x"}', "model"),
        (b'{"model": "", "input": "x"}', "model"),
        (b'{"model": "bge"}', "input"),
        (b'{"model": "bge", "input": 5}', "input"),
        (b'{"model": "bge", "input": null}', "input"),
        (b'{"model": "bge", "input": [1.5, 2]}', "input"),
        (b'{"model": "bge", "input": ["a", 1]}', "input"),
        (b'{"model": "bge", "input": [["a"]]}', "input"),
        (b'{"model": "bge", "input": [[1], "a"]}', "input"),
        (b'{"model": "bge", "input": [true]}', "input"),
        (b'{"model": "bge", "input": []}', "input"),
        (b'{"model": "bge", "input": ""}', "input"),
        (b'{"model": "bge", "input": ["ok", ""]}', "input"),
        (b'{"model": "bge", "input": [[]]}', "input"),
        (b'{"model": "bge", "input": "x", "encoding_format": "int4"}', "encoding_format"),
        (b'{"model": "bge", "input": "x", "encoding_format": 5}', "encoding_format"),
        (b'{"model": "bge", "input": "x", "encoding_format": false}', "encoding_format"),
        (b'{"model": "bge", "input": "x", "encoding_format": ""}', "encoding_format"),
        (b'{"model": "bge", "input": "x", "dimensions": true}', "dimensions"),
        (b'{"model": "bge", "input": "x", "dimensions": 0}', "dimensions"),
        (b'{"model": "bge", "input": "x", "dimensions": -3}', "dimensions"),
        (b'{"model": "bge", "input": "x", "dimensions": "5"}', "dimensions"),
        (b'{"model": "bge", "input": "x", "dimensions": 5.5}', "dimensions"),
    ],
)
async def test_bad_requests_are_400_and_never_reach_the_upstream(
    raw: bytes, param: str | None
) -> None:
    async with tei_gateway() as (url, session, fake):
        status, body, _ = await call(session, url, raw=raw)
        assert_error(status, body, 400, param)
        assert body["error"]["type"] == "invalid_request_error"
        assert not [p for p, _ in fake.requests if p == "/v1/embeddings"]


async def test_unknown_model_is_404_naming_it() -> None:
    async with tei_gateway() as (url, session, _):
        status, body, _ = await call(session, url, {"model": "no-such-model", "input": "x"})
        message = assert_error(status, body, 404, "model")
        assert "no-such-model" in message
        assert body["error"]["code"] == "model_not_found"


async def test_body_over_the_limit_is_413() -> None:
    async with tei_gateway(server={"limits": {"max_body_bytes": 2000}}) as (url, session, _):
        status, body, _ = await call(session, url, {"model": "bge", "input": "x" * 5000})
        assert "2000 bytes" in assert_error(status, body, 413)
        status, body, _ = await call(session, url, {"model": "bge", "input": "x" * 100})
        assert status == 200, body


async def test_more_inputs_than_the_limit_is_413_naming_the_limit() -> None:
    async with tei_gateway(server={"limits": {"max_inputs": 10}}) as (url, session, _):
        status, body, _ = await call(session, url, {"model": "bge", "input": ["a"] * 11})
        message = assert_error(status, body, 413, "input")
        assert "10" in message
        status, body, _ = await call(session, url, {"model": "bge", "input": ["a"] * 10})
        assert status == 200, body


async def test_unknown_route_and_wrong_method_use_the_envelope() -> None:
    async with tei_gateway() as (url, session, _):
        status, body, _ = await call(session, url, method="GET", path="/v1/nothing")
        assert_error(status, body, 404)
        status, body, _ = await call(session, url, method="GET")
        assert_error(status, body, 405)
        status, body, _ = await call(session, url, {"model": "x"}, path="/v1/models")
        assert_error(status, body, 405)


async def test_teis_422_for_an_over_long_input_is_a_400_with_its_message() -> None:
    async with tei_gateway(max_input_length=8, auto_truncate=False) as (url, session, _):
        status, body, _ = await call(session, url, {"model": "bge", "input": LONG_TEXT})
        message = assert_error(status, body, 400, "input")
        assert "must have less than 8 tokens" in message


@pytest.mark.parametrize("shape", ["object", "nested"])
async def test_vllm_context_length_400_in_either_error_shape(shape: str) -> None:
    app = create_vllm_app(VLLM_MODEL, dims=16, max_model_len=8, error_shape=shape)  # type: ignore[arg-type]
    async with serve_fake(app) as upstream:
        config = {"backends": {"vllm": {"kind": "vllm", "base_url": upstream,
                                        "models": {VLLM_MODEL: {}}}}}
        async with run_gateway(config) as url, aiohttp.ClientSession() as session:
            status, body, _ = await call(session, url, {"model": VLLM_MODEL, "input": LONG_TEXT})
            message = assert_error(status, body, 400)
            assert "maximum context length is 8 tokens" in message


async def test_ollama_404_for_a_model_that_is_gone_keeps_its_message() -> None:
    app = create_ollama_app({OLLAMA_MODEL: 16})
    async with serve_fake(app) as upstream:
        config = {"backends": {"ollama": {"kind": "ollama", "base_url": upstream,
                                          "models": {OLLAMA_MODEL: {}}}}}
        async with run_gateway(config) as url, aiohttp.ClientSession() as session:
            status, body, _ = await call(session, url, {"model": OLLAMA_MODEL, "input": "x"})
            assert status == 200, body
            gone = f'model "{OLLAMA_MODEL}" not found, try pulling it first'
            app[FAKE_STATE].fail = (404, gone)
            status, body, _ = await call(session, url, {"model": OLLAMA_MODEL, "input": "y"})
            assert assert_error(status, body, 404) == gone


async def test_ollama_model_that_was_never_pulled_is_404_with_ollamas_message() -> None:
    app = create_ollama_app({"bge-m3": 16})
    async with serve_fake(app) as upstream:
        config = {"backends": {"ollama": {"kind": "ollama", "base_url": upstream,
                                          "models": {OLLAMA_MODEL: {}}}}}
        async with run_gateway(config) as url, aiohttp.ClientSession() as session:
            status, body, _ = await call(session, url, {"model": OLLAMA_MODEL, "input": "x"})
            message = assert_error(status, body, 404)
            assert "try pulling it first" in message


@pytest.mark.parametrize("kind", ["tei", "vllm", "ollama"])
async def test_upstream_5xx_is_502(kind: str) -> None:
    apps: dict[str, Callable[[], web.Application]] = {
        "tei": lambda: create_tei_app(TEI_MODEL, dims=16),
        "vllm": lambda: create_vllm_app(TEI_MODEL, dims=16),
        "ollama": lambda: create_ollama_app({TEI_MODEL: 16}),
    }
    app = apps[kind]()
    app[FAKE_STATE].fail = (500, None)
    async with serve_fake(app) as upstream:
        config = {"backends": {"b": {"kind": kind, "base_url": upstream,
                                     "models": {TEI_MODEL: {}}}}}
        async with run_gateway(config) as url, aiohttp.ClientSession() as session:
            status, body, _ = await call(session, url, {"model": TEI_MODEL, "input": "x"})
            assert_error(status, body, 502)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("kind", ["tei", "vllm", "ollama", "openai"])
async def test_refused_connection_is_502(kind: str) -> None:
    config = {"backends": {"b": {"kind": kind, "base_url": f"http://127.0.0.1:{closed_port()}",
                                 "models": {"m": {}}}}}
    async with run_gateway(config) as url, aiohttp.ClientSession() as session:
        status, body, _ = await call(session, url, {"model": "m", "input": "x"})
        assert_error(status, body, 502)


@pytest.mark.parametrize(("kind", "model", "other"), [
    ("tei", TEI_MODEL, "some/other-model"),
    ("vllm", VLLM_MODEL, "something-else"),
])
async def test_an_upstream_serving_another_model_is_503_with_retry_after_and_no_vectors(
    kind: str, model: str, other: str
) -> None:
    app = (create_tei_app(other, dims=16) if kind == "tei"
           else create_vllm_app(model, dims=16, served_model_name=other))
    async with serve_fake(app) as upstream:
        config = {"backends": {kind: {"kind": kind, "base_url": upstream,
                                      "models": {model: {}}}}}
        async with run_gateway(config) as url, aiohttp.ClientSession() as session:
            status, body, headers = await call(session, url, {"model": model, "input": "x"})
            message = assert_error(status, body, 503)
            assert other in message
            assert int(headers["Retry-After"]) >= 1
            assert not [p for p, _ in app[FAKE_STATE].requests if p == "/v1/embeddings"]


async def test_api_keys_guard_the_api_but_not_health() -> None:
    async with tei_gateway(server={"api_keys": ["k-one", "k-two"]}) as (url, session, _):
        body_in = {"model": "bge", "input": "x"}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "k-one"},
                        {"Authorization": "Basic k-one"}):
            status, body, _ = await call(session, url, body_in, headers=headers)
            assert_error(status, body, 401)
            assert body["error"]["type"] == "authentication_error"
        status, body, _ = await call(session, url, method="GET", path="/v1/models")
        assert_error(status, body, 401)
        for key in ("k-one", "k-two"):
            status, body, _ = await call(
                session, url, body_in, headers={"Authorization": f"Bearer {key}"}
            )
            assert status == 200, body
        status, _, _ = await call(session, url, method="GET", path="/health")
        assert status == 200
        status, _, _ = await call(session, url, method="GET", path="/health/ready")
        assert status == 200


async def test_request_id_is_echoed_or_generated() -> None:
    async with tei_gateway() as (url, session, _):
        _, _, headers = await call(session, url, {"model": "bge", "input": "x"},
                                   headers={"X-Request-ID": "abc-123"})
        assert headers["X-Request-ID"] == "abc-123"
        _, _, headers = await call(session, url, {"model": "nope", "input": "x"},
                                   headers={"X-Request-ID": "err-7"})
        assert headers["X-Request-ID"] == "err-7"
        _, _, first = await call(session, url, {"model": "bge", "input": "x"})
        _, _, second = await call(session, url, {"model": "bge", "input": "x"})
        assert first["X-Request-ID"] and second["X-Request-ID"]
        assert first["X-Request-ID"] != second["X-Request-ID"]


async def test_a_body_that_cannot_be_decoded_is_a_400() -> None:
    """``Content-Encoding: gzip`` on a body that is not gzip."""
    async with serve_fake(create_vllm_app("org/v", dims=8)) as vllm:
        config = {"backends": {"v": {"kind": "vllm", "base_url": vllm, "models": {"org/v": {}}}}}
        async with run_gateway(config) as url, aiohttp.ClientSession() as session:
            headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
            async with session.post(f"{url}/v1/embeddings", headers=headers,
                                    data=b'{"model": "org/v", "input": "x"}') as resp:
                assert resp.status == 400
                envelope = await resp.json()
            assert envelope["error"]["type"] == "invalid_request_error"
            assert "could not be read" in envelope["error"]["message"]


async def test_an_authorization_header_that_is_not_utf8_is_a_401() -> None:
    async with tei_gateway(server={"api_keys": ["k-one"]}) as (url, _session, _):
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        body = b'{"model": "bge", "input": "x"}'
        writer.write(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Authorization: Bearer k-\xff\xfe\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401"), answer[:300]
        assert json.loads(payload)["error"]["type"] == "authentication_error"


async def test_without_the_key_health_says_up_or_down_and_nothing_else() -> None:
    """Model names, upstream addresses and managed servers' log lines are for key holders."""
    async with tei_gateway(server={"api_keys": ["k-one"]}) as (url, session, _):
        status, body, _ = await call(session, url, {"model": "bge", "input": "x"},
                                     headers={"Authorization": "Bearer k-one"})
        assert status == 200, body  # the backend is checked, and healthy
        for path in ("/health", "/health/ready"):
            status, body, _ = await call(session, url, method="GET", path=path)
            assert status == 200
            assert set(body) <= {"status", "draining"}, body
            status, body, _ = await call(session, url, method="GET", path=path,
                                         headers={"Authorization": "Bearer k-one"})
            assert status == 200
            assert {"backends", "serving_backends"} & set(body), body


async def test_another_sites_page_cannot_use_the_gateway_through_a_browser() -> None:
    """Without API keys, a page elsewhere could otherwise embed (and swap models) through
    its visitors' browsers; the gateway's own pages and non-browser clients are unaffected."""
    async with tei_gateway() as (url, session, _):
        body = b'{"model": "bge", "input": "x"}'
        host = url.removeprefix("http://")
        refused = [
            {"Origin": "https://evil.example", "Content-Type": "text/plain"},
            {"Origin": "https://evil.example", "Content-Type": "application/json"},
            {"Origin": "null", "Content-Type": "text/plain"},
            {"Sec-Fetch-Site": "cross-site", "Content-Type": "text/plain"},
            {"Origin": f"http://{host.split(':')[0]}:1", "Sec-Fetch-Site": "same-site"},
        ]
        for headers in refused:
            status, envelope, _ = await call(session, url, raw=body, headers=headers)
            assert_error(status, envelope, 403)
            assert envelope["error"]["code"] == "cross_origin_refused"
        same = {"Origin": url, "Sec-Fetch-Site": "same-origin"}
        status, envelope, _ = await call(session, url, raw=body,
                                         headers={**same, "Content-Type": "text/plain"})
        assert_error(status, envelope, 415)
        status, envelope, _ = await call(session, url, raw=body,
                                         headers={**same, "Content-Type": "application/json"})
        assert status == 200, envelope
        curl = {"Content-Type": "application/x-www-form-urlencoded"}  # curl -d, no Origin
        status, envelope, _ = await call(session, url, raw=body, headers=curl)
        assert status == 200, envelope
