"""The upstream HTTP client against real loopback servers: aiohttp ones for well-behaved HTTP,
raw asyncio ones for the ways a connection can end badly."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import orjson
import pytest
from aiohttp import web

from embedding_gateway.http_client import HttpClient, HttpError
from tests.fakes import serve_fake
from tests.ports import free_port

Exchange = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(exchange: Exchange) -> AsyncIterator[tuple[str, list[int]]]:
    """A TCP server running ``exchange`` per connection; yields its URL and a list that
    counts the connections made."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            await exchange(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", connections
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":")[1]))
    return head


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    http = HttpClient()
    yield http
    await http.close()


def echo_app() -> tuple[web.Application, set[object]]:
    """Echoes method, path, body and headers; records each connection's peer address."""
    peers: set[object] = set()

    async def echo(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        return web.json_response({
            "method": request.method,
            "path": request.path_qs,
            "body": (await request.read()).decode(),
            "headers": dict(request.headers),
        })

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app, peers


async def test_requests_share_one_kept_alive_connection(client: HttpClient) -> None:
    app, peers = echo_app()
    async with serve_fake(app) as url:
        first = await client.request("POST", f"{url}/v1/embeddings?x=1", b'{"a":1}',
                                     headers=b"Authorization: Bearer k\r\n", timeout=5)
        second = await client.request("GET", f"{url}/health", None, headers=b"", timeout=5)
    assert first.status == second.status == 200
    sent = orjson.loads(first.body)
    assert sent["method"] == "POST" and sent["path"] == "/v1/embeddings?x=1"
    assert sent["body"] == '{"a":1}'
    assert sent["headers"]["Authorization"] == "Bearer k"
    assert sent["headers"]["Content-Length"] == "7"
    assert sent["headers"]["Host"] == url.removeprefix("http://")  # the port as written
    assert orjson.loads(second.body)["method"] == "GET"
    assert len(peers) == 1


async def test_a_chunked_answer_is_read_whole(client: HttpClient) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=201)
        response.enable_chunked_encoding()
        await response.prepare(request)
        for piece in (b"one ", b"two ", b"three"):
            await response.write(piece)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/", chunked)
    async with serve_fake(app) as url:
        reply = await client.request("GET", f"{url}/", None, headers=b"", timeout=5)
    assert (reply.status, reply.body) == (201, b"one two three")


async def test_a_body_that_ends_with_the_connection_is_read_whole(client: HttpClient) -> None:
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"ok\": true}")
        await writer.drain()

    async with raw_server(until_close) as (url, connections):
        first = await client.request("GET", url, None, headers=b"", timeout=5)
        second = await client.request("GET", url, None, headers=b"", timeout=5)
    assert first.body == second.body == b'{"ok": true}'
    assert len(connections) == 2  # "Connection: close" is honoured: no reuse


async def test_a_connection_the_upstream_closed_while_idle_is_replaced(
    client: HttpClient,
) -> None:
    """Servers drop idle keep-alive connections; the next request must not fail for it."""

    async def one_then_hang_up(reader: asyncio.StreamReader,
                               writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read(1)  # the next request on this connection is cut off unanswered

    async with raw_server(one_then_hang_up) as (url, connections):
        for _ in range(3):
            reply = await client.request("POST", url, b"{}", headers=b"", timeout=5)
            assert reply.body == b"ok"
    assert len(connections) == 3


async def test_an_answer_cut_off_midway_is_an_error_not_a_retry(client: HttpClient) -> None:
    async def truncated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"data\": [")
        await writer.drain()

    async with raw_server(truncated) as (url, connections):
        with pytest.raises(HttpError, match="closed before a whole answer"):
            await client.request("POST", url, b"{}", headers=b"", timeout=5)
    assert len(connections) == 1


async def test_an_answer_that_is_not_http_is_an_error(client: HttpClient) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        await writer.drain()
        await reader.read(1)

    async with raw_server(garbage) as (url, _):
        with pytest.raises(HttpError, match="invalid HTTP response"):
            await client.request("GET", url, None, headers=b"", timeout=5)


