"""Model or alias → backend; batches split to the upstream's limit and put back in order."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from .config import GatewayConfig, ModelConfig
from .errors import GatewayError, InvalidRequest, ModelNotFound, UnsupportedInput, UpstreamFailed
from .metrics import Metrics
from .schemas import EmbeddingRequest, Embeddings, Inputs, cut_dimensions
from .upstream import Upstream

T = TypeVar("T")


@dataclass(frozen=True)
class Route:
    model: str  # the configured model name
    backend: str
    options: ModelConfig
    alias_of: str | None = None


def build_routes(config: GatewayConfig) -> dict[str, Route]:
    routes: dict[str, Route] = {}
    for backend_name, backend in config.backends.items():
        for name, options in backend.models.items():
            routes[name] = Route(name, backend_name, options)
            for alias in options.aliases:
                routes[alias] = Route(name, backend_name, options, alias_of=name)
    return routes


def split_batch(inputs: Inputs, limit: int) -> Iterator[Inputs]:
    for start in range(0, len(inputs), limit):
        yield inputs[start : start + limit]  # type: ignore[misc]


async def gather_in_order(aws: list[Awaitable[T]]) -> list[T]:
    """Results in submission order; the first failure cancels the rest."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class Router:
    def __init__(
        self, config: GatewayConfig, upstreams: dict[str, Upstream], metrics: Metrics
    ) -> None:
        self.routes = build_routes(config)
        self.upstreams = upstreams
        self.metrics = metrics

    def discovered_routes(self) -> dict[str, Route]:
        """Routes for models the upstreams offer beyond the config, by their full names."""
        return {
            name: Route(name, backend, ModelConfig())
            for backend, upstream in self.upstreams.items()
            for name in sorted(upstream.discovered())
            if name not in self.routes
        }

    def resolve(self, name: str) -> Route:
        route = self.routes.get(name)
        if route is not None:
            return route
        for backend, upstream in self.upstreams.items():
            if upstream.backend.canonical(name) in upstream.discovered():
                return Route(name, backend, ModelConfig())
        raise ModelNotFound(
            f"The model {name!r} does not exist on this gateway; GET /v1/models lists "
            "the models it serves",
            param="model",
        )

    def check(self, request: EmbeddingRequest, route: Route) -> None:
        """Reject what this model cannot do before anything is sent or started."""
        upstream = self.upstreams[route.backend]
        if request.tokens and not upstream.backend.accepts_tokens:
            raise UnsupportedInput(
                f"model {request.model!r} is served by {upstream.backend.config.kind}, which "
                "takes text only; send strings, not token ids",
                param="input",
            )
        dims = request.dimensions
        if dims is not None:
            if not route.options.matryoshka:
                raise InvalidRequest(
                    f"model {request.model!r} does not support 'dimensions' (it is not "
                    "configured as a Matryoshka model)",
                    param="dimensions",
                )
            native = route.options.dimensions
            if native is not None and dims > native:
                raise InvalidRequest(
                    f"'dimensions' must be between 1 and {native} for model {request.model!r}",
                    param="dimensions",
                )

    def _check_sizes(self, route: Route, sizes: list[int]) -> None:
        """Every chunk's vectors are of one size, the configured one when it is known: else
        the upstream changed model under us, and none of its vectors are used."""
        native = route.options.dimensions
        if len(set(sizes)) > 1 or (native is not None and sizes[0] != native):
            self.metrics.upstream_error(backend=route.backend, kind="mismatch")
            expected = f"configured as {native}-d" if native is not None else "one size"
            raise UpstreamFailed(
                f"upstream {route.backend!r} returned {'/'.join(map(str, sorted(set(sizes))))}-d "
                f"vectors for {route.model!r}, {expected}; they were discarded",
                code="model_mismatch",
                upstream_kind="mismatch",
            )

    async def embed(self, request: EmbeddingRequest, route: Route) -> Embeddings:
        upstream = self.upstreams[route.backend]
        backend = upstream.backend

        async def one_chunk(base_url: str, chunk: Inputs) -> Embeddings:
            async with upstream.semaphore:
                try:
                    return await backend.embed(base_url, route.model, route.options, chunk)
                except GatewayError as exc:
                    if exc.upstream_kind is not None:
                        self.metrics.upstream_error(backend=route.backend, kind=exc.upstream_kind)
                    raise

        async with upstream.lease(route.model) as base_url:
            limit = backend.batch_limit(route.options)  # known once the upstream is checked
            if len(request.inputs) <= limit:  # one chunk: no tasks to create and gather
                parts = [await one_chunk(base_url, request.inputs)]
            else:
                parts = await gather_in_order(
                    [one_chunk(base_url, chunk) for chunk in split_batch(request.inputs, limit)]
                )
            # inside the lease, so that the upstream is marked as serving something else
            self._check_sizes(route, [p.vectors.shape[1] for p in parts])
        vectors = parts[0].vectors if len(parts) == 1 else np.vstack([p.vectors for p in parts])
        if request.dimensions is not None:
            if request.dimensions > vectors.shape[1]:
                raise InvalidRequest(
                    f"'dimensions' must be between 1 and {vectors.shape[1]} for model "
                    f"{request.model!r}",
                    param="dimensions",
                )
            vectors = cut_dimensions(vectors, request.dimensions)
        return Embeddings(vectors, sum(p.prompt_tokens for p in parts))
