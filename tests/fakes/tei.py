"""A fake text-embeddings-inference 1.9 server (router/src/http/server.rs, types.rs).

``model_type="reranker"`` serves a cross-encoder: ``/rerank`` (``RerankRequest``: query, texts,
truncate, raw_scores, return_text → ``[Rank {index, text?, score}]`` sorted by score; an empty
``texts`` is 400 Empty, a batch over ``max_client_batch_size`` 422 Validation, each text
waits for its permit (``acquire_permit``, no 429)), and its embedding routes answer 424
"model is not an embedding model", as an embedding model's ``/rerank`` answers 424 "model is
not a re-ranker model". ``/info`` reports ``model_type`` accordingly.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from aiohttp import web

from tests.fakes import (
    FAKE_STATE,
    FakeError,
    FakeState,
    add_common_args,
    fail_payload,
    hold,
    install_state,
    run_cli,
)
from tests.fakes.scores import fake_score
from tests.fakes.vectors import Item, count_tokens, cut, fake_vectors, truncate_item

VERSION = "1.9.3"
PAYLOAD_LIMIT = 2_000_000
UNNORMALISED_SCALE = 2.5

ERROR_TYPES = {
    400: "Empty",
    413: "Validation",
    422: "Validation",
    424: "Backend",
    429: "Overloaded",
    503: "Unhealthy",
}


@dataclass
class TeiState(FakeState):
    max_client_batch_size: int = 32
    max_input_length: int = 512
    max_batch_tokens: int = 16384
    max_concurrent_requests: int = 512
    auto_truncate: bool = True
    served_model_name: str | None = None
    model_sha: str | None = None  # the revision /info reports; other weights, other vectors
    api_key: str | None = None
    model_type: Literal["embedding", "reranker"] = "embedding"
    prompts: dict[str, str] = field(default_factory=dict)  # sentence-transformers' prompts
    in_flight: int = 0
    peak_in_flight: int = 0  # the most inputs it held permits for at once
    slots: asyncio.Condition = field(default_factory=asyncio.Condition, repr=False)


TEI_STATE = web.AppKey("tei_state", TeiState)


class TeiError(FakeError):
    def __init__(self, status: int, message: str, raw: Any = None) -> None:
        super().__init__(status, message)
        self.raw = raw

    @property
    def error_type(self) -> str:
        return ERROR_TYPES.get(self.status, "Backend")


def default_message(state: TeiState, status: int) -> str:
    limit = state.max_input_length
    return {
        400: "`inputs` cannot be empty",
        413: "Failed to buffer the request body: length limit exceeded",
        422: f"Input validation error: `inputs` must have less than {limit} tokens. "
        f"Given: {limit + 88}",
        424: "Backend error: Inference failed",
        429: "Model is overloaded",
        503: "unhealthy",
    }.get(status, "Backend error: Inference failed")


def create_tei_app(
    model_id: str,
    dims: int = 384,
    max_client_batch_size: int = 32,
    max_input_length: int = 512,
    auto_truncate: bool = True,
    served_model_name: str | None = None,
    *,
    max_concurrent_requests: int = 512,
    payload_limit: int = PAYLOAD_LIMIT,
    api_key: str | None = None,
    model_type: Literal["embedding", "reranker"] = "embedding",
    prompts: dict[str, str] | None = None,
) -> web.Application:
    state = TeiState(
        model=model_id,
        dims=dims,
        max_client_batch_size=max_client_batch_size,
        max_input_length=max_input_length,
        max_concurrent_requests=max_concurrent_requests,
        auto_truncate=auto_truncate,
        served_model_name=served_model_name,
        api_key=api_key,
        model_type=model_type,
        prompts=dict(prompts or {}),
    )
    app = web.Application(client_max_size=payload_limit, middlewares=[_payload_limit])
    install_state(app, state)
    app[TEI_STATE] = state
    app.middlewares.append(_api_key)
    for path in ("/health", "/", "/ping"):
        app.router.add_get(path, health)
    app.router.add_get("/info", info)
    app.router.add_post("/embed", embed)
    app.router.add_post("/v1/embeddings", openai_embed)
    app.router.add_post("/embeddings", openai_embed)
    app.router.add_post("/rerank", rerank)
    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _payload_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        return web.Response(
            status=413, text="Failed to buffer the request body: length limit exceeded"
        )


PUBLIC_PATHS = frozenset({"/health", "/", "/ping", "/metrics"})


@web.middleware
async def _api_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    key = request.app[TEI_STATE].api_key
    authorised = request.headers.get("Authorization") == f"Bearer {key}"
    if key and request.path not in PUBLIC_PATHS and not authorised:
        return web.Response(status=401)
    return await handler(request)


async def health(request: web.Request) -> web.Response:
    await hold(request)
    if not request.app[FAKE_STATE].healthy:
        return web.json_response({"error": "unhealthy", "error_type": "Unhealthy"}, status=503)
    return web.Response(status=200)


async def info(request: web.Request) -> web.Response:
    state = request.app[TEI_STATE]
    return web.json_response(
        {
            "model_id": state.model,
            "model_sha": state.model_sha,
            "model_dtype": "float16",
            "model_type": ({"reranker": {"id2label": {"0": "LABEL_0"},
                                         "label2id": {"LABEL_0": 0}}}
                           if state.model_type == "reranker"
                           else {"embedding": {"pooling": "cls"}}),
            "max_concurrent_requests": state.max_concurrent_requests,
            "max_input_length": state.max_input_length,
            "max_batch_tokens": state.max_batch_tokens,
            "max_batch_requests": None,
            "max_client_batch_size": state.max_client_batch_size,
            "auto_truncate": state.auto_truncate,
            "tokenization_workers": 4,
            "version": VERSION,
            "sha": None,
            "docker_label": None,
            "served_model_name": state.served_model_name,
        }
    )


async def _json_body(request: web.Request) -> dict[str, Any] | web.Response:
    """The body as axum's `Json` extractor sees it, or its plain-text rejection."""
    if request.content_type != "application/json":
        return web.Response(
            status=415, text="Expected request with `Content-Type: application/json`"
        )
    try:
        body = await request.json()
    except ValueError as exc:
        return web.Response(status=400, text=f"Failed to parse the request body as JSON: {exc}")
    if not isinstance(body, dict):
        return _rejection("invalid type: expected struct")
    return body