async def test_an_interim_answer_is_skipped(client: HttpClient) -> None:
    async def continue_first(reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n"
                     b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
        await writer.drain()
        await reader.read(1)

    async with raw_server(continue_first) as (url, _):
        reply = await client.request("GET", url, None, headers=b"", timeout=5)
    assert (reply.status, reply.body) == (200, b"done")


async def test_a_silent_upstream_times_out_and_its_connection_is_dropped(
    client: HttpClient,
) -> None:
    answered = asyncio.Event()

    async def slow_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if not answered.is_set():
            answered.set()
            await reader.read(1)  # never answers; returns when the client gives up
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read(1)

    async with raw_server(slow_once) as (url, connections):
        with pytest.raises(TimeoutError):
            await client.request("GET", url, None, headers=b"", timeout=0.2)
        reply = await client.request("GET", url, None, headers=b"", timeout=5)
    assert reply.body == b"ok"
    assert len(connections) == 2  # the timed-out connection was not reused


async def test_an_upstream_that_is_not_listening_is_an_error(client: HttpClient) -> None:
    with pytest.raises(HttpError, match=r"refused|Connect call failed"):
        await client.request("GET", f"http://127.0.0.1:{free_port()}/", None,
                             headers=b"", timeout=5)


async def test_idle_connections_are_closed_after_keepalive() -> None:
    closed = asyncio.Event()

    async def answer_then_watch(reader: asyncio.StreamReader,
                                writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        if await reader.read(1) == b"":
            closed.set()

    http = HttpClient(keepalive=0.2)
    try:
        async with raw_server(answer_then_watch) as (url, _):
            await http.request("GET", url, None, headers=b"", timeout=5)
            await asyncio.wait_for(closed.wait(), 5)  # no further request needed for it
    finally:
        await http.close()


def test_the_host_header_is_the_authority_as_written() -> None:
    http = HttpClient()
    assert http._target("https://api.example.com/v1/embeddings").host_header \
        == b"api.example.com"
    assert http._target("http://[::1]:8080/v1").host_header == b"[::1]:8080"
    assert http._target("http://h:80/x?y=1").path == b"/x?y=1"


async def test_an_answer_nobody_asked_for_never_answers_the_next_request(
    client: HttpClient,
) -> None:
    async def answers_twice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"
                     b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")
        await writer.drain()
        try:
            await read_request(reader)
        except asyncio.IncompleteReadError:
            return  # the client hung up on this connection, as it should
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nwrong")
        await writer.drain()

    async with raw_server(answers_twice) as (url, connections):
        assert (await client.request("GET", url, None, headers=b"", timeout=5)).body == b"first"
        assert (await client.request("GET", url, None, headers=b"", timeout=5)).body == b"first"
    assert len(connections) == 2


async def test_a_request_the_upstream_dropped_unanswered_is_sent_at_most_twice() -> None:
    """A worker that reads a request and dies (or an input that kills it) must not get the
    request again on every pooled connection."""
    received: list[bytes] = []
    answering = True

    async def drop_when_told(reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                received.append(await read_request(reader))
            except asyncio.IncompleteReadError:
                return
            if not answering:
                return  # read it, then hang up without a word
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    http = HttpClient()
    try:
        async with raw_server(drop_when_told) as (url, _):
            await asyncio.gather(*(http.request("GET", url, None, headers=b"", timeout=5)
                                   for _ in range(8)))  # eight pooled connections
            received.clear()
            answering = False
            with pytest.raises(HttpError, match="closed before an answer"):
                await http.request("POST", url, b"{}", headers=b"", timeout=5)
            assert len(received) == 2  # the stale-connection retry, once
    finally:
        await http.close()


async def test_credentials_in_the_url_are_sent_as_basic_auth(client: HttpClient) -> None:
    app, _ = echo_app()
    async with serve_fake(app) as url:
        with_user = url.replace("http://", "http://us%40er:p%3Ass@")
        reply = await client.request("GET", f"{with_user}/x", None, headers=b"", timeout=5)
    sent = orjson.loads(reply.body)
    assert sent["headers"]["Authorization"] == "Basic dXNAZXI6cDpzcw=="  # us@er:p:ss
    latin1 = client._target("http://u:caf%E9@h:1/").auth  # the bytes the URL encodes
    assert latin1 == b"Authorization: Basic " + base64.b64encode(b"u:caf\xe9") + b"\r\n"
    assert sent["headers"]["Host"] == url.removeprefix("http://")


async def test_an_endless_answer_is_cut_off_at_the_size_limit() -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        with contextlib.suppress(ConnectionError):
            while True:
                writer.write(b"10000\r\n" + b"x" * 0x10000 + b"\r\n")
                await writer.drain()

    http = HttpClient(max_body=1 << 20)
    try:
        async with raw_server(endless) as (url, _):
            with pytest.raises(HttpError, match="larger than 1048576 bytes"):
                await http.request("GET", url, None, headers=b"", timeout=10)
    finally:
        await http.close()


async def test_an_answer_cut_off_before_its_unannounced_end_is_an_error(
    client: HttpClient,
) -> None:
    """A body without a length ends with the connection, but only with a clean close."""

    async def reset_midway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"data\": [1, 2")
        await writer.drain()
        await asyncio.sleep(0.1)
        linger_zero = struct.pack("ii", 1, 0)  # close with a reset, not a clean end
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                   linger_zero)
        writer.transport.abort()

    async with raw_server(reset_midway) as (url, _):
        with pytest.raises(HttpError):
            await client.request("GET", url, None, headers=b"", timeout=5)
