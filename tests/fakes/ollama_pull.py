"""Ollama's ``POST /api/pull`` for the fake Ollama, as server/routes.go (PullHandler,
streamResponse, waitForStream) and server/images.go (PullModel) answer it.

``registry`` maps the models a pull can fetch (``name:tag``) to their dimensions; a pulled one
joins the models the fake serves and lists. A model whose name ends in ``-broken`` fails part
way through its download, as a lost registry connection does.

Streaming (the default): NDJSON lines of api.ProgressResponse (``status``, and ``digest``,
``total``, ``completed`` while a layer downloads; zero values are omitted), ending with
``{"status":"success"}``. A failure after the first line is one more line, ``{"error": ...}``,
with status 200. ``"stream": false``: one JSON object, the success line or
``{"error": ...}`` with 500. A missing body or a bad name is a 400 before any streaming.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from aiohttp import web

from tests.fakes.ollama import OLLAMA_STATE, OllamaError, _body, tagged

PULL_REGISTRY = web.AppKey("ollama_registry", dict)
LAYER_BYTES = 1_157_672_605
STEPS = 4  # progress lines per layer
STEP_DELAY = 0.01
INVALID_NAME = "invalid model name"  # errtypes.InvalidModelNameErrMsg


def install_pull(app: web.Application, registry: dict[str, int]) -> None:
    app[PULL_REGISTRY] = {tagged(name): dims for name, dims in registry.items()}
    app.router.add_post("/api/pull", pull)


def progress_lines(name: str) -> list[dict[str, Any]]:
    digest = "sha256:" + hashlib.sha256(name.encode()).hexdigest()
    lines: list[dict[str, Any]] = [{"status": "pulling manifest"}]
    for step in range(STEPS + 1):
        line: dict[str, Any] = {"status": f"pulling {digest[7:19]}", "digest": digest,
                                "total": LAYER_BYTES}
        completed = LAYER_BYTES * step // STEPS
        if completed:  # omitempty
            line["completed"] = completed
        lines.append(line)
    return lines


async def pull(request: web.Request) -> web.StreamResponse:
    try:
        body = await _body(request)
    except OllamaError as exc:
        return exc.response()
    name = body.get("model") or body.get("name")
    if not isinstance(name, str) or not name.strip() or " " in name:
        return web.json_response({"error": INVALID_NAME}, status=400)
    full = tagged(name)
    registry = request.app[PULL_REGISTRY]
    lines = progress_lines(full)
    error = None
    if full not in registry:
        lines, error = lines[:1], "pull model manifest: file does not exist"
    elif full.split(":")[0].endswith("-broken"):
        lines, error = lines[:3], "max retries exceeded: unexpected EOF"
    else:
        lines += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"},
                  {"status": "success"}]
    if body.get("stream") is False:  # waitForStream: the outcome only
        if error is not None:
            return web.json_response({"error": error}, status=500)
        request.app[OLLAMA_STATE].models[full] = registry[full]
        return web.json_response({"status": "success"})
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    for line in lines:
        await response.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
        await asyncio.sleep(STEP_DELAY)
    if error is not None:
        await response.write(json.dumps({"error": error}).encode() + b"\n")
    else:
        request.app[OLLAMA_STATE].models[full] = registry[full]
    await response.write_eof()
    return response
