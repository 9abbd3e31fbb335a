"""Model or alias → backend; a request checked against its model (what it does included),
then leased and batched (embeddings) or split into rerank calls."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from .backends.base import ServedIdentity, served_name
from .batching import Batcher
from .cache import CacheMode, EmbeddingCache
from .cache_keys import Fingerprint, fingerprint, namespace
from .config import GatewayConfig, ModelConfig, Task
from .errors import InvalidRequest, ModelNotFound, TaskMismatch, UpstreamFailed
from .metrics import Metrics
from .prompts import apply_input_type
from .rerank_schemas import RerankRequest, Scores
from .reranking import rerank_documents
from .schemas import EmbeddingRequest, Embeddings, Inputs, cut_dimensions
from .upstream import Upstream

FINGERPRINTS_KEPT = 1024


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


class Router:
    def __init__(
        self,
        config: GatewayConfig,
        upstreams: dict[str, Upstream],
        batchers: dict[str, Batcher],
        metrics: Metrics,
        cache: EmbeddingCache,
    ) -> None:
        self.routes = build_routes(config)
        self.upstreams = upstreams
        self.batchers = batchers
        self.metrics = metrics
        self.cache = cache
        # (backend, id of the model's options, identity) -> fingerprint: hashed once, not
        # per request (the options live as long as this router's routes)
        self._fingerprints: dict[tuple[str, int, ServedIdentity | None], Fingerprint | None] = {}

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

    def task(self, route: Route) -> Task | None:
        """What the route's model does; None until an upstream that reports it has said."""
        return self.upstreams[route.backend].backend.task(route.model, route.options)

    def check_task(self, route: Route, name: str, wanted: Task, *, known: bool = False) -> None:
        """Refuse a model asked to do what it does not. Before the lease an unknown task lets
        the request through (the upstream says once it is up); inside it (``known``) an
        upstream that said nothing means embed."""
        task = self.task(route)
        if task is None and known:
            task = "embed"
        if task is None or task == wanted:
            return
        if wanted == "rerank":
            raise TaskMismatch(
                f"model {name!r} is an embedding model, not a reranker: use POST "
                "/v1/embeddings with it (a reranker on a server that does not say what its "
                "models do needs 'task: rerank' in the gateway's config)", param="model")
        raise TaskMismatch(f"model {name!r} is a reranker, not an embedding model: use POST "
                           "/v1/rerank with it", param="model")

    def check(self, request: EmbeddingRequest, route: Route) -> None:
        """Reject what this model cannot do before anything is sent or started."""
        self.check_task(route, request.model, "embed")
        upstream = self.upstreams[route.backend]
        if request.prompt_name is not None and not upstream.backend.takes_prompt_name:
            raise InvalidRequest(
                f"'prompt_name' is TEI's; model {request.model!r} is served by "
                f"{upstream.backend.config.kind}: send input_type, with prompts configured "
                "for the model", param="prompt_name")
        if self.truncates(request, route) and not upstream.backend.can_truncate:
            raise InvalidRequest(
                f"model {request.model!r} is served by {upstream.backend.config.kind}, which "
                "the gateway cannot ask to truncate; send \"truncate\": false",
                param="truncate",
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

    def _check_size(self, route: Route, size: int) -> None:
        """Vectors of the configured size, when it is known: else the upstream changed model
        under us, and none of its vectors are used. (The batcher has checked that every call
        for one request gave one size.)"""
        native = route.options.dimensions
        if native is not None and size != native:
            self.metrics.upstream_error(backend=route.backend, kind="mismatch")
            raise UpstreamFailed(
                f"upstream {route.backend!r} returned {size}-d vectors for {route.model!r}, "
                f"configured as {native}-d; they were discarded",
                code="model_mismatch",
                upstream_kind="mismatch",
            )

    @staticmethod
    def truncates(request: EmbeddingRequest, route: Route) -> bool:
        """Is an over-long input cut (rather than refused)? The request says, else its model."""
        if request.truncate is not None:
            return request.truncate
        return route.options.truncation == "truncate"

    def cache_status(self, route: Route) -> dict[str, Any]:
        """What ``/v1/models`` says of a model's cache: its revision, and whether (and why
        not) its vectors are cached."""
        model = self._fingerprint(self.upstreams[route.backend], route)
        reason = None
        if self.task(route) == "rerank":
            return {"revision": model.revision if model else None,
                    "cache": {"enabled": False, "reason": "rerank answers are not cached"}}
        if not self.cache.enabled:
            reason = "the cache is off (cache.memory_bytes is 0 and there is no cache.redis)"
        elif not route.options.cache:
            reason = "cache: false for this model"
        elif model is None:
            reason = "the upstream has not yet said what it serves under this name"
        elif model.revision is None:
            reason = ("the upstream reports no revision: entries follow the name it reports, "
                      "not its weights" if self.cache.unversioned else
                      "the upstream reports no revision (cache.unversioned: false)")
        return {"revision": model.revision if model else None,
                "cache": {"enabled": self._cacheable(route, model), "reason": reason}}

    def _cacheable(self, route: Route, model: Fingerprint | None) -> bool:
        return (self.cache.enabled and route.options.cache and model is not None
                and (model.revision is not None or self.cache.unversioned))

    def _fingerprint(self, upstream: Upstream, route: Route) -> Fingerprint | None:
        served = served_name(route.model, route.options)
        identity = upstream.identity(served)
        key = (route.backend, id(route.options), identity)
        known = self._fingerprints.get(key)
        if known is None:
            if len(self._fingerprints) >= FINGERPRINTS_KEPT:
                self._fingerprints.clear()
            known = self._fingerprints[key] = fingerprint(upstream.backend, served, identity,
                                                          route.options)
        return known

    def _namespace(self, upstream: Upstream, request: EmbeddingRequest, route: Route,
                   call: Hashable) -> str | None:
        """Where this request's vectors are cached (``call``: what its upstream calls carry
        beyond the inputs); ``None``: they are not."""
        if not (route.options.cache and self.cache.enabled):
            return None
        model = self._fingerprint(upstream, route)
        if model is None or not self._cacheable(route, model):
            return None
        return namespace(model, request, call)

    async def embed(self, request: EmbeddingRequest, route: Route,
                    mode: CacheMode = CacheMode.USE) -> Embeddings:
        upstream = self.upstreams[route.backend]
        batcher = self.batchers[route.backend]
        # prompts go on before the batcher (and any cache) sees the text
        inputs, call = apply_input_type(route.options, request.input_type, request.inputs,
                                        request.prompt_name)
        truncate = self.truncates(request, route)
        async with upstream.lease(route.model) as base_url:
            self.check_task(route, request.model, "embed", known=True)
            async def compute(items: Inputs) -> Embeddings:
                return await batcher.embed(base_url, route.model, route.options, items,
                                           call=call, truncate=truncate)

            space = self._namespace(upstream, request, route, (call, truncate))
            if space is None:
                result = await compute(inputs)
            else:
                result = await self.cache.embed(route.model, space, inputs, compute, mode)
                now = self._namespace(upstream, request, route, (call, truncate))
                if now != space:  # the upstream's weights changed meanwhile: all anew
                    result = await (compute(inputs) if now is None else self.cache.embed(
                        route.model, now, inputs, compute, CacheMode.REFRESH))
            # inside the lease, so that the upstream is marked as serving something else
            self._check_size(route, result.vectors.shape[1])
        vectors = result.vectors
        if request.dimensions is not None:
            if request.dimensions > vectors.shape[1]:
                raise InvalidRequest(
                    f"'dimensions' must be between 1 and {vectors.shape[1]} for model "
                    f"{request.model!r}",
                    param="dimensions",
                )
            vectors = cut_dimensions(vectors, request.dimensions)
        truncated = (result.truncated or []) if truncate else None
        return Embeddings(vectors, result.prompt_tokens, truncated, cached=result.cached)

    async def rerank(self, request: RerankRequest, route: Route) -> Scores:
        """Scores for every document, from the model asked for; ``check_task`` has let the
        request through before the lease."""
        upstream = self.upstreams[route.backend]
        async with upstream.lease(route.model) as base_url:
            self.check_task(route, request.model, "rerank", known=True)
            return await rerank_documents(self.batchers[route.backend], base_url, route.model,
                                          route.options, request.query, request.documents)
