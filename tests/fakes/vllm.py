"""A fake vLLM OpenAI-compatible server for a pooling model (vllm/entrypoints/openai/):
/v1/embeddings, /v1/models, /health, /version. Vectors are seeded with `model` (the path or
repo vLLM loaded), whatever name it is served under.

Scoring (``entrypoints/pooling/__init__.py``: the score router is there for ``embed`` and
``score`` models; ``/v1/embeddings`` only for ``embed``): ``/score``, ``/v1/score``,
``/rerank``, ``/v1/rerank``, ``/v2/rerank`` (``pooling/score/api_router.py``). A cross-encoder
(``task="score"``) scores with the sigmoid of its logit (``use_activation: false``: the
logit), an embedding model with the cosine of its vectors. Rerank answers every document
(``top_n`` 0 = all) sorted by score, each with ``document: {text, multi_modal}``, named by
the first served name (``pooling/scoring/serving.py``). ``legacy_score=True`` is a server
from before ``/rerank``: only ``/v1/score``. A route that is not there is FastAPI's 404
``{"detail": "Not Found"}``."""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

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
from tests.fakes.scores import fake_score
from tests.fakes.vectors import Item, count_tokens, cut, fake_vector, fake_vectors, truncate_item

VERSION = "0.33.0"
MAX_BODY = 64 * 1024 * 1024
ErrorShape = Literal["object", "nested"]

ERROR_TYPES = {
    400: "BadRequestError",
    401: "Unauthorized",
    404: "NotFoundError",
    500: "InternalServerError",
    501: "NotImplementedError",
    503: "ServiceUnavailableError",
}
ENGINE_DEAD = "EngineCore encountered an issue. See stack trace (above) for the root cause."


@dataclass
class VllmState(FakeState):
    served_model_name: str = ""  # the first of served_names: what every answer names
    served_names: list[str] = field(default_factory=list)  # --served-model-name a b …
    max_model_len: int = 512
    matryoshka: bool = False
    truncation_side: str = "right"  # the tokenizer's, used unless a request names one
    error_shape: ErrorShape = "nested"  # "object": the flat shape vLLM dropped in 0.10.1
    api_key: str | None = None
    created: int = 0
    task: Literal["embed", "score"] = "embed"


VLLM_STATE = web.AppKey("vllm_state", VllmState)


class VllmError(FakeError):
    pass


def invalid(field: str, message: str) -> VllmError:
    """A request validation error, which vLLM answers with 400 rather than FastAPI's 422."""
    return VllmError(400, f"1 validation error: ('body', '{field}'): {message}")


def error_response(state: VllmState, status: int, message: str) -> web.Response:
    error = {
        "message": message,
        "type": ERROR_TYPES.get(status, "InternalServerError"),
        "param": None,
        "code": status,
    }
    body = {"object": "error", **error} if state.error_shape == "object" else {"error": error}
    return web.json_response(body, status=status)


def default_message(status: int) -> str:
    if status >= 500:
        return ENGINE_DEAD
    return {404: "The model `unknown` does not exist."}.get(status, "Bad request")


def create_vllm_app(
    model: str,
    dims: int = 384,
    max_model_len: int = 512,
    matryoshka: bool = False,
    error_shape: ErrorShape = "nested",
    *,
    served_model_name: str | list[str] | None = None,
    api_key: str | None = None,
    body_limit: int = MAX_BODY,  # vLLM has none of its own; a proxy in front of it may
    task: Literal["embed", "score"] = "embed",
    legacy_score: bool = False,
) -> web.Application:
    names = ([served_model_name] if isinstance(served_model_name, str)
             else list(served_model_name or [model]))
    state = VllmState(
        model=model,
        dims=dims,
        served_model_name=names[0],
        served_names=names,
        max_model_len=max_model_len,
        matryoshka=matryoshka,
        error_shape=error_shape,
        api_key=api_key,
        created=int(time.time()),
        task=task,
    )
    app = web.Application(client_max_size=body_limit, middlewares=[_fastapi_not_found])
    install_state(app, state)
    app[VLLM_STATE] = state
    app.middlewares.append(_api_key)
    app.router.add_get("/health", health)
    app.router.add_get("/ping", health)
    app.router.add_get("/version", version)
    app.router.add_get("/v1/models", models)
    if task == "embed":
        app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/score", score)
    if not legacy_score:
        app.router.add_post("/score", score)
        for path in ("/rerank", "/v1/rerank", "/v2/rerank"):
            app.router.add_post(path, rerank)
    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _fastapi_not_found(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A route that is not there, as FastAPI answers it."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return web.json_response({"detail": "Not Found"}, status=404)


@web.middleware
async def _api_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    key = request.app[VLLM_STATE].api_key
    authorised = request.headers.get("Authorization") == f"Bearer {key}"
    if key and request.path.startswith("/v1") and not authorised:
        return web.json_response({"error": "Unauthorized"}, status=401)
    return await handler(request)


async def health(request: web.Request) -> web.Response:
    await hold(request)
    return web.Response(status=200 if request.app[VLLM_STATE].healthy else 503)


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": VERSION})


async def models(request: web.Request) -> web.Response:
    """One card per served name, each with the weights' path as ``root``
    (``openai/models/serving.py``)."""
    state = request.app[VLLM_STATE]
    return web.json_response({"object": "list",
                              "data": [_card(state, name) for name in state.served_names]})


def _card(state: VllmState, name: str) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": state.created,
        "owned_by": "vllm",
        "root": state.model,
        "parent": None,
        "max_model_len": state.max_model_len,
        "permission": [
            {
                "id": f"modelperm-{uuid.uuid4().hex}",
                "object": "model_permission",
                "created": state.created,
                "allow_create_engine": False,
                "allow_sampling": True,
                "allow_logprobs": True,
                "allow_search_indices": False,
                "allow_view": True,
                "allow_fine_tuning": False,
                "organization": "*",
                "group": None,
                "is_blocking": False,
            }
        ],
    }


