"""``embedding-gateway prefetch``: start each model of each managed backend once, as the
gateway would (same image or command, volumes, args), wait until it serves the right model,
then stop it. Its weights are then in the cache volume, so the gateway's first start of it
is a load, not a download.

It refuses to run while a gateway answers at the config's address: it would start instances
on the same host ports and container names as that gateway's.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import attrs

from ..backends import create_backend
from ..config import BackendConfig, GatewayConfig, ManagedConfig
from ..errors import GatewayError
from ..http_client import HttpClient
from ..metrics import Metrics
from ..runtimes.base import Runtime
from ..supervisor import Supervisor
from .progress import ProgressLine

TICK = 1.0  # seconds between progress lines on a terminal


@dataclass(frozen=True)
class PrefetchResult:
    backend: str
    model: str
    seconds: float
    error: str | None


def one_model(backend: BackendConfig, model: str) -> BackendConfig:
    """``backend`` serving ``model`` only, started on request only, and waited for as long as
    its start may take (a download can outlast ``queue_timeout``)."""
    assert backend.managed is not None
    options = attrs.evolve(backend.models[model], preload=False, pinned=False)
    managed = attrs.evolve(
        backend.managed,
        queue_timeout=max(backend.managed.queue_timeout, backend.managed.start_timeout + 60),
        idle_timeout=0)
    return attrs.evolve(backend, managed=managed, models={model: options})


async def last_log_line(supervisor: Supervisor) -> str:
    for instance in list(supervisor.instances.values()):
        if instance.handle is not None:
            try:
                tail = await supervisor.runtime.logs(instance.handle, 1)
            except Exception:  # the log is decoration; its absence is not a failure
                return ""
            return tail.strip()[-120:]
    return ""


async def prefetch_one(name: str, backend: BackendConfig, model: str, config: GatewayConfig,
                       runtime_factory: Callable[[ManagedConfig], Runtime],
                       client: HttpClient, progress: ProgressLine) -> PrefetchResult:
    backend = one_model(backend, model)
    assert backend.managed is not None
    supervisor = Supervisor(create_backend(name, backend, client),
                            runtime_factory(backend.managed), metrics=Metrics(),
                            probe_timeout=config.server.health_timeout)
    started = time.monotonic()
    error: str | None = None
    try:
        await supervisor.start()
        if supervisor.runtime_error is not None:
            error = supervisor.runtime_error
        else:
            loading = asyncio.create_task(loaded(supervisor, model))
            while not loading.done():
                line = await last_log_line(supervisor)
                progress.show(f"{model}: starting, {time.monotonic() - started:.0f} s"
                              + (f" | {line}" if line else ""), stage=model)
                await asyncio.wait({loading}, timeout=TICK)
            error = loading.result()
    finally:
        await supervisor.close(stop_instances=True)
    return PrefetchResult(name, model, time.monotonic() - started, error)


async def loaded(supervisor: Supervisor, model: str) -> str | None:
    try:
        async with supervisor.lease(model):
            return None
    except GatewayError as exc:
        return exc.message


async def prefetch_all(config: GatewayConfig,
                       runtime_factory: Callable[[ManagedConfig], Runtime]
                       ) -> list[PrefetchResult]:
    progress = ProgressLine()
    results = []
    client = HttpClient()
    try:
        for name, backend in config.backends.items():
            if backend.managed is None:
                continue
            for model in backend.models:
                progress.show(f"{model}: starting on {name} ({backend.managed.runtime})",
                              force=True)
                result = await prefetch_one(name, backend, model, config, runtime_factory,
                                            client, progress)
                verdict = (f"ready after {result.seconds:.1f} s, stopped" if result.error is None
                           else f"failed: {result.error}")
                progress.done(f"{model}: {verdict}")
                results.append(result)
    finally:
        await client.close()
    return results


def summary(results: list[PrefetchResult]) -> tuple[str, int]:
    """The summary lines and the exit status: 0 when every model started."""
    if not results:
        return "no managed backends are configured: nothing to prefetch", 0
    failed = [r for r in results if r.error is not None]
    lines = [f"{r.backend}  {r.model}  "
             + (f"ok ({r.seconds:.1f} s)" if r.error is None else f"FAILED: {r.error}")
             for r in results]
    lines.append(f"{len(results) - len(failed)} prefetched, {len(failed)} failed")
    return "\n".join(lines), 1 if failed else 0
