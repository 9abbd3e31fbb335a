"""Ollama's OpenAI-compatible routes for the fake Ollama, as middleware/openai.go
(EmbeddingsMiddleware, writeError) and openai/openai.go (NewError, ToListCompletion,
ToEmbeddingList) answer them: ids carry their tag, ``owned_by`` is the name's namespace,
``model`` is answered as asked, and errors are OpenAI's envelope around Ollama's message.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import numpy as np
from aiohttp import web

from tests.fakes import pause
from tests.fakes.ollama import (
    OLLAMA_STATE,
    OllamaError,
    _all_models,
    _body,
    _embed_texts,
    _resolve,
)


def install_openai_routes(app: web.Application) -> None:
    app.router.add_get("/v1/models", openai_models)
    app.router.add_post("/v1/embeddings", openai_embeddings)


def _openai_error(exc: OllamaError) -> web.Response:
    kind = {400: "invalid_request_error", 404: "not_found_error"}.get(exc.status, "api_error")
    return web.json_response({"error": {"message": exc.message, "type": kind, "param": None,
                                        "code": None}}, status=exc.status)


def _namespace(name: str) -> str:
    """`model.ParseName(name).Namespace`: `library` unless the name says otherwise."""
    path = name.split("/")  # [host/][namespace/]model[:tag]
    return "library" if len(path) == 1 else path[0] if len(path) == 2 else path[1]


async def openai_models(request: web.Request) -> web.Response:
    state = request.app[OLLAMA_STATE]
    created = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())
    cards = [{"id": name, "object": "model", "created": created, "owned_by": _namespace(name)}
             for name in _all_models(state)]
    return web.json_response({"object": "list", "data": cards})


def _openai_input(body: dict[str, Any]) -> list[str]:
    """EmbeddingsMiddleware: "" is [""], an absent or empty list is "invalid input"; then
    EmbedHandler takes strings only."""
    raw = body.get("input")
    if raw == "":
        raw = [""]
    if raw is None or raw == []:
        raise OllamaError(400, "invalid input")
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, list) or not all(isinstance(t, str) for t in raw):
        raise OllamaError(400, "invalid input type")
    return raw


async def openai_embeddings(request: web.Request) -> web.Response:
    state = request.app[OLLAMA_STATE]
    try:
        body = await _body(request)
        encoding = body.get("encoding_format") or ""
        if encoding and encoding.lower() not in ("float", "base64"):
            raise OllamaError(400, f"Invalid value for 'encoding_format' = {encoding}. "
                                   "Supported values: ['float', 'base64'].")
        texts = _openai_input(body)
        await pause(request)
        full = _resolve(state, body.get("model"))
        vectors, tokens = _embed_texts(state, full, texts,
                                       {"dimensions": body.get("dimensions")})
    except OllamaError as exc:
        return _openai_error(exc)
    base64_out = encoding.lower() == "base64"
    data = [{"object": "embedding",
             "embedding": base64.b64encode(np.asarray(v, "<f4").tobytes()).decode()
             if base64_out else v, "index": i} for i, v in enumerate(vectors)]
    return web.json_response({"object": "list", "data": data, "model": body["model"],
                              "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