def _rejection(detail: str) -> web.Response:
    return web.Response(
        status=422, text=f"Failed to deserialize the JSON body into the target type: {detail}"
    )


def parse_inputs(value: Any) -> tuple[list[Item], bool] | None:
    """(items, is_batch) for TEI's `Input`: a string, token ids, or a batch of either."""
    if isinstance(value, str):
        return [value], False
    if not isinstance(value, list):
        return None
    if value and all(_is_id(v) for v in value):
        return [list(value)], False
    items: list[Item] = []
    for v in value:
        if isinstance(v, str):
            items.append(v)
        elif isinstance(v, list) and all(_is_id(t) for t in v):
            items.append(list(v))
        else:
            return None
    return items, True


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


async def embed(request: web.Request) -> web.Response:
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    try:
        truncate = body.get("truncate")
        vectors, tokens = await _embed(request, body.get("inputs"), truncate, body)
    except TeiError as exc:
        body = {"error": exc.message, "error_type": exc.error_type}
        return web.json_response(body if exc.raw is None else exc.raw, status=exc.status)
    except _Rejected as exc:
        return _rejection(str(exc))
    return web.json_response(vectors.tolist(), headers=_metadata(tokens))


def _metadata(tokens: int) -> dict[str, str]:
    """Some of the headers TEI's ResponseMetadata puts on every answer."""
    return {"x-compute-type": "gpu+optimized", "x-compute-tokens": str(tokens)}


