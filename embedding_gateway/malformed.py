"""Requests that never reach a handler, answered in the envelope like every other error.

aiohttp answers a request its parser refuses (broken chunking, a header line too long or
holding a NUL, a ``Content-Encoding`` it cannot decode, a request line that is not HTTP) from
``RequestHandler.handle_error``, before any route or middleware, in plain text with a
traceback in the log; and it answers an ``Expect`` other than ``100-continue`` from the
route's expect handler, also before the middleware (plain text on unknown paths, a 500 when
the header is not UTF-8). ``EnvelopedRequestHandler`` renders those through the one error
renderer with the status that names the fault, and logs one canonical line for each.
"""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler

from .errors import (
    ExpectationFailed,
    GatewayError,
    HeadersTooLarge,
    InternalError,
    InvalidRequest,
    UnsupportedMediaType,
)
from .middlewares import first_line, log_request, render_error

log = structlog.get_logger("embedding_gateway.request")

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def parse_failure(status: int, exc: BaseException | None) -> GatewayError:
    """The client-facing error for what aiohttp's parser (or a handler outside the
    middleware) raised."""
    if status >= 500 or not isinstance(exc, http_exceptions.HttpProcessingError):
        return InternalError("internal error; see the gateway's log", status=max(status, 500))
    if isinstance(exc, http_exceptions.ContentEncodingError):  # raised before the body: br, zstd
        coding = re.search(r"\((\w+)\)", exc.message)
        return UnsupportedMediaType(
            f"Content-Encoding {coding.group(1) if coding else ''} is not supported; send the "
            "body uncompressed, gzip or deflate", param="Content-Encoding")
    if isinstance(exc, http_exceptions.LineTooLong) or "Too many headers" in exc.message:
        return HeadersTooLarge("the request line or its headers are too large (at most 8190 "
                               "bytes a line and 128 headers)")
    return InvalidRequest(f"malformed HTTP request: {first_line(exc.message)}")


class EnvelopedRequestHandler(RequestHandler):
    """aiohttp's protocol for one connection, whose own error answers are enveloped."""

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # an answer has begun: nothing more can be said
            raise ConnectionError("the answer was already begun when the error happened")
        error = parse_failure(status, exc)
        if isinstance(error, InternalError):
            self.log_exception("unhandled error", exc_info=exc)
        return refuse(request, error)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's own error lines, through the gateway's log; a body that could not be
        read is the client's fault, answered already (its rest is not drained: the
        connection is closed)."""
        exc = kw.get("exc_info")
        if isinstance(exc, web.RequestPayloadError | http_exceptions.HttpProcessingError):
            return
        log.error("connection_error", message=args[0] % args[1:] if args else "", exc_info=exc)


def refuse(request: web.BaseRequest, error: GatewayError) -> web.Response:
    """``error`` rendered and logged for a request that the middleware never saw; the
    connection is closed after it (what follows on it cannot be trusted)."""
    request_id = os.urandom(16).hex()
    response = render_error(error)
    response.headers["X-Request-ID"] = request_id  # as every other answer carries its id
    response.force_close()
    log_request(request, request_id, error.status, 0.0, {"error": error.message})
    return response


def refuse_unmet_expectations(handler: Handler) -> Handler:
    """The server's request handler, behind a check that an ``Expect`` header asks for
    ``100-continue`` (the only expectation there is), on every path, before routing."""

    async def checked(request: web.BaseRequest) -> web.StreamResponse:
        expect = request.headers.get("Expect")
        if expect is not None and expect.lower() != "100-continue":
            return refuse(request, ExpectationFailed(
                f"the only expectation understood is 100-continue, not {expect!a}",
                param="Expect"))
        return await handler(request)

    return checked


def request_handler(server: web.Server) -> EnvelopedRequestHandler:
    """What ``server()`` makes for a new connection, as an ``EnvelopedRequestHandler``."""
    return EnvelopedRequestHandler(server, loop=server._loop, **server._kwargs)
