"""Model or alias → backend; a request checked against its model (what it does included),
then leased and batched (embeddings) or split into rerank calls."""

from __future__ import annotations

from dataclasses import dataclass

from .batching import Batcher
from .config import GatewayConfig, ModelConfig, Task
from .errors import InvalidRequest, ModelNotFound, TaskMismatch, UpstreamFailed
from .metrics import Metrics
from .prompts import apply_input_type
from .rerank_schemas import RerankRequest, Scores
from .reranking import rerank_documents
from .schemas import EmbeddingRequest, Embeddings, cut_dimensions
from .upstream import Upstream


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
    ) -> None:
        self.routes = build_routes(config)
        self.upstreams = upstreams
        self.batchers = batchers
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

    async def embed(self, request: EmbeddingRequest, route: Route) -> Embeddings:
        upstream = self.upstreams[route.backend]
        batcher = self.batchers[route.backend]
        # prompts go on before the batcher (and any cache) sees the text
        inputs, call = apply_input_type(route.options, request.input_type, request.inputs,
                                        request.prompt_name)
        truncate = self.truncates(request, route)
        async with upstream.lease(route.model) as base_url:
            self.check_task(route, request.model, "embed", known=True)
            result = await batcher.embed(base_url, route.model, route.options, inputs,
                                         call=call, truncate=truncate)
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
        return Embeddings(vectors, result.prompt_tokens, result.truncated)

    async def rerank(self, request: RerankRequest, route: Route) -> Scores:
        """Scores for every document, from the model asked for; ``check_task`` has let the
        request through before the lease."""
        upstream = self.upstreams[route.backend]
        async with upstream.lease(route.model) as base_url:
            self.check_task(route, request.model, "rerank", known=True)
            return await rerank_documents(self.batchers[route.backend], base_url, route.model,
                                          route.options, request.query, request.documents)
