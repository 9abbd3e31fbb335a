"""Request id, one canonical log line, auth, and the one place errors are rendered."""

from __future__ import annotations

import asyncio
import hmac
import os
import re
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import orjson
import structlog
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from . import memory
from .errors import (
    AuthenticationFailed,
    CrossOriginRefused,
    GatewayError,
    InternalError,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    RequestTimeout,
    Unavailable,
    UnsupportedMediaType,
)
from .state import AUTHORIZED, GATEWAY, LOG_FIELDS, REQUEST_ID, Gateway

log = structlog.get_logger("embedding_gateway.request")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PUBLIC_PATHS = ("/health", "/health/ready", "/playground", "/favicon.ico", "/", "/docs",
                "/openapi.json")
CLIENT_GONE = 499  # nginx's status for a request whose client closed the connection
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def render_error(error: GatewayError) -> web.Response:
    return web.Response(
        body=orjson.dumps(error.envelope()),
        status=error.status,
        content_type="application/json",
        headers=error.headers,
    )


def first_line(message: str) -> str:
    """aiohttp's parser messages go on to quote the offending bytes; the first line says it."""
    return message.strip().split("\n", 1)[0].rstrip(":")


async def stamp_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every answer carries its request id, streamed ones too."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers["X-Request-ID"] = request_id


def _from_http_exception(exc: web.HTTPException, max_body_bytes: int) -> GatewayError:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge(
            f"the request body is larger than this gateway's limit of {max_body_bytes} bytes"
        )
    if isinstance(exc, web.HTTPNotFound):
        return NotFound("no such route; the API is under /v1 (POST /v1/embeddings)")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(f"method {exc.method} is not allowed here")
    if exc.status >= 500:
        return InternalError(exc.reason, status=exc.status)
    return InvalidRequest(exc.reason, status=exc.status)


@web.middleware
async def serve(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one middleware (each layer costs every request): request id, admission, error
    rendering, then the answer is sent, then the canonical log line and request metrics."""
    incoming = request.headers.get("X-Request-ID")
    request_id = (incoming if incoming is not None and _REQUEST_ID.match(incoming)
                  else os.urandom(16).hex())
    gateway = request.app[GATEWAY]
    if gateway.connections is not None:
        gateway.connections.request_arrived(request.transport)
    request[REQUEST_ID] = request_id
    fields: dict[str, object] = {}
    request[LOG_FIELDS] = fields
    started = time.perf_counter()
    try:
        if request.path in PUBLIC_PATHS:
            request[AUTHORIZED] = has_key(request, gateway)  # public: details need the key
            response = await handler(request)
        else:
            admit(request, gateway)
            with gateway.requests:
                response = await handler(request)
    except GatewayError as exc:
        response = render_error(exc)
        fields["error"] = exc.message
        if isinstance(exc, RequestTimeout):
            response.force_close()  # the rest of its body will not be read
    except web.RequestPayloadError as exc:  # a body that cannot be read (bad gzip, cut off)
        cause = exc.__cause__
        reason = cause.message if isinstance(cause, HttpProcessingError) else str(exc)
        error = InvalidRequest(f"the request body could not be read: {first_line(reason)}")
        response = render_error(error)
        fields["error"] = error.message
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = _from_http_exception(exc, gateway.config.server.limits.max_body_bytes)
        response = render_error(error)
        fields["error"] = error.message
    except asyncio.CancelledError:
        # the client hung up (aiohttp cancels the handler): what it asked for is withdrawn
        fields["error"] = "the client went away before the answer was ready"
        log_request(request, request_id, CLIENT_GONE, time.perf_counter() - started, fields)
        raise
    except Exception:
        log.exception("unhandled_error", request_id=request_id, path=request.path)
        fields["error"] = "internal error"
        response = render_error(InternalError("internal error; see the gateway's log"))
    try:  # the client has its answer before the bookkeeping below, not after it
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        fields.setdefault("error", "the client went away before the answer was written")
    if gateway.connections is not None and request.transport is not None:
        gateway.connections.waiting_for_request(request.transport)  # its next request
    elapsed = time.perf_counter() - started
    if "model" in fields:
        gateway.metrics.observe_request(
            model=str(fields["model"]),
            backend=str(fields.get("backend", "")),
            task=str(fields.get("task", "embed")),
            status=response.status,
            seconds=elapsed,
            inputs=int(fields.get("inputs", 0)),  # type: ignore[call-overload]
            tokens=int(fields.get("tokens", 0)),  # type: ignore[call-overload]
        )
    log_request(request, request_id, response.status, elapsed, fields)
    if (request.content_length or 0) >= memory.LARGE_BODY:
        memory.trim_soon()
    return response


def log_request(request: web.Request, request_id: str, status: int, elapsed: float,
                fields: dict[str, object]) -> None:
    """The one canonical line per request."""
    log.info("request", request_id=request_id, method=request.method, path=request.path,
             status=status, ms=round(elapsed * 1000, 2), **fields)


def has_key(request: web.Request, gateway: Gateway) -> bool:
    """Does the request carry one of the bearer keys (or are there none)? Every key is
    compared, in constant time, so timing does not tell which one matched."""
    keys = gateway.config.server.api_keys
    if not keys:
        return True
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    # aiohttp keeps bytes that are not UTF-8 as surrogates: they match no key (a 401)
    given = (token.strip().encode("utf-8", "surrogateescape")
             if scheme.lower() == "bearer" else b"")
    matched = False
    for key in keys if given else ():
        matched |= hmac.compare_digest(given, key.encode())
    return matched


def refuse_other_sites(request: web.Request) -> None:
    """A page on another site must not make a visitor's browser use this gateway (without
    API keys, that would embed and swap models at will): a browser names the page's origin,
    and only the gateway's own pages (the playground) may send from it. A browser's form or
    text body is refused too, since it skips the browser's CORS check; curl, which sends a
    form type but no Origin, is not a browser and is not refused."""
    origin = request.headers.get("Origin")
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if origin is None and fetch_site in (None, "none", "same-origin"):
        return
    if (fetch_site not in (None, "none", "same-origin")
            or origin is None or urlsplit(origin).netloc != request.host):
        raise CrossOriginRefused(
            f"requests from another site's pages are refused (Origin {origin!r}); "
            "call the API from a server, or open the playground on this gateway")
    if request.method == "POST" and request.content_type != "application/json":
        raise UnsupportedMediaType(
            f"send 'Content-Type: application/json' (got {request.content_type!r})")


def admit(request: web.Request, gateway: Gateway) -> None:
    """Refuse work while shutting down, other sites' pages and requests without a key
    (expectations other than ``100-continue`` are refused before routing: ``malformed``)."""
    refuse_other_sites(request)
    if gateway.draining:
        raise Unavailable("the gateway is shutting down; retry on another instance",
                          retry_after=2)
    if request.path == "/metrics" and gateway.config.metrics.public:
        return
    if not has_key(request, gateway):
        raise AuthenticationFailed(
            "missing or invalid API key; send 'Authorization: Bearer <key>'"
        )
