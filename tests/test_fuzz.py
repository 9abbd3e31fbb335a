"""Fuzzing the API: a few thousand generated requests against a real gateway in front of a
fake vLLM and a fake Ollama. None may get a 5xx of the gateway's own, every error is the
OpenAI envelope, every 200 carries exactly one vector per input, and the gateway stays up.

The gateway runs on its own event loop in a thread, so that hypothesis drives it with plain
blocking sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import run_gateway
from tests.fakes import serve_fake
from tests.fakes.ollama import create_ollama_app
from tests.fakes.vllm import create_vllm_app

VLLM_MODEL, OLLAMA_MODEL = "org/fuzz-v", "fuzz-o"
MODELS = [VLLM_MODEL, OLLAMA_MODEL, "fuzz-alias", "no-such-model", "", "FUZZ-O"]
def fuzz_settings(examples: int) -> settings:
    """Reproducible (derandomized) and without a per-example deadline: loopback round trips
    on a busy 2-core machine vary."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


class GatewayThread:
    """A gateway (and its fakes) on an event loop of its own, for the whole module."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.stop: asyncio.Event | None = None
        self.url = ""
        self.thread = threading.Thread(target=self.loop.run_until_complete,
                                       args=(self.main(),), daemon=True)

    async def main(self) -> None:
        self.stop = asyncio.Event()
        async with AsyncExitStack() as stack:
            vllm = await stack.enter_async_context(serve_fake(
                create_vllm_app(VLLM_MODEL, dims=8, max_model_len=64, matryoshka=True,
                                error_shape="nested")))
            ollama = await stack.enter_async_context(serve_fake(
                create_ollama_app({OLLAMA_MODEL: 8})))
            config = {"server": {"limits": {"max_inputs": 64, "max_body_bytes": 65536}},
                      "backends": {
                          "v": {"kind": "vllm", "base_url": vllm, "models": {VLLM_MODEL: {
                              "aliases": ["fuzz-alias"], "dimensions": 8, "matryoshka": True}}},
                          "o": {"kind": "ollama", "base_url": ollama,
                                "models": {OLLAMA_MODEL: {}}}}}
            self.url = await stack.enter_async_context(run_gateway(config))
            self.ready.set()
            await self.stop.wait()

    def __enter__(self) -> GatewayThread:
        self.thread.start()
        assert self.ready.wait(30), "the gateway did not start"
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self.stop is not None
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)
        self.loop.close()

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.url.removeprefix("http://").split(":")
        return host, int(port)

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(*self.address, timeout=30)
        try:
            connection.request("POST", "/v1/embeddings", body=body,
                               headers={"Content-Type": "application/json", **(headers or {})})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayThread]:
    with GatewayThread() as running:
        yield running


texts = st.text(max_size=40)
token_ids = st.lists(st.integers(min_value=-5, max_value=300_000), max_size=12)
json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | texts
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(texts, inner, max_size=4), max_leaves=12)
inputs = st.one_of(
    texts,
    st.lists(texts, max_size=70),
    token_ids,
    st.lists(token_ids, max_size=8),
    st.lists(texts | token_ids, max_size=6),
    json_value,
)
requests = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(MODELS) | json_value,
        "input": inputs,
        "encoding_format": st.sampled_from(["float", "base64", "int8", None, ""]) | json_value,
        "dimensions": st.integers(min_value=-2, max_value=12) | json_value,
        "user": texts | json_value,
        "extra": json_value,
    },
)


def assert_answer(status: int, raw: bytes) -> None:
    assert status < 500, (status, raw[:300])  # the fakes are healthy: any 5xx is the gateway's
    body = json.loads(raw)
    if status != 200:
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        return
    assert body["object"] == "list"
    assert [item["index"] for item in body["data"]] == list(range(len(body["data"])))
    assert body["data"], body


@fuzz_settings(1500)
@given(request=requests)
def test_generated_requests_get_an_answer_or_an_enveloped_error(
    gateway: GatewayThread, request: dict[str, Any]
) -> None:
    status, raw = gateway.post(json.dumps(request).encode())
    assert_answer(status, raw)
    if status == 200:
        value = request["input"]
        expected = 1 if isinstance(value, str) or (
            isinstance(value, list) and value and isinstance(value[0], int)) else len(value)
        assert len(json.loads(raw)["data"]) == expected


@fuzz_settings(400)
@given(body=st.binary(max_size=300) | texts.map(str.encode),
       content_type=st.sampled_from(["application/json", "text/plain", "", "application/x"]))
def test_bodies_that_are_not_json_get_an_enveloped_400(
    gateway: GatewayThread, body: bytes, content_type: str
) -> None:
    status, raw = gateway.post(body, {"Content-Type": content_type})
    assert_answer(status, raw)


header_names = st.sampled_from(["Authorization", "Content-Encoding", "Transfer-Encoding",
                                "Expect", "X-Request-ID", "Origin", "Content-Length", "X-Junk"])
header_values = st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@fuzz_settings(300)
@given(headers=st.lists(st.tuples(header_names, header_values), max_size=4),
       body=st.binary(max_size=120))
def test_raw_framing_never_gets_a_5xx_and_the_gateway_stays_up(
    gateway: GatewayThread, headers: list[tuple[str, bytes]], body: bytes
) -> None:
    lines = b"".join(name.encode() + b": " + value + b"\r\n" for name, value in headers)
    raw = (b"POST /v1/embeddings HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n" + lines
           + b"\r\n" + body)
    with socket.create_connection(gateway.address, timeout=3) as sock:
        sock.sendall(raw)
        answer = b""
        with contextlib.suppress(TimeoutError):  # a body still awaited: no answer yet
            while chunk := sock.recv(65536):
                answer += chunk
    while answer.startswith(b"HTTP/1.1 100 "):  # the interim answer to Expect: 100-continue
        answer = answer.partition(b"\r\n\r\n")[2]
    if answer:  # an answer, never a server error, and every error in the envelope
        head, _, payload = answer.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            length = int(re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)[1])
            assert_answer(status, payload[:length])
        assert status < 500, answer[:300]
    status, raw_body = gateway.post(b'{"model": "org/fuzz-v", "input": "still up"}')
    assert status == 200, raw_body
