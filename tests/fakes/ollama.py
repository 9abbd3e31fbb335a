"""A fake Ollama server (docs/api.md, server/routes.go): /api/embed, legacy /api/embeddings,
/api/tags, /api/show, /api/ps, /api/version, `GET /`, and the OpenAI routes /v1/models and
/v1/embeddings (`ollama_openai.py`); /api/pull is added by `tests.fakes.ollama_pull.install_pull`.

Any model with an embedding head (a GGUF `pooling_type`: `models` here) embeds; a chat-only
model (`chat_models`) is scheduled all the same, since /api/embed asks for no capability, and
its runner refuses with 501 "this model does not support embeddings", which Ollama passes on.

Vectors are seeded with the model name without a `:latest` tag, so `bge-m3` and
`bge-m3:latest` give the same vectors and `which_model(..., ["bge-m3"], ...)` finds them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from aiohttp import web

from tests.fakes import (
    FakeError,
    FakeState,
    add_common_args,
    fail_payload,
    hold,
    install_state,
    pause,
    run_cli,
)
from tests.fakes.vectors import count_tokens, cut, fake_vector, truncate_item

VERSION = "0.33.0"
NO_EMBEDDING_HEAD = "this model does not support embeddings"  # the runner's http.Error, trimmed
DEFAULT_KEEP_ALIVE = 300.0
LEGACY_SCALE = 3.0
FOREVER = datetime(2318, 1, 1, tzinfo=UTC)
MAX_BODY = 64 * 1024 * 1024


@dataclass
class OllamaState(FakeState):
    models: dict[str, int] = field(default_factory=dict)
    chat_models: tuple[str, ...] = ()
    context_length: int = 512
    loaded: dict[str, datetime] = field(default_factory=dict)
    keep_alives: list[tuple[str, Any]] = field(default_factory=list)

    def loaded_now(self) -> dict[str, datetime]:
        now = datetime.now(UTC)
        return {name: until for name, until in self.loaded.items() if until > now}


OLLAMA_STATE = web.AppKey("ollama_state", OllamaState)


class OllamaError(FakeError):
    def response(self) -> web.Response:
        return web.json_response({"error": self.message}, status=self.status)


def tagged(name: str) -> str:
    """`bge-m3` → `bge-m3:latest`; names that carry a tag stay as they are."""
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def untagged(name: str) -> str:
    return name.removesuffix(":latest")


def default_message(status: int) -> str:
    return {
        400: "invalid input type",
        404: 'model "unknown" not found, try pulling it first',
        499: "request canceled",
        503: "server busy, please try again.  maximum pending requests exceeded",
    }.get(status, "llama runner process has terminated: exit status 2")


def create_ollama_app(
    models: dict[str, int],
    *,
    chat_models: Sequence[str] = ("llama3.2:3b",),
    context_length: int = 512,
) -> web.Application:
    """`models` maps embedding model names (with or without a tag) to their dimensions."""
    first = next(iter(models))
    state = OllamaState(
        model=first,
        dims=models[first],
        models={tagged(name): dims for name, dims in models.items()},
        chat_models=tuple(tagged(name) for name in chat_models),
        context_length=context_length,
    )
    app = web.Application(client_max_size=MAX_BODY)
    install_state(app, state)
    app[OLLAMA_STATE] = state
    app.router.add_get("/", root)
    app.router.add_get("/api/version", version)
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_post("/api/show", show)
    app.router.add_post("/api/embed", embed)
    app.router.add_post("/api/embeddings", legacy_embeddings)
    from tests.fakes.ollama_openai import install_openai_routes  # it builds on this module

    install_openai_routes(app)
    return app


async def root(request: web.Request) -> web.Response:
    await hold(request)
    if not request.app[OLLAMA_STATE].healthy:
        return web.Response(status=503, text="Ollama is not running")
    return web.Response(text="Ollama is running")


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": VERSION})


def _details(state: OllamaState, name: str) -> dict[str, Any]:
    family = "bert" if name in state.models else "llama"
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": "566.70M" if family == "bert" else "3.2B",
        "quantization_level": "F16" if family == "bert" else "Q4_K_M",
    }


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _size(state: OllamaState, name: str) -> int:
    return 1_157_672_605 if name in state.models else 2_019_393_189


def _all_models(state: OllamaState) -> list[str]:
    return [*state.models, *state.chat_models]


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def tags(request: web.Request) -> web.Response:
    state = request.app[OLLAMA_STATE]
    modified = _iso(datetime(2026, 1, 1, tzinfo=UTC))
    models = [
        {
            "name": name,
            "model": name,
            "modified_at": modified,
            "size": _size(state, name),
            "digest": _digest(name),
            "details": _details(state, name),
        }
        for name in _all_models(state)
    ]
    return web.json_response({"models": models})


async def ps(request: web.Request) -> web.Response:
    state = request.app[OLLAMA_STATE]
    models = [
        {
            "name": name,
            "model": name,
            "size": _size(state, name),
            "digest": _digest(name),
            "details": _details(state, name),
            "expires_at": _iso(until),
            "size_vram": _size(state, name),
            "context_length": state.context_length,
        }
        for name, until in state.loaded_now().items()
    ]
    return web.json_response({"models": models})


async def show(request: web.Request) -> web.Response:
    state = request.app[OLLAMA_STATE]
    try:
        body = await _body(request)
        name = body.get("model") or body.get("name")
        if not name:
            raise OllamaError(400, "model is required")
        full = tagged(name)
        if full not in _all_models(state):
            raise OllamaError(404, f"model '{name}' not found")
    except OllamaError as exc:
        return exc.response()
    details = _details(state, full)
    family = details["family"]
    info: dict[str, Any] = {
        "general.architecture": family,
        f"{family}.context_length": state.context_length,
    }
    if full in state.models:
        info[f"{family}.embedding_length"] = state.models[full]
    return web.json_response(
        {
            "license": "",
            "modelfile": f'# Modelfile generated by "ollama show"\nFROM {full}\n',
            "parameters": "",
            "template": "{{ .Prompt }}",
            "details": details,
            "model_info": info,
            "capabilities": ["embedding"] if full in state.models else ["completion"],
            "modified_at": _iso(datetime(2026, 1, 1, tzinfo=UTC)),
        }
    )


async def _body(request: web.Request) -> dict[str, Any]:
    """The body as gin's ShouldBindJSON sees it."""
    raw = await request.read()
    if not raw.strip():
        raise OllamaError(400, "missing request body")
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise OllamaError(400, f"invalid character in JSON body: {exc}") from exc
    if not isinstance(body, dict):
        raise OllamaError(
            400, f"json: cannot unmarshal {type(body).__name__} into Go value of type api.Request"
        )
    return body


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: Any) -> float | None:
    """Seconds to stay loaded (None = forever), as api.Duration unmarshals `keep_alive`."""
    if value is None:
        return DEFAULT_KEEP_ALIVE
    if isinstance(value, bool):
        raise OllamaError(
            400, "json: cannot unmarshal bool into Go struct field of type api.Duration"
        )
    if isinstance(value, int | float):
        return None if value < 0 else float(value)
    if not isinstance(value, str):
        raise OllamaError(400, f"Unsupported type: '{type(value).__name__}'")
    sign, text = (-1.0, value[1:]) if value.startswith("-") else (1.0, value.lstrip("+"))
    if text == "0":
        return 0.0
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        problem = "missing unit in" if text.replace(".", "").isdigit() else "invalid"
        raise OllamaError(400, f'time: {problem} duration "{value}"')
    seconds = sign * sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)
    return None if seconds < 0 else seconds


