"""A fake Infinity (infinity-emb 0.0.78, ``infinity_server.py``): several models in one
server, ``/models`` and ``/embeddings`` with no ``/v1`` unless started with ``--url-prefix``,
validation errors as FastAPI's 422 ``{"detail": [{"type", "loc", "msg", "input"}]}``.

Rerankers (``rerankers``): ``/models`` cards list ``capabilities: ["rerank"]`` (embedding
models ``["embed"]``); ``/rerank`` (``RerankInput``: query, documents (1..2048), return_documents,
raw_scores, model, top_n > 0) answers ``ReRankResult`` ``{"object": "rerank", "results":
[{relevance_score, index, document?: str}], "model", "usage", "id", "created"}``, sorted by
score, cut to ``top_n``. A model that cannot rerank is a 400 "ModelNotDeployedError: model=`x`
does not support `rerank`" (``infinity_server.py``), and a reranker asked to embed likewise.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import numpy as np
from aiohttp import web

from tests.fakes import FakeState, install_state, pause
from tests.fakes.scores import fake_score
from tests.fakes.vectors import count_tokens, fake_vectors


def _detail(loc: list[Any], msg: str, value: Any, kind: str = "string_type") -> web.Response:
    return web.json_response(
        {"detail": [{"type": kind, "loc": loc, "msg": msg, "input": value}]}, status=422)


def _not_deployed(model: str, capability: str) -> web.Response:
    message = (f"ModelNotDeployedError: model=`{model}` does not support `{capability}`. "
               f"Reason: the loaded model cannot {capability}")
    return web.json_response({"error": {"message": message, "type": "BadRequestError",
                                        "param": None, "code": 400}}, status=400)


def create_infinity_app(models: dict[str, int], *, url_prefix: str = "",
                        rerankers: tuple[str, ...] = ()) -> web.Application:
    """``models`` maps the served model names to their dimensions; ``rerankers`` are
    cross-encoders served beside them."""
    first = next(iter(models))
    state = FakeState(model=first, dims=models[first])
    app = web.Application()
    install_state(app, state)

    async def list_models(_: web.Request) -> web.Response:
        data = [{"id": name, "stats": {}, "object": "model", "owned_by": "infinity",
                 "created": int(time.time()), "backend": "torch",
                 "capabilities": ["rerank"] if name in rerankers else ["embed"]}
                for name in [*models, *rerankers]]
        return web.json_response({"data": data, "object": "list"})

    async def embeddings(request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _detail(["body"], "JSON decode error", None, "json_invalid")
        await pause(request)
        model = body.get("model")
        if model in rerankers:
            return _not_deployed(model, "embed")
        if model not in models:
            return web.json_response(
                {"error": {"message": f"model {model} not loaded", "type": "NotFoundError",
                           "param": None, "code": 400}}, status=400)
        raw = body.get("input")
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not texts:
            return _detail(["body", "input"], "Input should be a valid list", raw, "list_type")
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                return _detail(["body", "input", index], "Input should be a valid string",
                               text)
        vectors = fake_vectors(model, texts, models[model])
        as_base64 = body.get("encoding_format") == "base64"
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(np.asarray(v, "<f4").tobytes()).decode()
                 if as_base64 else v.tolist()} for i, v in enumerate(vectors)]
        tokens = sum(count_tokens(t) for t in texts)
        return web.json_response({"object": "list", "data": data, "model": model,
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                                  "id": f"infinity-{uuid.uuid4()}",
                                  "created": int(time.time())})

    async def rerank(request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _detail(["body"], "JSON decode error", None, "json_invalid")
        await pause(request)
        query, documents = body.get("query"), body.get("documents")
        if not isinstance(query, str):
            return _detail(["body", "query"], "Input should be a valid string", query)
        if not isinstance(documents, list):
            return _detail(["body", "documents"], "Input should be a valid list", documents,
                           "list_type")
        if not documents:
            return _detail(["body", "documents"],
                           "List should have at least 1 item after validation, not 0",
                           documents, "too_short")
        top_n = body.get("top_n")
        if top_n is not None and (not isinstance(top_n, int) or top_n <= 0):
            return _detail(["body", "top_n"], "Input should be greater than 0", top_n,
                           "greater_than")
        model = body.get("model", "default/not-specified")
        if model in models:
            return _not_deployed(model, "rerank")
        if model not in rerankers:
            return web.json_response(
                {"error": {"message": f"model {model} not loaded", "type": "NotFoundError",
                           "param": None, "code": 400}}, status=400)
        raw = body.get("raw_scores") is True
        results = [{"relevance_score": fake_score(model, query, doc, raw=raw), "index": i,
                    **({"document": doc} if body.get("return_documents") else {})}
                   for i, doc in enumerate(documents)]
        results.sort(key=lambda item: item["relevance_score"], reverse=True)
        tokens = sum(count_tokens(query) + count_tokens(doc) for doc in documents)
        return web.json_response({"object": "rerank", "results": results[:top_n],
                                  "model": model,
                                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                                  "id": f"infinity-{uuid.uuid4()}",
                                  "created": int(time.time())})

    app.router.add_get(f"{url_prefix}/models", list_models)
    app.router.add_post(f"{url_prefix}/rerank", rerank)
    app.router.add_post(f"{url_prefix}/embeddings", embeddings)
    async def health(_: web.Request) -> web.Response:
        return web.json_response({"unix": time.time()})

    app.router.add_get(f"{url_prefix}/health", health)
    return app
