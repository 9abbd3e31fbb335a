"""Requests that aiohttp refuses before any route (bad chunking, oversized or NUL headers,
content codings it cannot read, a request line that is not HTTP, an expectation other than
100-continue) are answered in the OpenAI envelope with the status that names the fault, on
the API's paths and on unknown ones, over raw sockets."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import compression_utils

from tests.conftest import run_gateway
from tests.fakes import serve_fake
from tests.fakes.tei import create_tei_app

MODEL = "org/model"
BODY = b'{"model": "org/model", "input": "x"}'


def post(path: bytes, headers: bytes, body: bytes = BODY) -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + headers + b"\r\n" + body)


def sized(headers: bytes, body: bytes = BODY) -> bytes:
    return headers + b"Content-Length: %d\r\n" % len(body)


BAD_CHUNK = b"Transfer-Encoding: chunked\r\n", b"zz\r\nabc\r\n0\r\n\r\n"
CASES = {
    "bad chunk size": (post(b"/v1/embeddings", *BAD_CHUNK), 400, "invalid_request"),
    "bad chunk size, unknown path": (post(b"/nope", *BAD_CHUNK), 400, "invalid_request"),
    "header line too long": (post(b"/v1/embeddings", sized(b"X-Big: " + b"a" * 9000 + b"\r\n")),
                             431, "headers_too_large"),
    "too many headers": (post(b"/v1/embeddings", sized(b"".join(
        b"X-%d: a\r\n" % i for i in range(200)))), 431, "headers_too_large"),
    "request line too long": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                              431, "headers_too_large"),
    "NUL in a header": (post(b"/v1/embeddings", sized(b"X-Nul: a\x00b\r\n")),
                        400, "invalid_request"),
    "NUL in a header, unknown path": (b"GET /nope HTTP/1.1\r\nHost: x\r\nX-Nul: a\x00b\r\n\r\n",
                                      400, "invalid_request"),
    "Content-Length and Transfer-Encoding": (
        post(b"/v1/embeddings", b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
             b"0\r\n\r\n"), 400, "invalid_request"),
    "negative Content-Length": (post(b"/v1/embeddings", b"Content-Length: -1\r\n", b""),
                                400, "invalid_request"),
    "not a method": (b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "invalid_request"),
    "TLS on the HTTP port": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40),
                             400, "invalid_request"),
    "br body": (post(b"/v1/embeddings", sized(b"Content-Encoding: br\r\n")),
                400 if compression_utils.HAS_BROTLI else 415,
                "invalid_request" if compression_utils.HAS_BROTLI else "unsupported_media_type"),
    "zstd body, unknown path": (
        post(b"/nope", sized(b"Content-Encoding: zstd\r\n")),
        400 if compression_utils.HAS_ZSTD else 415,
        "invalid_request" if compression_utils.HAS_ZSTD else "unsupported_media_type"),
    "gzip body that is not gzip": (post(b"/v1/embeddings", sized(b"Content-Encoding: gzip\r\n")),
                                   400, "invalid_request"),
    "Expect other than 100-continue": (post(b"/v1/embeddings", sized(b"Expect: 200-ok\r\n")),
                                       417, "expectation_failed"),
    "Expect, unknown path": (post(b"/nope", sized(b"Expect: 200-ok\r\n")),
                             417, "expectation_failed"),
    "Expect not UTF-8, unknown path": (post(b"/nope", sized(b"Expect: \xdd\xfe\r\n")),
                                       417, "expectation_failed"),
    "Expect not UTF-8": (post(b"/v1/embeddings", sized(b"Expect: \xdd\xfe\r\n")),
                         417, "expectation_failed"),
}


@pytest.fixture
async def gateway_address() -> AsyncIterator[tuple[str, int]]:
    async with serve_fake(create_tei_app(MODEL, dims=8)) as upstream, run_gateway(
            {"backends": {"t": {"kind": "tei", "base_url": upstream,
                                "models": {MODEL: {}}}}}) as url:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port)


async def exchange(address: tuple[str, int], raw: bytes) -> bytes:
    """Everything the gateway sends before it closes the connection."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(raw)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def split_answer(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in
               (line.partition(":") for line in header_lines)}
    return int(status_line.split()[1]), headers, body


@pytest.mark.parametrize("case", CASES)
async def test_malformed_http_gets_the_envelope_and_its_status(
    gateway_address: tuple[str, int], case: str
) -> None:
    raw, status, code = CASES[case]
    answer = await exchange(gateway_address, raw)  # read to the end: the connection is closed
    got, headers, body = split_answer(answer)
    assert got == status, answer[:300]
    assert headers["content-type"].startswith("application/json"), headers
    envelope = json.loads(body)
    assert set(envelope["error"]) == {"message", "type", "param", "code"}, envelope
    assert envelope["error"]["code"] == code, envelope
    assert envelope["error"]["message"], envelope
    assert b"aiohttp" not in body and b"install" not in body, body  # no internals, no advice
    # the gateway goes on serving
    answer = await exchange(gateway_address, post(b"/v1/embeddings",
                                                  sized(b"Connection: close\r\n")))
    assert split_answer(answer)[0] == 200, answer[:300]


async def test_expect_100_continue_is_answered_then_served(
    gateway_address: tuple[str, int]
) -> None:
    answer = await exchange(gateway_address, post(
        b"/v1/embeddings", sized(b"Expect: 100-continue\r\nConnection: close\r\n")))
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200"), answer[:300]
    assert json.loads(answer.rpartition(b"\r\n\r\n")[2])["data"]
