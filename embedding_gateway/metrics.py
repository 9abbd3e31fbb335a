"""Prometheus metrics for one gateway app, on the app's own registry.

Each ``Metrics`` owns a ``CollectorRegistry`` so that several apps in one process (tests, or
an app rebuilt on reload) never collide on the global default registry. Label values are
configured model and backend names only, never raw client input, to keep cardinality bounded.
"""

from __future__ import annotations

import asyncio

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

INSTANCE_STATES = ("loaded", "loading", "idle", "failed", "draining")
UPSTREAM_ERROR_KINDS = (
    "refused",
    "timeout",
    "status_4xx",
    "status_5xx",
    "mismatch",
    "bad_response",
)

REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
QUEUE_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600)
SWAP_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
CALL_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)

_PREFIX = "embedding_gateway"


def _loop_tasks() -> float:
    try:
        return float(len(asyncio.all_tasks()))
    except RuntimeError:  # scraped from outside a running loop
        return 0.0


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        reg = self.registry
        self._requests = Counter(
            f"{_PREFIX}_requests_total",
            "Requests answered, by model, backend, task (embed, rerank) and HTTP status.",
            ["model", "backend", "task", "status"],
            registry=reg,
        )
        self._request_duration = Histogram(
            f"{_PREFIX}_request_duration_seconds",
            "Time from request received to response written.",
            ["model", "backend", "task"],
            buckets=REQUEST_BUCKETS,
            registry=reg,
        )
        self._inputs = Counter(
            f"{_PREFIX}_inputs_total",
            "Input texts embedded, or documents reranked.",
            ["model", "backend", "task"],
            registry=reg,
        )
        self._tokens = Counter(
            f"{_PREFIX}_tokens_total",
            "Prompt tokens reported in usage.",
            ["model", "backend", "task"],
            registry=reg,
        )
        self._upstream_errors = Counter(
            f"{_PREFIX}_upstream_errors_total",
            "Failed upstream calls, by kind: " + ", ".join(UPSTREAM_ERROR_KINDS) + ".",
            ["backend", "kind"],
            registry=reg,
        )
        self._queue_depth = Gauge(
            f"{_PREFIX}_queue_depth",
            "Requests waiting for a model to become ready.",
            ["backend"],
            registry=reg,
        )
        self._queue_wait = Histogram(
            f"{_PREFIX}_queue_wait_seconds",
            "Time a request waited for its model (including a swap).",
            ["backend", "model"],
            buckets=QUEUE_WAIT_BUCKETS,
            registry=reg,
        )
        self._swaps = Counter(
            f"{_PREFIX}_swaps_total",
            "Model swaps on a managed backend.",
            ["backend"],
            registry=reg,
        )
        self._swap_duration = Histogram(
            f"{_PREFIX}_swap_duration_seconds",
            "Time from swap start until the new model is ready.",
            ["backend"],
            buckets=SWAP_BUCKETS,
            registry=reg,
        )
        self._instance_state = Gauge(
            f"{_PREFIX}_instance_state",
            "1 for the current state of a managed model instance, 0 for the others.",
            ["backend", "model", "state"],
            registry=reg,
        )
        self._backend_healthy = Gauge(
            f"{_PREFIX}_backend_healthy",
            "1 if the backend's last health check passed.",
            ["backend"],
            registry=reg,
        )
        self._upstream_calls = Counter(
            f"{_PREFIX}_upstream_calls_total",
            "Embedding calls sent upstream (each may carry several requests' inputs).",
            ["backend"],
            registry=reg,
        )
        self._call_inputs = Histogram(
            f"{_PREFIX}_upstream_call_inputs",
            "Distinct inputs per upstream call.",
            ["backend"],
            buckets=CALL_SIZE_BUCKETS,
            registry=reg,
        )
        self._call_requests = Histogram(
            f"{_PREFIX}_upstream_call_requests",
            "Client requests merged into one upstream call.",
            ["backend"],
            buckets=CALL_SIZE_BUCKETS,
            registry=reg,
        )
        self._deduplicated = Counter(
            f"{_PREFIX}_deduplicated_inputs_total",
            "Inputs answered from an identical input in the same upstream call.",
            ["backend"],
            registry=reg,
        )
        self._batch_wait = Histogram(
            f"{_PREFIX}_batch_wait_seconds",
            "Time a request's inputs waited for room in an upstream call.",
            ["backend"],
            buckets=QUEUE_WAIT_BUCKETS,
            registry=reg,
        )
        self._batch_queued = Gauge(
            f"{_PREFIX}_batch_queued_inputs",
            "Inputs waiting for an upstream call.",
            ["backend"],
            registry=reg,
        )
        self._calls_in_flight = Gauge(
            f"{_PREFIX}_upstream_calls_in_flight",
            "Upstream embedding calls in flight.",
            ["backend"],
            registry=reg,
        )
        self._concurrency_limit = Gauge(
            f"{_PREFIX}_upstream_concurrency_limit",
            "Calls allowed in flight that are not yet full (learnt, or max_concurrency).",
            ["backend"],
            registry=reg,
        )
        self._cache_hits = Counter(
            f"{_PREFIX}_cache_hits_total",
            "Inputs answered from the cache, by model and tier (memory, redis).",
            ["model", "tier"],
            registry=reg,
        )
        self._cache_misses = Counter(
            f"{_PREFIX}_cache_misses_total",
            "Inputs looked up in the cache and not found there.",
            ["model"],
            registry=reg,
        )
        self._cache_shared = Counter(
            f"{_PREFIX}_cache_shared_total",
            "Inputs answered by another request's computation of the same input in flight.",
            ["model"],
            registry=reg,
        )
        self._cache_bytes = Gauge(
            f"{_PREFIX}_cache_bytes",
            "Bytes the in-process cache holds, by model.",
            ["model", "tier"],
            registry=reg,
        )
        self._cache_evictions = Counter(
            f"{_PREFIX}_cache_evictions_total",
            "Entries evicted from the in-process cache to stay within its byte bound.",
            ["model"],
            registry=reg,
        )
        self._cache_redis_errors = Counter(
            f"{_PREFIX}_cache_redis_errors_total",
            "Redis calls that failed or timed out (the request went upstream instead).",
            ["model"],
            registry=reg,
        )
        self._tasks = Gauge(
            f"{_PREFIX}_event_loop_tasks",
            "Tasks alive on the gateway's event loop (a leak shows as growth).",
            registry=reg,
        )
        self._tasks.set_function(_loop_tasks)
        self._batch_gauges: dict[str, tuple[Gauge, Gauge, Gauge]] = {}
        # labelled children per (model, backend, task, status), looked up once: on every
        # request's path
        self._request_children: dict[
            tuple[str, str, str, int], tuple[Counter, Histogram, Counter, Counter]
        ] = {}

    def observe_request(
        self, *, model: str, backend: str, task: str, status: int, seconds: float, inputs: int,
        tokens: int
    ) -> None:
        key = (model, backend, task, status)
        children = self._request_children.get(key)
        if children is None:
            labels = {"model": model, "backend": backend, "task": task}
            children = self._request_children[key] = (
                self._requests.labels(**labels, status=str(status)),
                self._request_duration.labels(**labels),
                self._inputs.labels(**labels),
                self._tokens.labels(**labels),
            )
        requests, duration, inputs_total, tokens_total = children
        requests.inc()
        duration.observe(seconds)
        inputs_total.inc(inputs)
        tokens_total.inc(tokens)

    def cache_hit(self, *, model: str, tier: str, inputs: int) -> None:
        self._cache_hits.labels(model=model, tier=tier).inc(inputs)

    def cache_lookup(self, *, model: str, misses: int) -> None:
        self._cache_misses.labels(model=model).inc(misses)

    def cache_shared(self, *, model: str, inputs: int) -> None:
        self._cache_shared.labels(model=model).inc(inputs)

    def set_cache_bytes(self, *, model: str, tier: str, size: int) -> None:
        self._cache_bytes.labels(model=model, tier=tier).set(size)

    def cache_evicted(self, *, model: str) -> None:
        self._cache_evictions.labels(model=model).inc()

    def cache_redis_error(self, *, model: str) -> None:
        self._cache_redis_errors.labels(model=model).inc()

    def upstream_error(self, *, backend: str, kind: str) -> None:
        if kind not in UPSTREAM_ERROR_KINDS:
            raise ValueError(f"unknown upstream error kind {kind!r}")
        self._upstream_errors.labels(backend=backend, kind=kind).inc()

    def observe_upstream_call(
        self, *, backend: str, inputs: int, requests: int, deduplicated: int
    ) -> None:
        self._upstream_calls.labels(backend=backend).inc()
        self._call_inputs.labels(backend=backend).observe(inputs)
        self._call_requests.labels(backend=backend).observe(requests)
        if deduplicated:
            self._deduplicated.labels(backend=backend).inc(deduplicated)

    def observe_batch_wait(self, *, backend: str, seconds: float) -> None:
        self._batch_wait.labels(backend=backend).observe(seconds)

    def set_batch_state(self, *, backend: str, queued_inputs: int, calls: int, limit: int) -> None:
        gauges = self._batch_gauges.get(backend)
        if gauges is None:  # looked up once: this runs several times per request
            gauges = self._batch_gauges[backend] = (
                self._batch_queued.labels(backend=backend),
                self._calls_in_flight.labels(backend=backend),
                self._concurrency_limit.labels(backend=backend),
            )
        gauges[0].set(queued_inputs)
        gauges[1].set(calls)
        gauges[2].set(limit)

    def set_queue_depth(self, *, backend: str, depth: int) -> None:
        self._queue_depth.labels(backend=backend).set(depth)

    def observe_queue_wait(self, *, backend: str, model: str, seconds: float) -> None:
        self._queue_wait.labels(backend=backend, model=model).observe(seconds)

    def observe_swap(self, *, backend: str, seconds: float) -> None:
        self._swaps.labels(backend=backend).inc()
        self._swap_duration.labels(backend=backend).observe(seconds)

    def set_instance_state(self, *, backend: str, model: str, state: str) -> None:
        if state not in INSTANCE_STATES:
            raise ValueError(f"unknown instance state {state!r}")
        for candidate in INSTANCE_STATES:
            value = 1 if candidate == state else 0
            self._instance_state.labels(backend=backend, model=model, state=candidate).set(value)

    def set_backend_health(self, *, backend: str, healthy: bool) -> None:
        self._backend_healthy.labels(backend=backend).set(1 if healthy else 0)

    def render(self) -> tuple[bytes, str]:
        """The text exposition and its full Content-Type (with version and charset)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
