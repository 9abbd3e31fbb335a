"""The OpenAPI 3.1 description of what this gateway serves, built from its config and code.

What can vary is read from where it is defined rather than copied: the encodings from
``schemas.EncodingFormat``, the per-request input limit from the config, the error types and
statuses from the ``errors`` tree, a model's state fields from ``ModelState``, which paths are
public from the middleware, and whether bearer auth applies from ``server.api_keys``. The
test suite checks that every route the app serves is described here and validates real
answers against this document.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from . import errors
from .config import GatewayConfig
from .errors import GatewayError
from .middlewares import PUBLIC_PATHS
from .schemas import EncodingFormat
from .upstream import ModelState

JSON = "application/json"
REF = "#/components/schemas/"


def package_version() -> str:
    try:
        return version("embedding-gateway")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0.0.0"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


_JSON_TYPES = {str: "string", bool: "boolean", int: "integer", float: "number"}


def _dataclass_schema(cls: type) -> dict[str, Any]:
    """A JSON schema for a flat dataclass of str / bool / int / float fields, optional or not."""
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
        kinds = [_JSON_TYPES[a] for a in args if a is not type(None)]
        nullable = type(None) in args
        properties[field.name] = {"type": [*kinds, "null"] if nullable else kinds[0]}
    return {"type": "object", "required": list(properties), "properties": properties}


def _error_classes() -> list[type[GatewayError]]:
    found: list[type[GatewayError]] = []
    pending: list[type[GatewayError]] = [GatewayError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def _error_schema() -> dict[str, Any]:
    error_types = sorted({cls.type for cls in _error_classes()})
    return {
        "type": "object",
        "required": ["error"],
        "description": "OpenAI's error envelope; every error the gateway answers has this shape.",
        "properties": {"error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string", "enum": error_types},
                "param": {"type": ["string", "null"],
                          "description": "The request field at fault, when there is one."},
                "code": {"type": ["string", "null"],
                         "description": "A machine-readable reason such as `model_not_found`."},
            },
        }},
    }


ERROR_MEANINGS: dict[type[GatewayError], str] = {
    errors.InvalidRequest: "The request is malformed or asks for what the model cannot do.",
    errors.AuthenticationFailed: "The bearer key is missing or not one of the gateway's.",
    errors.CrossOriginRefused: "A browser sent the request from another site's page.",
    errors.ModelNotFound: "No model or alias by that name on this gateway.",
    errors.RequestTimeout: "The request body did not arrive within `body_timeout`.",
    errors.PayloadTooLarge: "The body or the number of inputs is above the gateway's limit.",
    errors.UnsupportedMediaType: "A browser sent a body that is not `application/json`.",
    errors.ExpectationFailed: "An `Expect` header other than `100-continue`.",
    errors.QueueFull: "The model's queue is full; retry after `Retry-After` seconds.",
    errors.UpstreamFailed: "The upstream failed, answered garbage or served another model.",
    errors.Unavailable: "Nothing can serve the model now, or the gateway is shutting down; "
                        "retry after `Retry-After` seconds.",
    errors.UpstreamTimeout: "The upstream did not answer in time.",
    errors.InternalError: "A fault in the gateway itself.",
}
UPSTREAM_REJECTED = ("The upstream refused the input as invalid; its status and message are "
                     "kept.")

# what every request outside PUBLIC_PATHS can meet before its handler runs
ADMISSION = [errors.CrossOriginRefused, errors.ExpectationFailed, errors.Unavailable,
             errors.InternalError]
EMBEDDING_ERRORS = [errors.InvalidRequest, errors.ModelNotFound, errors.RequestTimeout,
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
            "content": {JSON: {"schema": _ref("Error")}},
        })
        if cls in (errors.QueueFull, errors.Unavailable):
            response["headers"]["Retry-After"] = {
                "$ref": "#/components/headers/Retry-After"}
    if upstream_4xx:
        responses["4XX"] = _answer(UPSTREAM_REJECTED, JSON, _ref("Error"))
    return responses


def _answer(description: str, media: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description,
            "headers": {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}},
            "content": {media: {"schema": schema}}}


def _schemas(config: GatewayConfig) -> dict[str, Any]:
    max_inputs = config.server.limits.max_inputs
    token_ids = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}
    model_state = _dataclass_schema(ModelState)
    return {
        "Error": _error_schema(),
        "EmbeddingRequest": {
            "type": "object",
            "required": ["model", "input"],
            "properties": {
                "model": {"type": "string", "minLength": 1,
                          "description": "A model name or alias from `GET /v1/models`."},
                "input": {"description": "One text, texts, one token id array or token id "
                                         f"arrays; at most {max_inputs} inputs.",
                          "oneOf": [
                              {"type": "string", "minLength": 1},
                              {"type": "array", "minItems": 1, "maxItems": max_inputs,
                               "items": {"type": "string", "minLength": 1}},
                              token_ids,
                              {"type": "array", "minItems": 1, "maxItems": max_inputs,
                               "items": token_ids},
                          ]},
                "encoding_format": {
                    "type": ["string", "null"], "default": "float",
                    "enum": [*typing.get_args(EncodingFormat), None],
                    "description": "`base64` is little-endian float32, as OpenAI's SDK asks."},
                "dimensions": {"type": ["integer", "null"], "minimum": 1,
                               "description": "Matryoshka models only: the first N values, "
                                              "L2-renormalised."},
                "user": {"type": "string"},
            },
        },
        "Embedding": {
            "type": "object",
            "required": ["object", "index", "embedding"],
            "properties": {
                "object": {"const": "embedding"},
                "index": {"type": "integer", "minimum": 0},
                "embedding": {"oneOf": [
                    {"type": "array", "items": {"type": "number"}},
                    {"type": "string", "contentEncoding": "base64"},
                ]},
            },
        },
        "EmbeddingResponse": {
            "type": "object",
            "required": ["object", "data", "model", "usage"],
            "properties": {
                "object": {"const": "list"},
                "data": {"type": "array", "items": _ref("Embedding")},
                "model": {"type": "string", "description": "The name the client sent."},
                "usage": {"type": "object", "required": ["prompt_tokens", "total_tokens"],
                          "properties": {"prompt_tokens": {"type": "integer", "minimum": 0},
                                         "total_tokens": {"type": "integer", "minimum": 0}}},
            },
        },
        "ModelState": model_state,
        "Model": {
            "description": "OpenAI's model object, and where and how the gateway serves it.",
            "allOf": [_ref("ModelState"), {
                "type": "object",
                "required": ["id", "object", "created", "owned_by", "backend", "kind",
                             "alias_of", "dimensions", "matryoshka", "managed"],
                "properties": {
                    "id": {"type": "string"},
                    "object": {"const": "model"},
                    "created": {"type": "integer"},
                    "owned_by": {"type": "string"},
                    "backend": {"type": "string"},
                    "kind": {"type": "string", "enum": ["ollama", "tei", "vllm", "openai"]},
                    "alias_of": {"type": ["string", "null"]},
                    "dimensions": {"type": ["integer", "null"]},
                    "matryoshka": {"type": "boolean"},
                    "managed": {"type": "boolean"},
                },
            }],
        },
        "ModelList": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {"object": {"const": "list"},
                           "data": {"type": "array", "items": _ref("Model")}},
        },
        "BackendHealth": {
            "type": "object",
            "required": ["kind", "managed", "healthy", "reason", "models"],
            "properties": {
                "kind": {"type": "string"},
                "managed": {"type": "boolean"},
                "healthy": {"type": "boolean"},
                "reason": {"type": ["string", "null"]},
                "models": {"type": "object", "additionalProperties": _ref("ModelState")},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "draining"],
            "properties": {
                "status": {"enum": ["ok", "degraded"]},
                "draining": {"type": "boolean"},
                "backends": {"type": "object", "additionalProperties": _ref("BackendHealth"),
                             "description": "Only with a valid key (or when none is set)."},
            },
        },
        "Readiness": {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": {"enum": ["ready", "not_ready"]},
                "serving_backends": {"type": "array", "items": {"type": "string"},
                                     "description": "Only with a valid key (or when none "
                                                    "is set)."},
            },
        },
    }


def _page(summary: str) -> dict[str, Any]:
    return {"get": {"summary": summary, "responses": {
        "200": _answer("An HTML page (no external assets).", "text/html", {"type": "string"})}}}


def _paths(config: GatewayConfig, authenticated: bool) -> dict[str, Any]:
    """Every operation the gateway has; which of them a given app serves depends on its
    config (the playground, test hooks)."""
    def api_errors(*extra: type[GatewayError], **kw: bool) -> dict[str, Any]:
        return _error_responses([*ADMISSION, *extra], authenticated=authenticated, **kw)

    paths: dict[str, Any] = {
        "/v1/embeddings": {"post": {
            "operationId": "createEmbedding",
            "summary": "Embed one or more inputs with the named model (OpenAI's contract).",
            "requestBody": {"required": True,
                            "content": {JSON: {"schema": _ref("EmbeddingRequest")}}},
            "responses": {
                "200": _answer("One vector per input, in input order.", JSON,
                               _ref("EmbeddingResponse")),
                **api_errors(*EMBEDDING_ERRORS, upstream_4xx=True),
            },
        }},
        "/v1/models": {"get": {
            "operationId": "listModels",
            "summary": "Every configured model and alias (and discovered ones), with state.",
            "responses": {"200": _answer("The models.", JSON, _ref("ModelList")),
                          **api_errors()},
        }},
        "/v1/models/{model}": {"get": {
            "operationId": "retrieveModel",
            "summary": "One model by name or alias, as `GET /v1/models` lists it.",
            "parameters": [{"name": "model", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": _answer("The model.", JSON, _ref("Model")),
                          **api_errors(errors.ModelNotFound)},
        }},
        "/health": {"get": {
            "operationId": "getHealth",
            "summary": "Liveness and every backend's state (details need the key).",
            "responses": {
                "200": _answer("Every backend is healthy.", JSON, _ref("Health")),
                "503": _answer("A backend is unhealthy, or the gateway is draining.", JSON,
                               _ref("Health")),
            },
        }},
        "/health/ready": {"get": {
            "operationId": "getReadiness",
            "summary": "Readiness: at least one backend can serve.",
            "responses": {
                "200": _answer("Ready.", JSON, _ref("Readiness")),
                "503": _answer("Nothing can serve, or the gateway is draining.", JSON,
                               _ref("Readiness")),
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
    for path, item in paths.items():
        public = path in PUBLIC_PATHS or (path == "/metrics" and config.metrics.public)
        for operation in item.values():
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
            "schemas": _schemas(config),
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
