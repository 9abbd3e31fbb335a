"""A fake Infinity (infinity-emb 0.0.78, ``infinity_server.py``): several models in one
server, ``/models`` and ``/embeddings`` with no ``/v1`` unless started with ``--url-prefix``,
validation errors as FastAPI's 422 ``{"detail": [{"type", "loc", "msg", "input"}]}``.
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
from tests.fakes.vectors import count_tokens, fake_vectors


def _detail(loc: list[Any], msg: str, value: Any, kind: str = "string_type") -> web.Response:
    return web.json_response(
        {"detail": [{"type": kind, "loc": loc, "msg": msg, "input": value}]}, status=422)


def create_infinity_app(models: dict[str, int], *, url_prefix: str = "") -> web.Application:
    """``models`` maps the served model names to their dimensions."""
    first = next(iter(models))
    state = FakeState(model=first, dims=models[first])
    app = web.Application()
    install_state(app, state)

    async def list_models(_: web.Request) -> web.Response:
        data = [{"id": name, "stats": {}, "object": "model", "owned_by": "infinity",
                 "created": int(time.time()), "backend": "torch", "capabilities": ["embed"]}
                for name in models]
        return web.json_response({"data": data, "object": "list"})

    async def embeddings(request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _detail(["body"], "JSON decode error", None, "json_invalid")
        await pause(request)
        model = body.get("model")
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

    app.router.add_get(f"{url_prefix}/models", list_models)
    app.router.add_post(f"{url_prefix}/embeddings", embeddings)
    async def health(_: web.Request) -> web.Response:
        return web.json_response({"unix": time.time()})

    app.router.add_get(f"{url_prefix}/health", health)
    return app