async def embeddings(request: web.Request) -> web.Response:
    state = request.app[VLLM_STATE]
    try:
        body = await _admitted(request, state)
        if isinstance(body, web.Response):
            return body
        return _embed(state, body)
    except VllmError as exc:
        return error_response(state, exc.status, exc.message)


async def _admitted(request: web.Request, state: VllmState) -> dict[str, Any] | web.Response:
    """The request's body, once the pause and the failure the test set up have been applied."""
    body = await _body(request)
    await pause(request)
    failure = fail_payload(state, default_message)
    if failure is not None:
        status, payload, message = failure
        if isinstance(payload, dict | list):
            return web.json_response(payload, status=status)
        raise VllmError(status, message)
    return body


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read())
    except ValueError as exc:
        raise invalid("body", f"JSON decode error: {exc}") from exc
    if not isinstance(body, dict):
        raise invalid("body", "Input should be a valid dictionary")
    return body


def parse_input(value: Any) -> list[Item]:
    """`input` as vLLM accepts it: str, [str], [int] or [[int]]."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return list(value)
        if all(_is_id(v) for v in value):
            return [list(value)]
        if all(isinstance(v, list) and v and all(_is_id(t) for t in v) for v in value):
            return [list(v) for v in value]
    raise invalid("input", "Input should be a string, a list of strings or token ids")


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _embed(state: VllmState, body: dict[str, Any]) -> web.Response:
    name = body.get("model")
    if name is not None and name not in state.served_names:
        raise VllmError(404, f"The model `{name}` does not exist. "
                             f"Valid aliases: {', '.join(state.served_names)}.")
    items = parse_input(body.get("input"))
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise invalid("encoding_format", "Input should be 'float' or 'base64'")
    dimensions = body.get("dimensions")
    if dimensions is not None:
        if not state.matryoshka:
            raise VllmError(
                400,
                f'Model "{state.served_model_name}" does not support matryoshka representation, '
                "changing output dimensions will lead to poor results.",
            )
        if not isinstance(dimensions, int) or dimensions < 1:
            raise VllmError(400, "Dimensions must be greater than 0")
    limit = _truncation(state, body.get("truncate_prompt_tokens"))
    if limit is not None:
        items = [truncate_item(item, limit, body.get("truncation_side") or state.truncation_side)
                 for item in items]
    tokens = 0
    for item in items:
        count = count_tokens(item) if limit is None else min(count_tokens(item), limit)
        if count > state.max_model_len:
            raise VllmError(
                400,
                f"This model's maximum context length is {state.max_model_len} tokens. However, "
                f"you requested {count} tokens in the input for embedding generation. Please "
                "reduce the length of the input.",
            )
        tokens += count
    vectors = fake_vectors(state.model, items, state.dims)
    if dimensions is not None and dimensions < state.dims:
        vectors = np.stack([cut(v, dimensions) for v in vectors])
    data = [
        {"index": index, "object": "embedding", "embedding": _encode(vector, encoding)}
        for index, vector in enumerate(vectors)
    ]
    return web.json_response(
        {
            "id": f"embd-{uuid.uuid4().hex}",
            "object": "list",
            "created": int(time.time()),
            "model": state.served_model_name,
            "data": data,
            "usage": {
                "prompt_tokens": tokens,
                "total_tokens": tokens,
                "completion_tokens": 0,
                "prompt_tokens_details": None,
            },
        }
    )


async def score(request: web.Request) -> web.Response:
    return await _scoring(request, "score")


async def rerank(request: web.Request) -> web.Response:
    return await _scoring(request, "rerank")


async def _scoring(request: web.Request, kind: str) -> web.Response:
    state = request.app[VLLM_STATE]
    try:
        body = await _admitted(request, state)
        if isinstance(body, web.Response):
            return body
        name = body.get("model")
        if name is not None and name not in state.served_names:
            raise VllmError(404, f"The model `{name}` does not exist. "
                                 f"Valid aliases: {', '.join(state.served_names)}.")
        if kind == "rerank":
            query, documents = body.get("query"), body.get("documents")
        else:
            query, documents = body.get("text_1"), body.get("text_2")
        if not isinstance(query, str):
            raise invalid("query" if kind == "rerank" else "text_1", "Input should be a string")
        documents = [documents] if isinstance(documents, str) else documents
        if not isinstance(documents, list) or not all(isinstance(d, str) for d in documents):
            raise invalid("documents" if kind == "rerank" else "text_2",
                          "Input should be a list of strings")
        raw = body.get("use_activation") is False
        scores = [_pair_score(state, query, document, raw) for document in documents]
        tokens = sum(count_tokens(query) + count_tokens(d) for d in documents)
    except VllmError as exc:
        return error_response(state, exc.status, exc.message)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    if kind == "score":
        data = [{"index": i, "object": "score", "score": s} for i, s in enumerate(scores)]
        return web.json_response({
            "id": f"score-{uuid.uuid4().hex}", "object": "list", "created": int(time.time()),
            "model": state.served_model_name, "data": data,
            "usage": {**usage, "completion_tokens": 0, "prompt_tokens_details": None}})
    results = [{"index": i, "document": {"text": d, "multi_modal": None}, "relevance_score": s}
               for i, (d, s) in enumerate(zip(documents, scores, strict=True))]
    results.sort(key=lambda item: item["relevance_score"], reverse=True)
    top_n = body.get("top_n") or 0
    if 0 < top_n < len(documents):
        results = results[:top_n]
    return web.json_response({"id": f"score-{uuid.uuid4().hex}",
                              "model": state.served_model_name, "usage": usage,
                              "results": results})


def _pair_score(state: VllmState, query: str, document: str, raw: bool) -> float:
    if state.task == "score":
        return fake_score(state.model, query, document, raw=raw)
    return float(np.dot(fake_vector(state.model, query, state.dims),
                        fake_vector(state.model, document, state.dims)))


def _truncation(state: VllmState, value: Any) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or value < -1:
        raise invalid("truncate_prompt_tokens", "Input should be greater than or equal to -1")
    if value == -1:
        return state.max_model_len
    if value > state.max_model_len:
        raise VllmError(
            400,
            f"truncate_prompt_tokens value ({value}) is greater than max_model_len "
            f"({state.max_model_len}). Please, select a smaller truncation size.",
        )
    return value


def _encode(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tests.fakes.vllm", description=__doc__)
    add_common_args(parser, default_port=8000)
    parser.add_argument("model_tag", nargs="?", help="as in `vllm serve MODEL`")
    parser.add_argument("--model")
    parser.add_argument("--served-model-name", nargs="+")
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--matryoshka", action="store_true")
    parser.add_argument("--error-shape", choices=["object", "nested"], default="nested")
    parser.add_argument("--api-key")
    parser.add_argument("--runner-task", choices=["embed", "score"], default="embed",
                        help="what the model is (vLLM reads it from the model's config)")

    def build(args: argparse.Namespace) -> web.Application:
        model = args.model or args.model_tag
        if not model:
            parser.error("a model is required (--model MODEL)")
        return create_vllm_app(
            model,
            dims=args.dims,
            max_model_len=args.max_model_len,
            matryoshka=args.matryoshka,
            error_shape=args.error_shape,
            served_model_name=args.served_model_name,
            api_key=args.api_key,
            task=args.runner_task,
        )

    crash = (
        "INFO [api_server.py] vLLM API server version " + VERSION,
        "ERROR [core.py] EngineCore failed to start.",
        "RuntimeError: Engine core initialization failed. See root cause above.",
    )
    return run_cli("vllm", parser, build, argv, crash_lines=crash)


if __name__ == "__main__":
    sys.exit(main())
