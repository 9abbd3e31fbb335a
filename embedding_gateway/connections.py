"""Bounds on client connections, as production HTTP servers have them.

aiohttp closes a connection that idles between requests (``keepalive_timeout``) but not one
that never finishes sending a request: a silent socket, or headers sent a byte a minute, is
held forever, and enough of them use up every file descriptor. ``GuardedSite`` listens like
``web.TCPSite`` with each connection behind ``GuardedProtocol``:

- at most ``max_connections`` open at once; past it, a new connection is closed at once;
- a request's headers must arrive within ``header_timeout`` of the connection opening or of
  the previous answer (the middleware says when a request has arrived and been answered);
- its body must arrive within ``body_timeout`` (enforced where the body is read);
- what aiohttp refuses before routing is answered in the envelope (``malformed``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from aiohttp import web

from .config import Limits
from .malformed import refuse_unmet_expectations, request_handler
from .state import GATEWAY

log = structlog.get_logger("embedding_gateway.connections")


class ConnectionGuard:
    def __init__(self, *, max_connections: int, header_timeout: float) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.open: dict[asyncio.BaseTransport, asyncio.TimerHandle | None] = {}
        self.refused = 0
        self.timed_out = 0

    def opened(self, transport: asyncio.BaseTransport) -> bool:
        if len(self.open) >= self.max_connections:
            self.refused += 1
            if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
                log.warning("connection_refused", open=len(self.open), refused=self.refused,
                            reason="max_connections reached")
            transport.abort()
            return False
        self.open[transport] = None
        self.waiting_for_request(transport)
        return True

    def closed(self, transport: asyncio.BaseTransport) -> None:
        timer = self.open.pop(transport, None)
        if timer is not None:
            timer.cancel()

    def waiting_for_request(self, transport: asyncio.BaseTransport) -> None:
        """The next request's headers are due within ``header_timeout``."""
        if transport not in self.open:
            return
        timer = self.open[transport]
        if timer is not None:
            timer.cancel()
        self.open[transport] = asyncio.get_running_loop().call_later(
            self.header_timeout, self._expire, transport)

    def request_arrived(self, transport: asyncio.BaseTransport | None) -> None:
        if transport is not None and (timer := self.open.get(transport)) is not None:
            timer.cancel()
            self.open[transport] = None

    def _expire(self, transport: asyncio.BaseTransport) -> None:
        self.timed_out += 1
        self.open[transport] = None
        transport.abort()


class GuardedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one connection, seen through the guard."""

    def __init__(self, inner: Any, guard: ConnectionGuard) -> None:
        self.inner = inner
        self.guard = guard
        self.transport: asyncio.BaseTransport | None = None
        self.admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.admitted = self.guard.opened(transport)
        if self.admitted:
            self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.guard.closed(self.transport)
        if self.admitted:
            self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.admitted:
            self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.admitted else None

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class GuardedSite(web.TCPSite):
    """``web.TCPSite`` whose connections go through a ``ConnectionGuard``, each served by an
    ``EnvelopedRequestHandler``."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *, guard: ConnectionGuard,
                 reuse_address: bool = True) -> None:
        super().__init__(runner, host, port, reuse_address=reuse_address)
        self.guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        server.request_handler = refuse_unmet_expectations(server.request_handler)
        guard = self.guard
        self._server = await asyncio.get_running_loop().create_server(
            lambda: GuardedProtocol(request_handler(server), guard), self._host, self._port,
            reuse_address=self._reuse_address)
        self._bound_port = (self._server.sockets[0].getsockname()[1]
                            if self._server.sockets else self._port)


async def listen(runner: web.AppRunner, host: str, port: int, limits: Limits) -> GuardedSite:
    """The gateway's listening site (started; ``OSError`` when the address cannot be bound),
    its guard stored on the gateway for the middleware."""
    guard = ConnectionGuard(max_connections=limits.max_connections,
                            header_timeout=limits.header_timeout)
    site = GuardedSite(runner, host, port, guard=guard)
    await site.start()
    runner.app[GATEWAY].connections = guard
    return site
