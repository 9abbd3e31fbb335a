"""The OpenAPI 3.1 description of what this gateway serves, built from its config and code.

What can vary is read from where it is defined rather than copied: the encodings from
``schemas.EncodingFormat``, the per-request input limit from the config, the error types and
statuses from the ``errors`` tree, a model's state fields from ``ModelState``, which paths are
public from the middleware, and whether bearer auth applies from ``server.api_keys``. The
test suite checks that every route the app serves is described here and validates real
answers against this document.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from . import errors
from .config import GatewayConfig
from .errors import GatewayError
from .middlewares import PUBLIC_PATHS
from .openapi_schemas import component_schemas, ref
from .truncation import HEADER as TRUNCATION_HEADER

JSON = "application/json"


def package_version() -> str:
    try:
        return version("embedding-gateway")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0.0.0"


ERROR_MEANINGS: dict[type[GatewayError], str] = {
    errors.InvalidRequest: "The request is malformed (its HTTP or its body) or asks for what "
                           "the model cannot do.",
    errors.AuthenticationFailed: "The bearer key is missing or not one of the gateway's.",
    errors.CrossOriginRefused: "A browser sent the request from another site's page.",
    errors.ModelNotFound: "No model or alias by that name on this gateway.",
    errors.RequestTimeout: "The request body did not arrive within `body_timeout`.",
    errors.PayloadTooLarge: "The body or the number of inputs is above the gateway's limit.",
    errors.UnsupportedMediaType: "A body the gateway will not read: a browser's form or text "
                                 "body, or a `Content-Encoding` other than gzip or deflate.",
    errors.ExpectationFailed: "An `Expect` header other than `100-continue`.",
    errors.HeadersTooLarge: "A request line or header over the server's limits.",
    errors.QueueFull: "The model's queue is full; retry after `Retry-After` seconds.",
    errors.UpstreamFailed: "The upstream failed, answered garbage or served another model.",
    errors.Unavailable: "Nothing can serve the model now, or the gateway is shutting down; "
                        "retry after `Retry-After` seconds.",
    errors.UpstreamTimeout: "The upstream did not answer in time.",
    errors.InternalError: "A fault in the gateway itself.",
}
UPSTREAM_REJECTED = ("The upstream refused the input as invalid; its status and message are "
                     "kept.")

# what any request can meet before routing: HTTP that cannot be parsed or met
PROTOCOL = [errors.InvalidRequest, errors.UnsupportedMediaType, errors.ExpectationFailed,
            errors.HeadersTooLarge]
# and what one outside PUBLIC_PATHS can meet before its handler runs
ADMISSION = [*PROTOCOL, errors.CrossOriginRefused, errors.Unavailable, errors.InternalError]
# what /v1/embeddings and /v1/rerank can meet once admitted
MODEL_ERRORS = [errors.InvalidRequest, errors.ModelNotFound, errors.RequestTimeout,
                    errors.PayloadTooLarge, errors.UnsupportedMediaType, errors.QueueFull,
                    errors.UpstreamFailed, errors.UpstreamTimeout]


def _error_responses(classes: list[type[GatewayError]], *, authenticated: bool,
                     upstream_4xx: bool = False) -> dict[str, Any]:
    chosen = [*classes, *([errors.AuthenticationFailed] if authenticated else [])]
    responses: dict[str, Any] = {}
    for cls in sorted(set(chosen), key=lambda c: c.status):
        response = responses.setdefault(str(cls.status), {
            "description": ERROR_MEANINGS[cls],
            "headers": {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}},
            "content": {JSON: {"schema": ref("Error")}},
        })
        if cls in (errors.QueueFull, errors.Unavailable):
            response["headers"]["Retry-After"] = {
                "$ref": "#/components/headers/Retry-After"}
    if upstream_4xx:
        responses["4XX"] = _answer(UPSTREAM_REJECTED, JSON, ref("Error"))
    return responses


def _answer(description: str, media: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description,
            "headers": {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}},
            "content": {media: {"schema": schema}}}


def _page(summary: str) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": {
        "200": _answer("An HTML page (no external assets).", "text/html", {"type": "string"})}}}


def _paths(config: GatewayConfig, authenticated: bool) -> dict[str, Any]:
    """Every operation the gateway has; which of them a given app serves depends on its
    config (the playground, test hooks)."""
    def api_errors(*extra: type[GatewayError], **kw: bool) -> dict[str, Any]:
        return _error_responses([*ADMISSION, *extra], authenticated=authenticated, **kw)

    def truncation_named(response: dict[str, Any]) -> dict[str, Any]:
        response["headers"][TRUNCATION_HEADER] = {
            "schema": {"type": "string"},
            "description": "With truncation on: the indices of the inputs the model cut, "
                           "comma-separated."}
        return response

    def rerank(operation_id: str) -> dict[str, Any]:
        return {
            "operationId": operation_id,
            "summary": "Rank documents by relevance to a query (Cohere's and Jina's shape).",
            "requestBody": {"required": True,
                            "content": {JSON: {"schema": ref("RerankRequest")}}},
            "responses": {
                "200": _answer("The documents' scores, best first.", JSON,
                               ref("RerankResponse")),
                **api_errors(*MODEL_ERRORS, upstream_4xx=True),
            },
        }

    paths: dict[str, Any] = {
        "/v1/embeddings": {"post": {
            "operationId": "createEmbedding",
            "summary": "Embed one or more inputs with the named model (OpenAI's contract).",
            "requestBody": {"required": True,
                            "content": {JSON: {"schema": ref("EmbeddingRequest")}}},
            "responses": {
                "200": truncation_named(_answer("One vector per input, in input order.",
                                                JSON, ref("EmbeddingResponse"))),
                **api_errors(*MODEL_ERRORS, upstream_4xx=True),
            },
        }},
        "/v1/rerank": {"post": rerank("rerank")},
        "/rerank": {"post": rerank("rerankUnversioned")},
        "/v2/rerank": {"post": rerank("rerankV2")},  # where Cohere's v2 clients send
        "/v1/models": {"get": {
            "operationId": "listModels",
            "summary": "Every configured model and alias (and discovered ones), with state.",
            "responses": {"200": _answer("The models.", JSON, ref("ModelList")),
                          **api_errors()},
        }},
        "/v1/models/{model}": {"get": {
            "operationId": "retrieveModel",
            "summary": "One model by name or alias, as `GET /v1/models` lists it.",
            "parameters": [{"name": "model", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": _answer("The model.", JSON, ref("Model")),
                          **api_errors(errors.ModelNotFound)},
        }},
        "/health": {"get": {
            "operationId": "getHealth",
            "summary": "Liveness and every backend's state (details need the key).",
            "responses": {
                "200": _answer("Every backend is healthy.", JSON, ref("Health")),
                "503": _answer("A backend is unhealthy, or the gateway is draining.", JSON,
                               ref("Health")),
            },
        }},
        "/health/ready": {"get": {
            "operationId": "getReadiness",
            "summary": "Readiness: at least one backend can serve.",
            "responses": {
                "200": _answer("Ready.", JSON, ref("Readiness")),
                "503": _answer("Nothing can serve, or the gateway is draining.", JSON,
                               ref("Readiness")),
            },
        }},
        "/metrics": {"get": {
            "operationId": "getMetrics",
            "summary": "Prometheus metrics (text exposition format).",
            "responses": {"200": _answer("The metrics.", "text/plain", {"type": "string"}),
                          **api_errors()},
        }},
        "/": _page("This page's index: links to the playground, docs, health and metrics."),
        "/docs": _page("The API documentation, rendered from /openapi.json."),
        "/openapi.json": {"get": {
            "summary": "This document.",
            "responses": {"200": _answer("OpenAPI 3.1.", JSON, {"type": "object"})},
        }},
        "/playground": _page("The browser playground: embed, compare models."),
        "/debug/block-loop": {"post": {
            "summary": "Test hook: block the event loop for `seconds` (at most 30).",
            "parameters": [{"name": "seconds", "in": "query", "schema": {"type": "number"}}],
            "responses": {"200": _answer("How long it blocked.", JSON, {
                "type": "object", "required": ["blocked_seconds"],
                "properties": {"blocked_seconds": {"type": "number"}}}),
                **api_errors(errors.InvalidRequest)},
        }},
    }
    anywhere = _error_responses([*PROTOCOL, errors.InternalError], authenticated=False)
    for path, item in paths.items():
        public = path in PUBLIC_PATHS or (path == "/metrics" and config.metrics.public)
        for operation in item.values():
            operation["responses"] = dict(sorted({**anywhere, **operation["responses"]}.items()))
            if not authenticated:
                continue
            if path.startswith("/health"):  # public, and more detailed with the key
                operation["security"] = [{}, {"bearer": []}]
            elif public:
                operation["security"] = []
    return paths


def build_document(config: GatewayConfig, served: set[str]) -> dict[str, Any]:
    """The document for a gateway running ``config`` whose router serves the paths
    ``served`` (as the router spells them: ``/v1/models/{model}``)."""
    authenticated = bool(config.server.api_keys)
    paths = {path: item for path, item in _paths(config, authenticated).items()
             if path in served}
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Embedding Gateway",
            "version": package_version(),
            "summary": "OpenAI-compatible embeddings in front of Ollama, TEI, vLLM and "
                       "OpenAI-compatible servers.",
        },
        "paths": paths,
        "components": {
            "schemas": component_schemas(config),
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "One of `server.api_keys`."
                               + ("" if authenticated else " None is set on this gateway."),
            }},
            "headers": {
                "X-Request-ID": {"required": True, "schema": {"type": "string"},
                                 "description": "The client's own id when it sent a valid "
                                                "one, else a new one."},
                "Retry-After": {"required": True, "schema": {"type": "integer", "minimum": 1},
                                "description": "Seconds to wait before retrying."},
            },
        },
    }
    if authenticated:
        document["security"] = [{"bearer": []}]
    return document