async def openai_embed(request: web.Request) -> web.Response:
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    state = request.app[TEI_STATE]
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        return _rejection(
            f"encoding_format: unknown variant `{encoding}`, expected `float` or `base64`"
        )
    try:
        vectors, tokens = await _embed(request, body.get("input"), None, body)
    except TeiError as exc:
        body = {"message": exc.message, "code": exc.status, "type": exc.error_type}
        return web.json_response(body if exc.raw is None else exc.raw, status=exc.status)
    except _Rejected as exc:
        return _rejection(str(exc))
    data = [
        {"object": "embedding", "embedding": _encode(vector, encoding), "index": index}
        for index, vector in enumerate(vectors)
    ]
    return web.json_response(
        {
            "object": "list",
            "data": data,
            "model": state.served_model_name or state.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        },
        headers=_metadata(tokens),
    )


def _encode(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


class _Rejected(Exception):
    """The body does not deserialize into TEI's request type (axum answers 422 text)."""


async def _embed(
    request: web.Request, raw_inputs: Any, truncate: bool | None, body: dict[str, Any]
) -> tuple[np.ndarray, int]:
    state = request.app[TEI_STATE]
    await hold(request)
    failure = fail_payload(state, lambda status: default_message(state, status))
    if failure is not None:
        status, payload, message = failure
        raise TeiError(status, message, payload if isinstance(payload, dict | list) else None)
    if state.model_type != "embedding":
        raise TeiError(424, "model is not an embedding model")
    parsed = parse_inputs(raw_inputs)
    if parsed is None:
        raise _Rejected("data did not match any variant of untagged enum Input")
    items, batch = parsed
    if batch and not items:
        raise TeiError(400, "`inputs` cannot be empty")
    if batch and len(items) > state.max_client_batch_size:
        raise TeiError(
            422,
            f"batch size {len(items)} > maximum allowed batch size {state.max_client_batch_size}",
        )
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, int) or not 0 < dimensions <= state.dims
    ):
        raise TeiError(
            422,
            f"Input validation error: `dimensions` must be between 1 and {state.dims}. "
            f"Given: {dimensions}",
        )
    if truncate is None:
        truncate = state.auto_truncate
    prompt_name = body.get("prompt_name")
    if prompt_name is not None:  # text before each input, from the model's own config
        if prompt_name not in state.prompts:
            raise TeiError(422, f"Input validation error: Prompt name `{prompt_name}` "
                                "was not found in the prompts")
        items = [state.prompts[prompt_name] + item if isinstance(item, str) else item
                 for item in items]
    tokens = 0
    for position, item in enumerate(items):
        count = count_tokens(item)
        if count > state.max_input_length:
            if not truncate:
                raise TeiError(
                    422,
                    "Input validation error: `inputs` must have less than "
                    f"{state.max_input_length} tokens. Given: {count}",
                )
            count = state.max_input_length
            items[position] = truncate_item(item, count)
        tokens += count
    async with _Permits(state, len(items)):
        if state.delay > 0:
            await asyncio.sleep(state.delay)
    vectors = fake_vectors(weights(state), items, state.dims)
    if dimensions is not None:
        vectors = np.stack([cut(v, dimensions) for v in vectors])
    if body.get("normalize", True) is False:
        vectors = vectors * np.float32(UNNORMALISED_SCALE)
    return vectors, tokens


async def rerank(request: web.Request) -> web.Response:
    body = await _json_body(request)
    if isinstance(body, web.Response):
        return body
    state = request.app[TEI_STATE]
    query, texts = body.get("query"), body.get("texts")
    for name, value in (("query", query), ("texts", texts)):
        if value is None:
            return _rejection(f"missing field `{name}`")
    if not isinstance(query, str):
        return _rejection("query: invalid type: expected a string")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        return _rejection("texts: invalid type: expected a sequence of strings")
    try:
        ranks = await _rerank(request, state, query, texts, body)
    except TeiError as exc:
        error = {"error": exc.message, "error_type": exc.error_type}
        return web.json_response(error if exc.raw is None else exc.raw, status=exc.status)
    tokens = sum(count_tokens(query) + count_tokens(text) for text in texts)  # one pair each
    return web.json_response(ranks, headers=_metadata(tokens))