def _resolve(state: OllamaState, name: Any) -> str:
    if not isinstance(name, str) or not name:
        raise OllamaError(400, "model is required")
    wanted = tagged(name).lower()  # Ollama matches names without regard to case
    for full in _all_models(state):
        if full.lower() == wanted:
            return full
    raise OllamaError(404, f"model {json.dumps(name)} not found, try pulling it first")


def _failure(state: OllamaState) -> web.Response | None:
    failure = fail_payload(state, default_message)
    if failure is None:
        return None
    status, payload, message = failure
    body = payload if isinstance(payload, dict | list) else {"error": message}
    return web.json_response(body, status=status)


def _mark_loaded(state: OllamaState, full: str, keep_alive: float | None) -> None:
    if keep_alive == 0:
        state.loaded.pop(full, None)
        return
    until = FOREVER if keep_alive is None else datetime.now(UTC) + timedelta(seconds=keep_alive)
    state.loaded[full] = until


def _texts(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise OllamaError(400, "invalid input type")


async def embed(request: web.Request) -> web.Response:
    state = request.app[OLLAMA_STATE]
    started = time.monotonic_ns()
    try:
        body = await _body(request)
        keep_alive = parse_keep_alive(body.get("keep_alive"))
        await pause(request)
        failed = _failure(state)
        if failed is not None:
            return failed
        model = body.get("model")
        texts = _texts(body.get("input"))
        full = _resolve(state, model)
        if "keep_alive" in body:
            state.keep_alives.append((full, body["keep_alive"]))
        loaded_at = time.monotonic_ns()
        _mark_loaded(state, full, keep_alive)
        if not texts:
            return web.json_response({"model": model, "embeddings": []})
        vectors, tokens = _embed_texts(state, full, texts, body)
    except OllamaError as exc:
        return exc.response()
    return web.json_response(
        {
            "model": model,
            "embeddings": vectors,
            "total_duration": time.monotonic_ns() - started,
            "load_duration": loaded_at - started,
            "prompt_eval_count": tokens,
        }
    )


def _embed_texts(
    state: OllamaState, full: str, texts: list[str], body: dict[str, Any]
) -> tuple[list[list[float]], int]:
    if full not in state.models:  # the runner's /embedding answers 501; EmbedHandler keeps it
        raise OllamaError(501, NO_EMBEDDING_HEAD)
    truncate = body.get("truncate", True) is not False
    dimensions = body.get("dimensions")
    dims = state.models[full]
    vectors: list[list[float]] = []
    tokens = 0
    for text in texts:
        count = count_tokens(text)
        if count > state.context_length:
            if not truncate:
                raise OllamaError(400, "the input length exceeds the context length")
            count = state.context_length
            text = str(truncate_item(text, count))  # tokenized, cut and detokenized
        tokens += count
        vector = fake_vector(untagged(full), text, dims)
        if isinstance(dimensions, int) and 0 < dimensions < dims:
            vector = cut(vector, dimensions)
        vectors.append(vector.tolist())
    return vectors, tokens


async def legacy_embeddings(request: web.Request) -> web.Response:
    state = request.app[OLLAMA_STATE]
    try:
        body = await _body(request)
        keep_alive = parse_keep_alive(body.get("keep_alive"))
        await pause(request)
        failed = _failure(state)
        if failed is not None:
            return failed
        full = _resolve(state, body.get("model"))
        if "keep_alive" in body:
            state.keep_alives.append((full, body["keep_alive"]))
        _mark_loaded(state, full, keep_alive)
    except OllamaError as exc:
        return exc.response()
    prompt = body.get("prompt") or ""
    if not prompt:
        return web.json_response({"embedding": []})
    if full not in state.models:  # EmbeddingsHandler: any runner error is a 500
        return OllamaError(500, NO_EMBEDDING_HEAD).response()
    vector = fake_vector(untagged(full), prompt, state.models[full]).astype(np.float64)
    return web.json_response({"embedding": (vector * LEGACY_SCALE).tolist()})


def _model_arg(text: str) -> tuple[str, int]:
    name, _, dims = text.rpartition("=")
    if not name:
        raise argparse.ArgumentTypeError(f"expected NAME=DIMS, got {text!r}")
    return name, int(dims)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tests.fakes.ollama", description=__doc__)
    add_common_args(parser, default_port=11434)
    parser.add_argument(
        "--model", action="append", type=_model_arg, default=[], help="NAME=DIMS, repeatable"
    )
    parser.add_argument("--chat-model", action="append", default=[])
    parser.add_argument("--context-length", type=int, default=512)

    def build(args: argparse.Namespace) -> web.Application:
        models = dict(args.model) or {"bge-m3": 1024}
        return create_ollama_app(
            models,
            chat_models=args.chat_model or ("llama3.2:3b",),
            context_length=args.context_length,
        )

    crash = ('time=... level=ERROR msg="listen tcp: address already in use"',)
    return run_cli("ollama", parser, build, argv, crash_lines=crash)


if __name__ == "__main__":
    sys.exit(main())
