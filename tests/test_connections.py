"""Connections that never finish a request are closed, and their number is bounded, so that a
flood of silent or slow sockets cannot lock normal clients out (a real gateway process)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.fakes import serve_fake
from tests.fakes.tei import create_tei_app
from tests.ports import free_port
from tests.service_support import GatewayProcess, NotifyListener, gateway_config
from tests.test_service import embed, start

MODEL = "org/model"
LIMITS = {"max_connections": 40, "header_timeout": 1, "body_timeout": 1,
          "keepalive_timeout": 2}


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener.bind(tmp_path)
    yield listener
    listener.close()


def closed_by_server(sock: socket.socket, within: float) -> bytes | None:
    """What the server sent before closing ``sock``, or None if it is still open."""
    sock.settimeout(within)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return received


async def test_silent_and_slow_connections_are_closed_and_bounded(
    tmp_path: Path, notify: NotifyListener
) -> None:
    gw = GatewayProcess(tmp_path / "gateway.yaml", tmp_path / "gateway.log", free_port())
    silent: list[socket.socket] = []
    try:
        async with serve_fake(create_tei_app(MODEL, dims=8)) as url, \
                aiohttp.ClientSession() as session:
            backend = {"kind": "tei", "base_url": url, "models": {MODEL: {}}}
            await start(gw, notify, gateway_config(gw.port, {"t": backend},
                                                   limits=LIMITS))
            started = time.monotonic()
            for _ in range(60):  # more than max_connections, sending nothing at all
                silent.append(socket.create_connection(("127.0.0.1", gw.port)))
            slow = socket.create_connection(("127.0.0.1", gw.port))
            slow.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")  # headers never end
            results = await asyncio.gather(*(asyncio.to_thread(closed_by_server, s, 5)
                                             for s in [*silent, slow]))
            assert all(r is not None for r in results), "a connection was held open"
            assert time.monotonic() - started < 4
            status, body = await embed(session, gw, MODEL, ["still served"])
            assert status == 200, body

            body_bytes = json.dumps({"model": MODEL, "input": "x"}).encode()
            slow_body = socket.create_connection(("127.0.0.1", gw.port))
            slow_body.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Type: application/json\r\n"
                              b"Content-Length: %d\r\n\r\n" % len(body_bytes) + body_bytes[:5])
            answer = await asyncio.to_thread(closed_by_server, slow_body, 5)
            assert answer is not None and answer.startswith(b"HTTP/1.1 408"), answer
            envelope = json.loads(answer.split(b"\r\n\r\n", 1)[1])
            assert envelope["error"]["code"] == "request_timeout"
    finally:
        for sock in silent:
            with contextlib.suppress(OSError):
                sock.close()
        gw.kill()
