"""Thin handlers: ``/v1/embeddings``, ``/v1/rerank`` (also ``/rerank``), ``/v1/models``,
``/v1/models/{model}``, ``/health``, ``/health/ready``, ``/metrics``."""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress
from typing import Any

import orjson
from aiohttp import web

from .cache import cache_mode
from .errors import InvalidRequest, RequestTimeout
from .rerank_schemas import parse_rerank_request, rerank_response_body
from .router import Route, Router
from .schemas import parse_embedding_request, response_body, response_chunks
from .state import AUTHORIZED, GATEWAY, LOG_FIELDS, Gateway
from .token_input import read_token_ids
from .truncation import truncated_header

STREAM_ABOVE_VALUES = 64 * 1024  # responses with more floats than this are written in pieces
CACHE_HITS_HEADER = "X-Cache-Hits"  # how many of the request's inputs came from the cache
STARTED = int(time.time())


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def read_body(request: web.Request) -> bytes:
    """The body, read as JSON whatever Content-Type says (`curl -d` sends a form type),
    within ``body_timeout``."""
    limits = request.app[GATEWAY].config.server.limits
    try:
        async with asyncio.timeout(limits.body_timeout):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within body_timeout "
                             f"({limits.body_timeout:g} s)") from None


async def embeddings(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    fields = request[LOG_FIELDS]
    fields["task"] = "embed"
    body = await read_body(request)
    limits = gateway.config.server.limits
    parsed = parse_embedding_request(body, max_inputs=limits.max_inputs,
                                     max_token_ids=limits.max_token_ids)
    del body  # not held while the upstream works: it may be many megabytes
    router = gateway.routes()
    route = router.resolve(parsed.model)
    fields.update(model=parsed.model, backend=route.backend, inputs=len(parsed.inputs))
    router.check(parsed, route)
    parsed = read_token_ids(parsed, route.options.token_ids)  # decoded before any cache/batch
    result = await router.embed(parsed, route, cache_mode(request.headers.get("Cache-Control")))
    fields["tokens"] = result.prompt_tokens
    if result.cached:
        fields["cached"] = result.cached
    headers = {CACHE_HITS_HEADER: str(result.cached)}
    if result.truncated is not None:
        headers |= truncated_header(result.truncated)
    if result.vectors.size <= STREAM_ABOVE_VALUES:
        body = response_body(result, model=parsed.model, encoding_format=parsed.encoding_format)
        return web.Response(body=body, content_type="application/json", headers=headers)
    chunks = response_chunks(result, model=parsed.model, encoding_format=parsed.encoding_format)
    response = web.StreamResponse(headers={"Content-Type": "application/json", **headers})
    response.enable_chunked_encoding()
    await response.prepare(request)
    try:
        for chunk in chunks:
            await response.write(chunk)
        await response.write_eof()
    except ConnectionError:  # the client left; the request itself went well
        fields["error"] = "the client went away while the response was being written"
    except Exception:
        # the status line is out: cutting the connection is the only honest signal left
        if request.transport is not None:
            request.transport.close()
        raise
    return response


async def rerank(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    fields = request[LOG_FIELDS]
    fields["task"] = "rerank"
    body = await read_body(request)
    parsed = parse_rerank_request(body, max_documents=gateway.config.server.limits.max_inputs)
    router = gateway.routes()
    route = router.resolve(parsed.model)
    fields.update(model=parsed.model, backend=route.backend, inputs=len(parsed.documents))
    router.check_task(route, parsed.model, "rerank")
    result = await router.rerank(parsed, route)
    fields["tokens"] = result.prompt_tokens
    return web.Response(body=rerank_response_body(result, parsed, model=parsed.model),
                        content_type="application/json")


def model_entry(gateway: Gateway, router: Router, name: str, route: Route) -> dict[str, Any]:
    """OpenAI's model object for ``name``, and where and how the gateway serves it."""
    upstream = gateway.upstreams[route.backend]
    return {
        "id": name,
        "object": "model",
        "created": STARTED,
        "owned_by": "embedding-gateway",
        "backend": route.backend,
        "kind": upstream.backend.config.kind,
        "alias_of": route.alias_of,
        "dimensions": route.options.dimensions,
        "matryoshka": route.options.matryoshka,
        "max_input_tokens": upstream.backend.input_limit(route.model, route.options),
        "task": router.task(route),
        "managed": upstream.managed,
        **router.cache_status(route),
        **upstream.model_state(route.model).as_dict(),
    }


async def models(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    router = gateway.routes()
    data = [model_entry(gateway, router, name, route)
            for name, route in {**router.routes, **router.discovered_routes()}.items()]
    return json_response({"object": "list", "data": data})


async def model(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    name = request.match_info["model"]
    router = gateway.routes()
    return json_response(model_entry(gateway, router, name, router.resolve(name)))


async def health(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    backends = {name: u.health() for name, u in gateway.upstreams.items()}
    healthy = all(b["healthy"] for b in backends.values())
    for name, b in backends.items():
        gateway.metrics.set_backend_health(backend=name, healthy=bool(b["healthy"]))
    body: dict[str, Any] = {
        "status": "ok" if healthy and not gateway.draining else "degraded",
        "draining": gateway.draining,
    }
    if request[AUTHORIZED]:  # models, addresses and upstream logs are for key holders
        body["backends"] = backends
        body["cache"] = gateway.routes().cache.state()
    return json_response(body, 200 if healthy and not gateway.draining else 503)


async def ready(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    serving = sorted(n for n, u in gateway.upstreams.items() if u.can_serve)
    is_ready = bool(serving) and not gateway.draining
    body: dict[str, Any] = {"status": "ready" if is_ready else "not_ready"}
    if request[AUTHORIZED]:
        body["serving_backends"] = serving
    return json_response(body, 200 if is_ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[GATEWAY].metrics.render()
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def debug_block_loop(request: web.Request) -> web.Response:
    """Test hook (``server.debug_endpoints``): block the event loop, as a stuck handler would,
    so tests can see the watchdog pings stop."""
    try:
        seconds = min(float(request.query.get("seconds", "1")), 30.0)
    except ValueError:
        raise InvalidRequest("'seconds' must be a number", param="seconds") from None
    time.sleep(seconds)  # noqa: ASYNC251 - blocking is the point of this hook
    return json_response({"blocked_seconds": seconds})


async def expect_continue(request: web.Request) -> None:
    """``Expect: 100-continue`` is answered, and a client gone meanwhile is not an error
    (other expectations never get here: ``malformed.refuse_unmet_expectations``)."""
    if request.headers.get("Expect", "").lower() == "100-continue":
        with suppress(ConnectionError):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")


def add_routes(app: web.Application, *, debug: bool = False) -> None:
    add_post, add_get = app.router.add_post, app.router.add_get
    add_post("/v1/embeddings", embeddings, expect_handler=expect_continue)
    add_post("/v1/rerank", rerank, expect_handler=expect_continue)
    add_post("/rerank", rerank, expect_handler=expect_continue)
    add_post("/v2/rerank", rerank, expect_handler=expect_continue)  # Cohere's v2 clients
    add_get("/v1/models", models, expect_handler=expect_continue)
    # model names hold slashes (intfloat/multilingual-e5-small), as OpenAI's fine-tunes do colons
    add_get("/v1/models/{model:.+}", model, expect_handler=expect_continue)
    add_get("/health", health, expect_handler=expect_continue)
    add_get("/health/ready", ready, expect_handler=expect_continue)
    add_get("/metrics", metrics, expect_handler=expect_continue)
    if debug:
        add_post("/debug/block-loop", debug_block_loop, expect_handler=expect_continue)
