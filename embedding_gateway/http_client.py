"""The HTTP/1.1 client every upstream call goes through: pooled keep-alive connections, one
write per request, responses parsed by llhttp (``httptools``).

An upstream call needs little of a general HTTP client: a JSON body out, a status and a body
back. aiohttp's client spends about 200 µs of Python on each request (request and response
objects, header multidicts, timers, tracing); for one small request that was most of what the
gateway added to its upstream's latency. This does the same exchange in about a quarter of that.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes, urlsplit

import httptools

USER_AGENT = b"embedding-gateway"
MAX_IDLE_PER_ORIGIN = 64
MAX_BODY_BYTES = 512 * 1024 * 1024  # 4096 inputs of 4096-d as float JSON fit; endless do not


class HttpError(Exception):
    """No HTTP answer: the upstream could not be reached, hung up, or did not speak HTTP."""


class _Unanswered(HttpError):
    """The connection ended before a byte of the answer came."""


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    compute_tokens: int | None = None  # TEI's x-compute-tokens: its native routes' token count


@dataclass(frozen=True, slots=True)
class _Target:
    origin: tuple[str, str, int]  # scheme, host, port: what a pooled connection can serve
    host_header: bytes
    path: bytes
    auth: bytes  # an Authorization line from credentials in the URL, or nothing


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection carrying one request at a time."""

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.reply: asyncio.Future[Reply] | None = None
        self.body: list[bytes] = []
        self.size = 0
        self.headers_done = False
        self.framed = False  # Content-Length or chunked: the end is in the stream, not at EOF
        self.received = False  # any byte of an answer to the current request
        self.compute_tokens: int | None = None
        self.closed = False
        self.idle_since = 0.0

    def send(self, data: bytes) -> asyncio.Future[Reply]:
        assert self.transport is not None
        self.reply = asyncio.get_running_loop().create_future()
        self.body, self.size = [], 0
        self.headers_done, self.framed, self.received = False, False, False
        self.compute_tokens = None
        self.transport.write(data)
        return self.reply

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, error: HttpError) -> None:
        if self.reply is not None and not self.reply.done():
            self.reply.set_exception(error)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.reply is None or self.reply.done():  # bytes nobody asked for
            self.close()
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(HttpError("the upstream switched protocols instead of answering"))
            self.close()
        except httptools.HttpParserError as exc:
            self._fail(HttpError(f"invalid HTTP response ({exc})"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and not self.framed and exc is None:  # ends where the stream does
            self.on_message_complete()
        if not self.received:
            self._fail(_Unanswered("the connection closed before an answer came"))
        self._fail(HttpError("the connection closed before a whole answer came"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name == b"content-length" or (
            name == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self.framed = True
        elif name == b"x-compute-tokens" and value.isdigit():
            self.compute_tokens = int(value)

    def on_message_begin(self) -> None:
        if self.reply is None or self.reply.done():  # a second answer to one request
            self.close()

    def on_headers_complete(self) -> None:
        self.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.max_body:
            self._fail(HttpError(f"the answer is larger than {self.max_body} bytes"))
            self.close()
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # an interim answer (100 Continue): the real one follows
            self.body, self.headers_done, self.framed = [], False, False
            return
        if self.reply is None or self.reply.done():  # an answer nobody asked for
            self.close()
            return
        self.reply.set_result(Reply(status, b"".join(self.body), self.compute_tokens))
        if not self.parser.should_keep_alive():
            self.close()


class HttpClient:
    """Requests to upstreams over keep-alive connections, pooled per origin."""

    def __init__(self, *, keepalive: float = 60.0, max_body: int = MAX_BODY_BYTES) -> None:
        self.keepalive = keepalive
        self.max_body = max_body
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._targets: dict[str, _Target] = {}
        self._tls: ssl.SSLContext | None = None
        self._sweep_handle: asyncio.TimerHandle | None = None

    async def request(
        self, method: str, url: str, body: bytes | None, *, headers: bytes, timeout: float
    ) -> Reply:
        """Send one request and read its whole answer within ``timeout`` seconds.

        ``headers`` are extra header lines, each ending in CRLF. A kept-alive connection that
        the upstream closed while it was idle ends before any answer comes; the request is
        then sent once more, on a new connection, and the origin's other idle connections,
        likely as stale, are dropped.
        """
        target = self._target(url)
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\n%s%s" % (
            method.encode(), target.path, target.host_header, USER_AGENT, target.auth, headers
        )
        if body is not None:
            head += b"Content-Length: %d\r\n" % len(body)
        data = head + b"\r\n" + (body or b"")
        async with asyncio.timeout(timeout):
            conn = self._take_idle(target.origin)
            if conn is not None:
                try:
                    return await self._exchange(conn, data, target.origin)
                except _Unanswered:
                    for stale in self._idle.pop(target.origin, []):
                        stale.close()
            conn = await self._connect(target)
            return await self._exchange(conn, data, target.origin)

    async def _exchange(
        self, conn: _Connection, data: bytes, origin: tuple[str, str, int]
    ) -> Reply:
        self._busy.add(conn)
        try:
            reply = await conn.send(data)
        except BaseException:  # failed, timed out or cancelled mid-exchange: unusable
            conn.close()
            raise
        finally:
            self._busy.discard(conn)
        self._put_idle(origin, conn)
        return reply

    async def close(self) -> None:
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        for conn in [*self._busy, *(c for idle in self._idle.values() for c in idle)]:
            conn.close()
        self._idle.clear()
        self._busy.clear()

    def _target(self, url: str) -> _Target:
        target = self._targets.get(url)
        if target is None:
            parts = urlsplit(url)
            host = parts.hostname or ""
            port = parts.port or (443 if parts.scheme == "https" else 80)
            shown = f"[{host}]" if ":" in host else host
            if parts.port is not None:  # as written: no default port added
                shown = f"{shown}:{port}"
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            auth = b""
            if parts.username is not None:  # http://user:password@host: Basic, as browsers do
                pair = (unquote_to_bytes(parts.username) + b":"
                        + unquote_to_bytes(parts.password or ""))
                auth = b"Authorization: Basic %s\r\n" % base64.b64encode(pair)
            target = _Target((parts.scheme, host, port), shown.encode("idna"), path.encode(),
                             auth)
            if len(self._targets) < 1024:  # a handful of upstream URLs in practice
                self._targets[url] = target
        return target

    async def _connect(self, target: _Target) -> _Connection:
        scheme, host, port = target.origin
        tls = None
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: _Connection(self.max_body), host, port,
                ssl=tls, server_hostname=host if tls else None,
            )
        except OSError as exc:  # refused, unreachable, name not found, TLS failure
            raise HttpError(str(exc) or exc.__class__.__name__) from exc
        return conn

    def _take_idle(self, origin: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        now = asyncio.get_running_loop().time()
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have timed out
            if not conn.closed and now - conn.idle_since < self.keepalive:
                return conn
            conn.close()
        return None

    def _put_idle(self, origin: tuple[str, str, int], conn: _Connection) -> None:
        if conn.closed:
            return
        idle = self._idle.setdefault(origin, [])
        if len(idle) >= MAX_IDLE_PER_ORIGIN:
            conn.close()
            return
        loop = asyncio.get_running_loop()
        conn.idle_since = loop.time()
        idle.append(conn)
        if self._sweep_handle is None:
            self._sweep_handle = loop.call_later(self.keepalive, self._sweep)

    def _sweep(self) -> None:
        """Close connections idle for ``keepalive`` seconds, also those to upstreams that get
        no more requests (a removed backend, a stopped instance's port)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for origin, idle in list(self._idle.items()):
            fresh = [c for c in idle if not c.closed and now - c.idle_since < self.keepalive]
            for conn in idle:
                if conn not in fresh:
                    conn.close()
            if fresh:
                self._idle[origin] = fresh
            else:
                del self._idle[origin]
        self._sweep_handle = loop.call_later(self.keepalive, self._sweep) if self._idle else None
