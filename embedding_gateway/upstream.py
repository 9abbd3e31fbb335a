"""Where a backend's requests go: the seam between the router and lifecycle.

The router only ever asks an ``Upstream`` for a lease on a model: an async context that
yields a base URL verified to serve that model, and holds the instance open until the
request is done. ``RemoteUpstream`` (this module) proxies to a fixed ``base_url`` and checks
it in the background; the supervisor provides the managed kind.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from .backends.base import Backend, Probe, ServedIdentity
from .errors import GatewayError, Unavailable, UpstreamFailed, UpstreamTimeout

log = structlog.get_logger("embedding_gateway.upstream")


def _state_of(probe: Probe) -> tuple[bool, str | None, tuple[str, ...]]:
    """What a change of is worth a log line: reachability, and which models are not served."""
    return (probe.reachable, probe.reason if not probe.reachable else None,
            tuple(sorted({**probe.absent, **probe.mismatch})))


@dataclass
class ModelState:
    """What ``/v1/models`` and ``/health`` say about one model."""

    state: str  # remote | loaded | loading | idle | failed | draining
    healthy: bool
    reason: str | None = None
    since: float | None = None  # unix time the state began
    instance: str | None = None
    last_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Upstream(ABC):
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.name = backend.name
        self.managed = backend.config.managed is not None
        self.closed = False

    @abstractmethod
    async def start(self) -> None:
        """Begin background work (health checks, preloads, adoption)."""

    @abstractmethod
    async def close(self) -> None:
        """Stop background work and release what it holds."""

    @abstractmethod
    def lease(self, model: str) -> AbstractAsyncContextManager[str]:
        """A base URL serving ``model`` for the duration of one request."""

    @abstractmethod
    async def retire(self, drain_timeout: float, *, successor: bool) -> None:
        """Leave service after a reload: let in-flight requests finish (bounded), then close.
        With a ``successor`` (the backend changed) managed containers are left running for it
        to adopt; without one (the backend was removed) they are stopped."""

    def refuse_waiting(self, reason: str) -> None:  # noqa: B027 - only queues have waiters
        """Answer every request still queued with a retryable 503 (shutdown, reload)."""

    @abstractmethod
    async def wait_preloaded(self) -> None:
        """Return once the models marked ``preload`` are loaded (or failed to)."""

    @abstractmethod
    def model_state(self, model: str) -> ModelState: ...

    @abstractmethod
    def health(self) -> dict[str, Any]:
        """``{"kind", "managed", "healthy", "reason", …}`` for ``/health``."""

    def discovered(self) -> set[str]:
        """Models the upstream offers beyond the configured ones (Ollama ``discover: true``)."""
        return set()

    @abstractmethod
    def identity(self, served: str) -> ServedIdentity | None:
        """What the upstream serving ``served`` reported at its last check (the weights' name
        and revision), if it is reachable and reported it."""

    @property
    def can_serve(self) -> bool:
        models = self.backend.config.models
        return any(self.model_state(m).healthy for m in models) or bool(self.discovered())


class RemoteUpstream(Upstream):
    """A fixed ``base_url``, probed in the background and re-probed on demand."""

    def __init__(self, backend: Backend, *, interval: float, probe_timeout: float) -> None:
        super().__init__(backend)
        self.base_url = backend.config.base_url
        self.interval = interval
        self.probe_timeout = probe_timeout
        self._probe: Probe | None = None
        self._checked_at: float | None = None
        self._since = time.time()
        self._refreshing: asyncio.Task[Probe] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._preload: asyncio.Task[None] | None = None
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> None:
        if self.closed:  # closed before it was started (a stop during a reload)
            return
        self._loop_task = asyncio.create_task(self._probe_loop(), name=f"probe-{self.name}")
        self._preload = asyncio.create_task(self._run_preloads())

    async def _run_preloads(self) -> None:
        """Ollama loads on demand; ``preload`` asks it to load now (an empty ``/api/embed``)."""
        for model, opts in self.backend.config.models.items():
            if opts.preload:
                try:
                    await self.backend.preload(self.base_url, model, opts)
                    log.info("model_preloaded", backend=self.name, model=model)
                except GatewayError as exc:
                    log.warning("preload_failed", backend=self.name, model=model,
                                reason=exc.message)

    async def wait_preloaded(self) -> None:
        if self._preload is not None:
            await asyncio.shield(self._preload)

    async def retire(self, drain_timeout: float, *, successor: bool) -> None:
        with suppress(TimeoutError):
            async with asyncio.timeout(drain_timeout):
                await self._idle.wait()
        await self.close()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in (self._loop_task, self._refreshing, self._preload):
            if task is not None:
                task.cancel()
                with suppress(asyncio.CancelledError, GatewayError):
                    await task

    async def _probe_loop(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self.interval)

    async def _run_probe(self) -> Probe:
        try:
            probe = await asyncio.wait_for(
                self.backend.probe(self.base_url, self.probe_timeout), self.probe_timeout
            )
        except TimeoutError:
            reason = f"no answer within {self.probe_timeout:g} s"
            probe = Probe(reachable=False, reason=reason, error=UpstreamTimeout(reason))
        except GatewayError as exc:
            probe = Probe(reachable=False, reason=exc.message, error=exc)
        except Exception as exc:  # a check must never end the checking; say what happened
            log.exception("probe_error", backend=self.name)
            reason = f"the check failed unexpectedly: {exc.__class__.__name__}"
            probe = Probe(reachable=False, reason=reason, error=UpstreamFailed(reason))
        previous = self._probe
        if previous is None or previous.reachable != probe.reachable:
            self._since = time.time()
        if previous is None or _state_of(previous) != _state_of(probe):
            # once per change, the first check included: a backend down from the start, or
            # serving something else, is in the log with the reason
            problems = {**probe.absent, **probe.mismatch}
            log.log(logging.INFO if probe.reachable and not problems else logging.WARNING,
                    "backend_health", backend=self.name,
                    healthy=probe.reachable and not problems,
                    reason=probe.reason or "; ".join(f"{m}: {why}" for m, why in
                                                     problems.items()) or None)
        self._probe, self._checked_at = probe, time.time()
        return probe

    async def refresh(self) -> Probe:
        """Probe now; concurrent callers share one probe. A caller's cancellation (a client
        that went away) does not cancel the probe others wait on; a probe cancelled because
        this upstream closed (a reload) answers its callers with a retryable 503."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._run_probe())
        probe = self._refreshing
        try:
            return await asyncio.shield(probe)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if probe.cancelled() and not (current is not None and current.cancelling()):
                raise Unavailable(f"backend {self.name!r} was reconfigured; retry",
                                  retry_after=1) from None
            raise

    def _blocker(self, model: str) -> str | None:
        """Why a request for ``model`` must not be sent now, if it must not."""
        probe = self._probe
        if probe is None:
            return "not checked yet"
        if not probe.reachable:
            return probe.reason or "unreachable"
        return probe.mismatch.get(model)

    def _problem(self, model: str) -> str | None:
        probe = self._probe
        return self._blocker(model) or (probe.absent.get(model) if probe else None)

    def _refusal(self, model: str, problem: str) -> GatewayError:
        """Unreachable upstreams answer as a failed call would (502, or 504 for a probe that
        timed out); a wrong served model is 503 + Retry-After: never vectors from it."""
        message = f"model {model!r} on backend {self.name!r} is unavailable: {problem}"
        error = self._probe.error if self._probe is not None else None
        if isinstance(error, UpstreamTimeout):
            return UpstreamTimeout(message)
        if error is not None and not isinstance(error, Unavailable):
            return UpstreamFailed(message)
        return Unavailable(message)

    @asynccontextmanager
    async def lease(self, model: str) -> AsyncIterator[str]:
        self._inflight += 1  # counted from here, so that a retirement waits for it
        self._idle.clear()
        try:
            if self._problem(model) is not None:
                await self.refresh()
            problem = self._blocker(model)
            if problem is not None:
                raise self._refusal(model, problem)
            yield self.base_url
        except UpstreamFailed as exc:
            if exc.code == "model_mismatch" and self._probe is not None:
                self._probe.mismatch[model] = exc.message
            elif exc.upstream_kind == "refused" and self._probe is not None:
                # unreachable now: the next request checks again before it is sent; a 5xx
                # for one request says nothing of the next one
                probe = self._probe
                if probe.reachable:
                    log.warning("backend_health", backend=self.name, healthy=False,
                                reason=exc.message)
                    self._since = time.time()
                probe.reachable, probe.reason, probe.error = False, exc.message, exc
            raise
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    def discovered(self) -> set[str]:
        probe = self._probe
        return probe.discovered if probe is not None and probe.reachable else set()

    def identity(self, served: str) -> ServedIdentity | None:
        probe = self._probe
        if probe is None or not probe.reachable:
            return None
        return probe.identities.get(self.backend.identity_key(served))

    def model_state(self, model: str) -> ModelState:
        problem = self._problem(model)
        return ModelState(
            state="remote", healthy=problem is None, reason=problem, since=self._since
        )

    def health(self) -> dict[str, Any]:
        probe = self._probe
        if probe is None or not probe.reachable:
            reason: str | None = self._problem("")
        elif probe.mismatch or probe.absent:
            problems = {**probe.absent, **probe.mismatch}
            reason = "; ".join(f"{m}: {why}" for m, why in problems.items())
        else:
            reason = None
        return {
            "kind": self.backend.config.kind,
            "managed": False,
            "healthy": reason is None,
            "reason": reason,
            "checked_at": self._checked_at,
            "models": {m: self.model_state(m).as_dict() for m in self.backend.config.models},
            "limits": self.backend.limits,
        }
