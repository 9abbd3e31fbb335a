"""The component schemas of the OpenAPI document: request and response bodies and the error
envelope, read from the code that defines them where it can be (``openapi`` assembles the
document)."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from .config import GatewayConfig, Task
from .errors import GatewayError
from .prompts import INPUT_TYPE_NAMES
from .schemas import EncodingFormat
from .truncation import TRUNCATE_VALUES
from .upstream import ModelState

REF = "#/components/schemas/"


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF + name}


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


def literal_values(hint: Any) -> list[Any]:
    """The values of a ``Literal``, or of a union of them."""
    if typing.get_origin(hint) is typing.Literal:
        return list(typing.get_args(hint))
    return [value for part in typing.get_args(hint) for value in literal_values(part)]


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
            "additionalProperties": False,
        }},
    }


# Answers whose every field is described here: one the code adds without describing it fails
# the validation test. Requests stay open (unknown fields are ignored), as do /health's
# backend details, which differ by kind of backend.
CLOSED = ("Error", "Embedding", "EmbeddingResponse", "RerankResponse", "RerankResult",
          "Usage", "ModelList", "Readiness")


def component_schemas(config: GatewayConfig) -> dict[str, Any]:
    schemas = _schemas(config)
    for name in CLOSED:
        schemas[name]["additionalProperties"] = False
    schemas["Model"]["unevaluatedProperties"] = False  # its ModelState part is open alone
    return schemas


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
                                         "arrays (read as the model's `token_ids` says; by "
                                         "default ids of OpenAI's cl100k_base, embedded as "
                                         f"their text); at most {max_inputs} inputs.",
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
                    "enum": [*literal_values(EncodingFormat), None],
                    "description": "`base64` is little-endian float32, as OpenAI's SDK asks; "
                                   "`int8`, `uint8`, `binary` and `ubinary` are Cohere's "
                                   "compact types, as arrays of integers."},
                "dimensions": {"type": ["integer", "null"], "minimum": 1,
                               "description": "Matryoshka models only: the first N values, "
                                              "L2-renormalised."},
                "user": {"type": "string"},
                "input_type": {"enum": [*INPUT_TYPE_NAMES, None],
                               "description": "What the inputs are for; reaches the model as "
                                              "its prompt for that use."},
                "prompt_name": {"type": ["string", "null"], "minLength": 1,
                                "description": "TEI models only: one of the model's own "
                                               "prompts, by name (instead of `input_type`)."},
                "truncate": {"enum": [*TRUNCATE_VALUES, None],
                             "description": "Whether an input over the model's limit is cut "
                                            "(and named in `truncated_inputs`) or refused; "
                                            "absent: the model's `truncation` setting."},
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
                "data": {"type": "array", "items": ref("Embedding")},
                "model": {"type": "string", "description": "The name the client sent."},
                "usage": ref("Usage"),
                "truncated_inputs": {"type": "array", "items": {"type": "integer", "minimum": 0},
                                     "description": "With truncation on: the indices of the "
                                                    "inputs the model cut."},
            },
        },
        "RerankRequest": {
            "type": "object",
            "required": ["model", "query", "documents"],
            "properties": {
                "model": {"type": "string", "minLength": 1,
                          "description": "A reranker's name or alias from `GET /v1/models`."},
                "query": {"type": "string", "minLength": 1},
                "documents": {
                    "type": "array", "minItems": 1, "maxItems": max_inputs,
                    "items": {"oneOf": [
                        {"type": "string", "minLength": 1},
                        {"type": "object", "required": ["text"],
                         "properties": {"text": {"type": "string", "minLength": 1}}},
                    ]},
                },
                "top_n": {"type": ["integer", "null"], "minimum": 1,
                          "description": "Keep the n best; all when absent."},
                "return_documents": {"type": ["boolean", "null"], "default": False},
            },
        },
        "RerankResponse": {
            "type": "object",
            "required": ["object", "model", "results", "usage"],
            "properties": {
                "object": {"const": "rerank"},
                "model": {"type": "string", "description": "The name the client sent."},
                "results": {
                    "type": "array",
                    "description": "Best first; `index` is the document's place in the request.",
                    "items": ref("RerankResult"),
                },
                "usage": ref("Usage"),
            },
        },
        "RerankResult": {
            "type": "object", "required": ["index", "relevance_score"],
            "properties": {
                "index": {"type": "integer", "minimum": 0},
                "relevance_score": {"type": "number"},
                "document": {"type": "object", "required": ["text"],
                             "properties": {"text": {"type": "string"}},
                             "additionalProperties": False},
            },
        },
        "Usage": {"type": "object", "required": ["prompt_tokens", "total_tokens"],
                  "properties": {"prompt_tokens": {"type": "integer", "minimum": 0},
                                 "total_tokens": {"type": "integer", "minimum": 0}}},
        "ModelState": model_state,
        "Model": {
            "description": "OpenAI's model object, and where and how the gateway serves it.",
            "allOf": [ref("ModelState"), {
                "type": "object",
                "required": ["id", "object", "created", "owned_by", "backend", "kind",
                             "alias_of", "dimensions", "matryoshka", "max_input_tokens",
                             "task", "managed", "revision", "cache"],
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
                    "max_input_tokens": {"type": ["integer", "null"],
                                         "description": "Configured, else as the upstream "
                                                        "reports it."},
                    "task": {"enum": [*literal_values(Task), None],
                             "description": "What the model does; null until the upstream "
                                            "has said (TEI, Infinity)."},
                    "managed": {"type": "boolean"},
                    "revision": {"type": ["string", "null"],
                                 "description": "The weights' revision as the upstream "
                                                "reports it (TEI model_sha, Ollama's digest, "
                                                "vLLM's root); null where it reports none."},
                    "cache": {"type": "object", "required": ["enabled", "reason"],
                              "description": "Whether its vectors are cached, and why not.",
                              "properties": {"enabled": {"type": "boolean"},
                                             "reason": {"type": ["string", "null"]}}},
                },
            }],
        },
        "ModelList": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {"object": {"const": "list"},
                           "data": {"type": "array", "items": ref("Model")}},
        },
        "BackendHealth": {
            "type": "object",
            "required": ["kind", "managed", "healthy", "reason", "models"],
            "properties": {
                "kind": {"type": "string"},
                "managed": {"type": "boolean"},
                "healthy": {"type": "boolean"},
                "reason": {"type": ["string", "null"]},
                "models": {"type": "object", "additionalProperties": ref("ModelState")},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status", "draining"],
            "properties": {
                "status": {"enum": ["ok", "degraded"]},
                "draining": {"type": "boolean"},
                "backends": {"type": "object", "additionalProperties": ref("BackendHealth"),
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
