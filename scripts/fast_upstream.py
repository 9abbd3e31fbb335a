#!/usr/bin/env python3
"""A minimal, fast OpenAI-compatible embeddings server: the baseline for gateway overhead.

Every input gets the same unit vector, so a response is a cached byte string plus the model
and usage: no per-float Python work on the request path. It speaks the OpenAI wire format (float or
base64 float32 little-endian, ``dimensions``, ``usage``, the error envelope), so it can stand
in for a real upstream or for the gateway itself.

    python scripts/fast_upstream.py --port 18001 --dims 1024 --model fast-1024

With ``--accelerator batching|serial`` it simulates a GPU server instead (see
``simulated_accelerator.py``): each input gets the vector of its own text
(``text_vector``), and every answer waits for the simulated device. ``--accelerator gpu`` pays
for each batch with a bge-m3-shaped encoder's forward pass on CUDA (``gpu_accelerator.py``;
needs torch and a GPU).

    python scripts/fast_upstream.py --accelerator batching --fixed-ms 40 --per-input-ms 0.4
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import sys
from typing import Any

import numpy as np
import orjson
from aiohttp import web

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from simulated_accelerator import Accelerator, text_vectors

JSON = "application/json"
TAIL = b'"model":%s,"usage":{"prompt_tokens":%d,"total_tokens":%d}}'


def unit_vector(dims: int, seed: int) -> np.ndarray:
    vector = np.random.default_rng(seed).standard_normal(dims).astype(np.float32)
    return vector / np.linalg.norm(vector)


def error_response(status: int, message: str, param: str | None, code: str | None) -> web.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type=JSON)


class InvalidInput(ValueError):
    pass


def count_tokens(raw: Any) -> tuple[int, int]:
    """Return (number of inputs, approximate token count): words for text, length for ids."""
    if isinstance(raw, str):
        return 1, raw.count(" ") + 1
    if not isinstance(raw, list) or not raw:
        raise InvalidInput("'input' must be a non-empty string or array")
    first = raw[0]
    if isinstance(first, int):
        return 1, len(raw)
    tokens = 0
    if isinstance(first, str):
        if not all(isinstance(text, str) for text in raw):
            raise InvalidInput("'input' must not mix strings and other types")
        tokens = sum(text.count(" ") for text in raw) + len(raw)
    elif isinstance(first, list):
        for ids in raw:
            if not isinstance(ids, list) or not ids:
                raise InvalidInput("'input' token arrays must be non-empty arrays of integers")
            tokens += len(ids)
    else:
        raise InvalidInput("'input' must be a string, strings, or token arrays")
    return len(raw), tokens


class ResponseHeads:
    """Serialised ``{"object":"list","data":[…],`` per (count, dims, encoding), kept for reuse."""

    keep = 32

    def __init__(self, vector: np.ndarray) -> None:
        self.vector = vector
        self.items: dict[tuple[int, str], list[bytes]] = {}
        self.heads: dict[tuple[int, int, str], bytes] = {}

    def embedding_bytes(self, dims: int, encoding: str) -> bytes:
        cut = self.vector[:dims]
        cut = cut / np.linalg.norm(cut)
        if encoding == "base64":
            return b'"' + base64.b64encode(cut.astype("<f4").tobytes()) + b'"'
        return orjson.dumps(cut, option=orjson.OPT_SERIALIZE_NUMPY)

    def head(self, count: int, dims: int, encoding: str) -> bytes:
        key = (count, dims, encoding)
        head = self.heads.get(key)
        if head is None:
            items = self.items.setdefault((dims, encoding), [])
            if len(items) < count:
                embedding = self.embedding_bytes(dims, encoding)
                items.extend(
                    b'{"object":"embedding","index":%d,"embedding":%s}' % (index, embedding)
                    for index in range(len(items), count)
                )
            head = b"".join((b'{"object":"list","data":[', b",".join(items[:count]), b"],"))
            if len(self.heads) >= self.keep:
                del self.heads[next(iter(self.heads))]
            self.heads[key] = head
        return head


class FastUpstream:
    def __init__(
        self,
        models: list[str],
        dims: int,
        max_inputs: int,
        seed: int,
        backend: str | None,
        accelerator: Accelerator | None = None,
    ) -> None:
        self.accelerator = accelerator
        self.models = models
        self.dims = dims
        self.max_inputs = max_inputs
        self.heads = ResponseHeads(unit_vector(dims, seed))
        self.models_body = orjson.dumps(
            {
                "object": "list",
                "data": [self.model_entry(name, backend) for name in models],
            }
        )

    @staticmethod
    def model_entry(name: str, backend: str | None) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "id": name,
            "object": "model",
            "created": 0,
            "owned_by": "fast-upstream",
        }
        if backend:
            entry |= {"backend": backend, "managed": True}
        return entry

    async def embeddings(self, request: web.Request) -> web.Response:
        try:
            payload = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return error_response(400, "request body is not valid JSON", None, None)
        if not isinstance(payload, dict):
            return error_response(400, "request body must be a JSON object", None, None)
        model = payload.get("model")
        if model not in self.models:
            return error_response(
                404, f"The model `{model}` does not exist", "model", "model_not_found"
            )
        try:
            count, tokens = count_tokens(payload.get("input"))
        except InvalidInput as exc:
            return error_response(400, str(exc), "input", None)
        if count > self.max_inputs:
            message = f"batch size {count} > maximum allowed batch size {self.max_inputs}"
            return error_response(400, message, "input", None)
        encoding = payload.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            message = "encoding_format must be float or base64"
            return error_response(400, message, "encoding_format", None)
        dims = payload.get("dimensions") or self.dims
        if not isinstance(dims, int) or not 0 < dims <= self.dims:
            message = f"dimensions must be an integer in 1..{self.dims}"
            return error_response(400, message, "dimensions", None)
        if self.accelerator is not None:
            return await self.accelerated(payload["input"], dims, encoding, model, tokens)
        body = self.heads.head(count, dims, encoding) + TAIL % (orjson.dumps(model), tokens, tokens)
        return web.Response(body=body, content_type=JSON)

    async def accelerated(
        self, raw: Any, dims: int, encoding: str, model: str, tokens: int
    ) -> web.Response:
        """Each input's own vector, answered once the simulated device has run its batch."""
        assert self.accelerator is not None
        items = [raw] if isinstance(raw, str) or isinstance(raw[0], int) else raw
        await self.accelerator.run(items)
        vectors = text_vectors(items, self.dims)[:, :dims]
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        if encoding == "base64":
            rows = [b'"' + base64.b64encode(row.astype("<f4").tobytes()) + b'"' for row in vectors]
        else:
            rows = [orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) for row in vectors]
        data = b",".join(
            b'{"object":"embedding","index":%d,"embedding":%s}' % (index, row)
            for index, row in enumerate(rows)
        )
        body = b'{"object":"list","data":[' + data + b"]," + TAIL % (
            orjson.dumps(model), tokens, tokens)
        return web.Response(body=body, content_type=JSON)

    async def list_models(self, request: web.Request) -> web.Response:
        return web.Response(body=self.models_body, content_type=JSON)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(body=b'{"status":"ok"}', content_type=JSON)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/health", self.health)
        return app


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18001, help="0 picks a free port")
    parser.add_argument("--dims", type=int, default=1024)
    parser.add_argument(
        "--model", default=None, help="served model name(s), comma-separated (default fast-DIMS)"
    )
    parser.add_argument("--max-inputs", type=int, default=4096, help="largest batch accepted")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--accelerator",
        choices=("batching", "serial", "gpu", "gpu-serial"),
        default=None,
        help="simulate a GPU server: batching (TEI-like) or one request at a time (Ollama-like);"
        " gpu, gpu-serial: the same, each batch paid for by a real forward pass on CUDA",
    )
    parser.add_argument(
        "--max-batch-tokens", type=int, default=16384, help="gpu: padded tokens per batch"
    )
    parser.add_argument("--fixed-ms", type=float, default=40.0, help="simulated cost per batch")
    parser.add_argument(
        "--per-input-ms", type=float, default=0.4, help="simulated cost per input in a batch"
    )
    parser.add_argument(
        "--max-batch", type=int, default=None, help="most inputs in one simulated batch"
    )
    parser.add_argument(
        "--managed-backend",
        default=None,
        help="list the models as managed by this backend, as the gateway's /v1/models does",
    )
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    models = [m.strip() for m in (args.model or f"fast-{args.dims}").split(",") if m.strip()]
    accelerator: Accelerator | None = None
    if args.accelerator in ("gpu", "gpu-serial"):
        from gpu_accelerator import GPUAccelerator

        mode = "serial" if args.accelerator == "gpu-serial" else "batching"
        accelerator = GPUAccelerator(mode, max_batch_tokens=args.max_batch_tokens)
        accelerator.warm_up()
    elif args.accelerator:
        accelerator = Accelerator(args.accelerator, fixed_ms=args.fixed_ms,
                                  per_input_ms=args.per_input_ms, max_batch=args.max_batch)
    upstream = FastUpstream(
        models, args.dims, args.max_inputs, args.seed, args.managed_backend, accelerator
    )
    runner = web.AppRunner(upstream.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    port = runner.addresses[0][1]
    print(
        f"fast_upstream listening on http://{args.host}:{port} models={','.join(models)}",
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        if accelerator is not None:
            print(f"accelerator: {accelerator.summary()}", flush=True)
            await accelerator.close()


def main(argv: list[str] | None = None) -> int:
    asyncio.run(serve(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
