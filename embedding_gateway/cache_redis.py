"""The shared cache tier: Redis (or Valkey), for several gateways behind one load balancer.

A vector is stored as its raw float32 little-endian bytes under
``prefix + namespace + ":" + digest of the input``, with a TTL. Redis is never in a request's
way: each call is bounded by ``timeout``; a call that fails or is slow counts as a miss (or a
write not made), is counted, and leaves Redis alone for ``retry_after`` seconds; the change
of state is logged once each way. Writes happen in the background, after the response.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import structlog

from .cache import Tier
from .cache_keys import Item, input_digest
from .config import RedisCacheConfig
from .metrics import Metrics

log = structlog.get_logger("embedding_gateway.cache")
MAX_CONNECTIONS = 64
MAX_PENDING_WRITES = 256  # background writes at once; more are dropped, never queued


def redacted(url: str) -> str:
    """The URL without its password, for ``/health`` and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisTier(Tier):
    name = "redis"

    def __init__(self, config: RedisCacheConfig, metrics: Metrics) -> None:
        from redis.asyncio import BlockingConnectionPool, Redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.config = config
        self.metrics = metrics
        pool = BlockingConnectionPool.from_url(
            config.url, max_connections=MAX_CONNECTIONS, timeout=config.timeout,
            socket_timeout=config.timeout, socket_connect_timeout=config.timeout,
            retry=Retry(NoBackoff(), 0),  # a failed call is a miss, not a wait
        )
        self.client = Redis(connection_pool=pool)
        self.prefix = config.prefix.encode()
        self.up = True
        self.since = time.time()
        self.changed_at = time.monotonic()  # calls begun before the last change say nothing
        self.retry_at = 0.0
        self.errors = 0
        self.last_error: str | None = None
        self._writes: set[asyncio.Task[None]] = set()

    def _keys(self, namespace: str, items: Sequence[Item]) -> list[bytes]:
        head = self.prefix + namespace.encode() + b":"
        return [head + input_digest(item).hex().encode() for item in items]

    def _usable(self) -> bool:
        return self.up or time.monotonic() >= self.retry_at

    def _failed(self, model: str, exc: BaseException, began: float) -> None:
        self.errors += 1
        self.metrics.cache_redis_error(model=model)
        self.retry_at = time.monotonic() + self.config.retry_after
        self.last_error = str(exc) or exc.__class__.__name__
        if self.up and began >= self.changed_at:
            self.up, self.since, self.changed_at = False, time.time(), time.monotonic()
            log.warning("cache_redis_down", url=redacted(self.config.url),
                        reason=self.last_error, retry_after=self.config.retry_after)

    def _worked(self, began: float) -> None:
        if not self.up and began >= self.changed_at:
            self.up, self.since, self.changed_at = True, time.time(), time.monotonic()
            log.info("cache_redis_up", url=redacted(self.config.url))

    async def get(self, model: str, namespace: str,
                  items: Sequence[Item]) -> list[np.ndarray | None]:
        if not self._usable():
            return [None] * len(items)
        from redis.exceptions import RedisError

        began = time.monotonic()
        try:
            async with asyncio.timeout(self.config.timeout):
                values = await self.client.mget(self._keys(namespace, items))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(model, exc, began)
            return [None] * len(items)
        self._worked(began)
        return [np.frombuffer(value, dtype="<f4") if value and len(value) % 4 == 0 else None
                for value in values]

    def put(self, model: str, namespace: str, items: Sequence[Item],
            vectors: Sequence[np.ndarray]) -> None:
        if not self._usable() or len(self._writes) >= MAX_PENDING_WRITES:
            return
        values = [np.ascontiguousarray(v, dtype="<f4").tobytes() for v in vectors]
        task = asyncio.create_task(self._write(model, self._keys(namespace, items), values))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, model: str, keys: list[bytes], values: list[bytes]) -> None:
        from redis.exceptions import RedisError

        ttl = round(self.config.ttl * 1000) or None  # milliseconds; 0: no expiry
        began = time.monotonic()
        try:
            async with asyncio.timeout(self.config.timeout):
                pipe = self.client.pipeline(transaction=False)
                for key, value in zip(keys, values, strict=True):
                    pipe.set(key, value, px=ttl)
                await pipe.execute()
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(model, exc, began)
        else:
            self._worked(began)

    def state(self) -> dict[str, Any]:
        return {"state": "up" if self.up else "down", "since": self.since,
                "url": redacted(self.config.url), "ttl": self.config.ttl,
                "errors": self.errors, "last_error": self.last_error}

    async def close(self) -> None:
        if self._writes:  # the last few writes, within the call bound
            await asyncio.wait(self._writes, timeout=self.config.timeout)
        for task in list(self._writes):
            task.cancel()
        await asyncio.gather(*self._writes, return_exceptions=True)
        await self.client.aclose()
        await self.client.connection_pool.disconnect()
