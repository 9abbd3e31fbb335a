"""The running gateway: config, upstreams and router, held on the app under ``GATEWAY``.

A reload builds a new ``Router`` over a new set of upstreams (keeping the ones whose backend
config did not change) and swaps it in with one assignment, so a request sees either the old
world or the new one, never a mix.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import attrs
import structlog
from aiohttp import web

from .backends import create_backend
from .batching import Batcher
from .cache import EmbeddingCache, MemoryTier, Tier
from .config import BackendConfig, CacheConfig, GatewayConfig, ManagedConfig
from .http_client import HttpClient
from .instances import DeviceLedger
from .metrics import Metrics
from .router import Router
from .runtimes.base import Runtime
from .supervisor import Supervisor
from .upstream import RemoteUpstream, Upstream

if TYPE_CHECKING:  # the guard is the server's (it imports the request path, not the reverse)
    from .connections import ConnectionGuard

RuntimeFactory = Callable[[ManagedConfig], Runtime]
log = structlog.get_logger("embedding_gateway")


def default_runtime(managed: ManagedConfig) -> Runtime:
    if managed.runtime == "docker":
        from .runtimes.docker import DockerRuntime

        return DockerRuntime(managed)
    from .runtimes.process import ProcessRuntime

    return ProcessRuntime(managed)


def only_soft_changes(old: BackendConfig, new: BackendConfig) -> bool:
    """Do two configs of a backend differ only in what can change under a running instance:
    model aliases, and the managed timeouts and queue bounds? (How an instance is launched,
    which models it serves and how requests reach it restart nothing here only when equal.)"""
    def hard(config: BackendConfig) -> BackendConfig:
        models = {n: attrs.evolve(m, aliases=[]) for n, m in config.models.items()}
        managed = config.managed and attrs.evolve(
            config.managed, idle_timeout=0, max_wait=0, queue_timeout=1, max_queue=1,
            min_loaded=0)
        return attrs.evolve(config, models=models, managed=managed)
    return hard(old) == hard(new)


def build_cache(config: CacheConfig, metrics: Metrics) -> EmbeddingCache:
    tiers: list[Tier] = []
    if config.memory_bytes:
        tiers.append(MemoryTier(config.memory_bytes, metrics))
    if config.redis is not None:
        from .cache_redis import RedisTier

        tiers.append(RedisTier(config.redis, metrics))
    return EmbeddingCache(tiers, metrics, unversioned=config.unversioned)


class RequestCounter:
    """Requests being served (``with counter:`` counts one), so that a shutdown can wait for
    the last one."""

    def __init__(self) -> None:
        self.count = 0
        self.idle = asyncio.Event()
        self.idle.set()

    def __enter__(self) -> None:
        self.count += 1
        self.idle.clear()

    def __exit__(self, *exc_info: object) -> None:
        self.count -= 1
        if self.count == 0:
            self.idle.set()


@dataclass
class Gateway:
    config: GatewayConfig
    metrics: Metrics
    runtime_factory: RuntimeFactory = default_runtime
    client: HttpClient | None = None
    upstreams: dict[str, Upstream] = field(default_factory=dict)
    batchers: dict[str, Batcher] = field(default_factory=dict)
    router: Router | None = None
    cache: EmbeddingCache | None = None
    draining: bool = False
    connections: ConnectionGuard | None = None  # set by the server that guards them (cli)

    def __post_init__(self) -> None:
        self.ledger = DeviceLedger(self.config.gpus)
        self._retiring: set[Upstream] = set()  # leaving after a reload
        self.requests = RequestCounter()

    async def drain(self, timeout: float) -> int:
        """Refuse new work (503 + Retry-After) and wait up to ``timeout`` seconds for the
        requests in flight; those still queued then for a model are answered 503 rather than
        cut off. Returns how many requests were still running when time ran out."""
        self.draining = True
        with suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.requests.idle.wait()
        if self.requests.count:
            for upstream in self.upstreams.values():
                upstream.refuse_waiting("the gateway is shutting down; retry")
            for batcher in self.batchers.values():
                batcher.refuse_waiting("the gateway is shutting down; retry")
        return self.requests.count

    @cached_property
    def owner(self) -> str:
        """This gateway, as its managed instances are labelled: the host and the port it
        serves on (as first configured: a reload does not move the listening socket), the
        same after a restart, different for a second gateway on the machine."""
        return f"{socket.gethostname()}:{self.config.server.port}"

    def build_upstream(self, name: str, backend_config: BackendConfig) -> Upstream:
        assert self.client is not None
        backend = create_backend(name, backend_config, self.client)
        server = self.config.server
        if backend_config.managed is None:
            return RemoteUpstream(
                backend, interval=server.health_interval, probe_timeout=server.health_timeout
            )
        return Supervisor(
            backend,
            self.runtime_factory(backend_config.managed),
            metrics=self.metrics,
            probe_timeout=server.health_timeout,
            ledger=self.ledger,
            check_interval=server.health_interval,
            owner=self.owner,
        )

    async def start(self, client: HttpClient) -> None:
        self.client = client
        self.upstreams = {
            name: self.build_upstream(name, backend)
            for name, backend in self.config.backends.items()
        }
        self.batchers = {name: Batcher(u.backend, self.metrics)
                         for name, u in self.upstreams.items()}
        self.cache = build_cache(self.config.cache, self.metrics)
        self.router = Router(self.config, self.upstreams, self.batchers, self.metrics,
                             self.cache)
        for upstream in self.upstreams.values():
            await upstream.start()

    async def close(self) -> None:
        for upstream in [*self.upstreams.values(), *self._retiring]:
            await upstream.close()
        for batcher in self.batchers.values():
            await batcher.close()
        if self.cache is not None:
            await self.cache.close()

    async def reload(self, new: GatewayConfig) -> None:
        """Apply a validated config without dropping requests: unchanged backends are kept as
        they are; changed and removed ones drain and go (their containers left for the new
        supervisor to adopt); new ones start. Listening address changes need a restart."""
        old_config, old = self.config, self.upstreams
        if (new.server.host, new.server.port) != (old_config.server.host,
                                                  old_config.server.port):
            log.warning("reload_listen_address_unchanged",
                        reason="server.host and server.port apply at the next restart")
        kept = {name: upstream for name, upstream in old.items()
                if new.backends.get(name) == old_config.backends[name]}
        for name, upstream in old.items():  # aliases or timeouts: no restart for those
            backend = new.backends.get(name)
            if (name not in kept and backend is not None
                    and only_soft_changes(old_config.backends[name], backend)):
                upstream.backend.config = backend
                if isinstance(upstream, Supervisor):
                    upstream.reconfigure(backend)
                self.batchers[name].config = backend
                kept[name] = upstream
        retiring = {name: upstream for name, upstream in old.items() if name not in kept}
        self.config = new
        self.ledger.gpus = new.gpus
        fresh = {name: self.build_upstream(name, backend)
                 for name, backend in new.backends.items() if name not in kept}
        self.upstreams = {name: kept.get(name) or fresh[name] for name in new.backends}
        old_batchers = self.batchers
        self.batchers = {name: old_batchers[name] if name in kept
                         else Batcher(self.upstreams[name].backend, self.metrics)
                         for name in new.backends}
        old_cache = self.cache
        if new.cache != old_config.cache or old_cache is None:
            self.cache = build_cache(new.cache, self.metrics)
        self.router = Router(new, self.upstreams, self.batchers, self.metrics, self.cache)
        if old_cache is not None and old_cache is not self.cache:
            await old_cache.close()  # requests holding it finish: its tiers only answer misses

        async def replace(name: str) -> None:
            """A remote successor starts at once; a managed one after its predecessor has
            drained and left (it takes over its ports and adopts its containers)."""
            successor, previous = fresh.get(name), retiring.get(name)
            if successor is not None and not successor.managed:
                await successor.start()
                successor = None
            try:
                if previous is not None:
                    self._retiring.add(previous)  # closed by close() if a stop comes first
                    await previous.retire(new.server.shutdown_timeout, successor=name in fresh)
                    self._retiring.discard(previous)
                    await old_batchers[name].close()  # its calls ended with the drain
            finally:
                if successor is not None:  # even when the retirement failed
                    await successor.start()

        await asyncio.gather(*(replace(name) for name in retiring.keys() | fresh.keys()))
        log.info("reload_applied", kept=sorted(kept), started=sorted(fresh),
                 retired=sorted(retiring))

    async def wait_preloaded(self) -> None:
        await asyncio.gather(*(u.wait_preloaded() for u in self.upstreams.values()))

    def routes(self) -> Router:
        assert self.router is not None, "Gateway.start() has not run"
        return self.router

    def summary(self) -> str:
        """One line for systemd's STATUS=."""
        parts = [f"serving {len(self.routes().routes)} model names"]
        for name, upstream in self.upstreams.items():
            if upstream.managed:
                loaded = [m for m in upstream.backend.config.models
                          if upstream.model_state(m).state == "loaded"]
                parts.append(f"{name}: {', '.join(loaded) + ' loaded' if loaded else 'idle'}")
            elif not upstream.health()["healthy"]:
                parts.append(f"{name}: unhealthy")
        return "; ".join(parts)


GATEWAY = web.AppKey("gateway", Gateway)
LOG_FIELDS = web.RequestKey("log_fields", dict[str, Any])
REQUEST_ID = web.RequestKey("request_id", str)
AUTHORIZED = web.RequestKey("authorized", bool)  # on public paths: did it carry a valid key