async def _rerank(request: web.Request, state: TeiState, query: str, texts: list[str],
                  body: dict[str, Any]) -> list[dict[str, Any]]:
    if not texts:
        raise TeiError(400, "`texts` cannot be empty")
    if state.model_type != "reranker":
        raise TeiError(424, "model is not a re-ranker model")
    await hold(request)
    failure = fail_payload(state, lambda status: default_message(state, status))
    if failure is not None:
        status, payload, message = failure
        raise TeiError(status, message, payload if isinstance(payload, dict | list) else None)
    if len(texts) > state.max_client_batch_size:
        raise TeiError(422, f"batch size {len(texts)} > maximum allowed batch size "
                            f"{state.max_client_batch_size}")
    truncate = body.get("truncate")
    if not (state.auto_truncate if truncate is None else truncate):
        for text in texts:
            count = count_tokens(query) + count_tokens(text)
            if count > state.max_input_length:
                raise TeiError(422, "Input validation error: `inputs` must have less than "
                                    f"{state.max_input_length} tokens. Given: {count}")

    async def one() -> None:
        async with _Permits(state, 1, wait=True):
            if state.delay > 0:
                await asyncio.sleep(state.delay)

    await asyncio.gather(*(one() for _ in texts))
    raw = body.get("raw_scores") is True
    ranks = []
    for index, text in enumerate(texts):
        rank: dict[str, Any] = {"index": index}
        if body.get("return_text") is True:
            rank["text"] = text
        rank["score"] = fake_score(state.model, query, text, raw=raw)
        ranks.append(rank)
    ranks.sort(key=lambda rank: rank["score"], reverse=True)
    return ranks


def weights(state: TeiState) -> str:
    """What seeds its vectors: the model, and its revision where it has one."""
    return state.model if state.model_sha is None else f"{state.model}@{state.model_sha}"


class _Permits:
    """TEI's concurrency permits, one per input (``router/src/infer.rs``: ``try_acquire_many``):
    a request that finds too few free is refused at once with 429, whatever its size."""

    def __init__(self, state: TeiState, count: int, *, wait: bool = False) -> None:
        self.state = state
        self.count = count
        self.wait = wait  # ``acquire_permit`` (rerank) waits for one rather than refusing

    async def __aenter__(self) -> None:
        state = self.state
        async with state.slots:
            if self.wait:
                await state.slots.wait_for(
                    lambda: state.max_concurrent_requests - state.in_flight >= self.count)
            if state.max_concurrent_requests - state.in_flight < self.count:
                raise TeiError(429, "Model is overloaded")
            state.in_flight += self.count
            state.peak_in_flight = max(state.peak_in_flight, state.in_flight)
            state.slots.notify_all()

    async def __aexit__(self, *_: object) -> None:
        async with self.state.slots:
            self.state.in_flight -= self.count
            self.state.slots.notify_all()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tests.fakes.tei", description=__doc__)
    add_common_args(parser, default_port=80)
    parser.add_argument("--model-id", required=True)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--served-model-name")
    parser.add_argument("--max-client-batch-size", type=int, default=32)
    parser.add_argument("--max-input-length", type=int, default=512)
    parser.add_argument("--max-concurrent-requests", type=int, default=512)
    parser.add_argument(
        "--auto-truncate", nargs="?", const="true", default="true", choices=["true", "false"]
    )
    parser.add_argument("--payload-limit", type=int, default=PAYLOAD_LIMIT)
    parser.add_argument("--api-key")
    parser.add_argument("--model-type", choices=["embedding", "reranker"], default="embedding",
                        help="what the model is (TEI reads it from the model's config)")

    def build(args: argparse.Namespace) -> web.Application:
        return create_tei_app(
            args.model_id,
            dims=args.dims,
            max_client_batch_size=args.max_client_batch_size,
            max_input_length=args.max_input_length,
            auto_truncate=args.auto_truncate == "true",
            served_model_name=args.served_model_name,
            max_concurrent_requests=args.max_concurrent_requests,
            payload_limit=args.payload_limit,
            api_key=args.api_key,
            model_type=args.model_type,
        )

    crash = (
        'INFO text_embeddings_router: Args { model_id: "..." }',
        "INFO text_embeddings_core::download: Starting download",
        "Error: Could not download model artifacts",
    )
    return run_cli("tei", parser, build, argv, crash_lines=crash)


if __name__ == "__main__":
    sys.exit(main())
