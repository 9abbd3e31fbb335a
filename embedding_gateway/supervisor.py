"""Managed instances of one backend: start, health-wait, verify, serve, drain, swap, stop, adopt.

States: ``stopped → starting → ready → draining → stopping`` and ``failed`` (with a reason).
Handlers never look at a state and act on it: they ``lease(model)`` and await. Every decision
is taken in ``_schedule`` (synchronous, so nothing interleaves with it), using the pure
functions in ``policy``; the slow work it decides on (start, health wait, stop) runs in tasks
the supervisor owns, so a client that disconnects never cancels a start or a swap.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import structlog

from . import policy
from .backends.base import Backend, ServedIdentity, served_name, upstream_name
from .config import BackendConfig, ModelConfig
from .errors import (
    GatewayError,
    QueueFull,
    RuntimeStartError,
    Unavailable,
    UpstreamFailed,
    UpstreamTimeout,
)
from .instances import DeviceLedger, Instance, Slots, Waiter, granted
from .metrics import Metrics
from .runtimes.base import FoundInstance, InstanceSpec, Runtime
from .upstream import ModelState, Upstream

log = structlog.get_logger("embedding_gateway.supervisor")

# health polling while an instance starts: every 20 ms for the first 2 s (a small model is up
# in a fraction of a second), then backing off to once a second (a big one takes minutes)
FAST_POLL, FAST_PHASE, MAX_POLL = 0.02, 2.0, 1.0
CANCELLED_START_WAIT = 60.0  # how long a cancelled start waits for the runtime to finish
# seconds before a model that failed to start is tried again; doubled after each failure
BACKOFF_FIRST, BACKOFF_MAX = 2.0, 300.0


class Supervisor(Upstream):
    def __init__(
        self,
        backend: Backend,
        runtime: Runtime,
        *,
        metrics: Metrics,
        probe_timeout: float,
        ledger: DeviceLedger | None = None,
        check_interval: float = 10.0,
        owner: str = "",
    ) -> None:
        super().__init__(backend)
        self.owner = owner  # this gateway, as its instances are labelled: host and port
        assert backend.config.managed is not None
        self.cfg = backend.config.managed
        self.runtime = runtime
        self.metrics = metrics
        self._stops: set[asyncio.Task[None]] = set()
        self.probe_timeout = probe_timeout
        self.check_interval = check_interval
        self.ledger = ledger or DeviceLedger({})
        self.ledger.supervisors.append(self)
        self.instances: dict[str, Instance] = {}
        self.waiters: list[Waiter] = []
        self.last_error: dict[str, tuple[float, str]] = {}
        # model -> (starts failed in a row, monotonic time before which none is tried)
        self._start_failures: dict[str, tuple[int, float]] = {}
        self._swaps: dict[str, tuple[float, list[str]]] = {}  # model -> (began, models it replaces)
        self.runtime_error: str | None = None  # why no instance can be started now
        self._tasks: set[asyncio.Task[Any]] = set()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._preloads: list[asyncio.Task[None]] = []
        self.slots = Slots(backend.config.base_url, self.cfg)

    def reconfigure(self, config: BackendConfig) -> None:
        """Take a config that differs only in aliases, timeouts and queue bounds (see
        ``state.only_soft_changes``): the running instances stay as they are."""
        assert config.managed is not None
        self.cfg = config.managed
        self._wake.set()

    # -- what handlers call ------------------------------------------------------------

    @asynccontextmanager
    async def lease(self, model: str) -> AsyncIterator[str]:
        instance = self._fast_path(model)
        if instance is None:
            instance = await self._wait_for(model)
        try:
            yield instance.base_url
        except (UpstreamFailed, UpstreamTimeout) as exc:  # not the upstream's "bad input"
            if await self._died(instance):
                raise Unavailable(
                    f"the instance serving {model!r} exited; the next request starts it again",
                    retry_after=1,
                ) from exc
            raise
        finally:
            instance.inflight -= 1
            instance.last_used = time.monotonic()
            self._wake.set()

    def _fast_path(self, model: str) -> Instance | None:
        """A ready (not draining) instance of ``model``, with the lease taken."""
        for instance in self.instances.values():
            if instance.model == model and instance.state == "ready":
                instance.inflight += 1
                return instance
        return None

    async def _wait_for(self, model: str) -> Instance:
        if len(self.waiters) >= self.cfg.max_queue:
            raise QueueFull(
                f"backend {self.name!r} has {len(self.waiters)} requests queued (max_queue "
                f"{self.cfg.max_queue}); retry shortly",
                retry_after=max(1.0, self.cfg.max_wait),
            )
        waiter = Waiter(model, asyncio.get_running_loop().create_future(), time.monotonic())
        self.waiters.append(waiter)
        self.metrics.set_queue_depth(backend=self.name, depth=len(self.waiters))
        self._wake.set()
        try:
            async with asyncio.timeout(self.cfg.queue_timeout):
                instance = await asyncio.shield(waiter.future)
        except TimeoutError:
            given = granted(waiter)
            if given is None:
                raise Unavailable(
                    f"model {model!r} was not ready within queue_timeout "
                    f"({self.cfg.queue_timeout:g} s); retry later",
                    retry_after=min(30.0, self.cfg.queue_timeout),
                ) from None
            instance = given  # granted just as the timeout fired: serve it
        except asyncio.CancelledError:
            given = granted(waiter)
            if given is not None:  # granted just as the client left
                given.inflight -= 1
                self._wake.set()
            raise
        finally:
            if waiter in self.waiters:
                self.waiters.remove(waiter)
            self.metrics.set_queue_depth(backend=self.name, depth=len(self.waiters))
        self.metrics.observe_queue_wait(
            backend=self.name, model=model, seconds=time.monotonic() - waiter.enqueued
        )
        return instance

    # -- the one place decisions are made ---------------------------------------------

    def views(self) -> list[policy.InstanceView]:
        views = []
        for i in self.instances.values():
            opts = self.backend.config.models.get(i.model) or ModelConfig()
            views.append(policy.InstanceView(
                instance=i.id, model=i.model, state=i.state, inflight=i.inflight,
                last_used=i.last_used, ready_since=i.ready_since, pinned=opts.pinned,
                memory_gb=opts.memory_gb or 0.0, gpu=opts.gpu,
            ))
        return views

    def has_waiters(self, model: str) -> bool:
        return any(w.model == model for w in self.waiters)

    def _used_slots(self) -> set[int]:
        return {i.slot for i in self.instances.values()}

    def _has_free_slot(self) -> bool:
        return len(self.instances) < self.cfg.max_instances

    def _schedule(self) -> None:
        now = time.monotonic()
        self._grant_ready()
        for model in self.ledger.claimed(self):
            if not self.has_waiters(model):  # they timed out or went away
                self.ledger.release(self, model)
        oldest: dict[str, float] = {}
        for w in self.waiters:
            oldest.setdefault(w.model, w.enqueued)
        for model in policy.queue_order(oldest):
            if any(i.model == model for i in self.instances.values()):
                continue  # starting, or ready but held for another group; wait
            backoff = self._backing_off(model, now)
            if backoff is not None:
                self._fail_waiters(model, backoff)
                continue
            reason = self._never_fits(model)
            if reason is not None:
                self._fail_waiters(model, Unavailable(
                    f"model {model!r} cannot be loaded: {reason}", retry_after=30))
                continue
            if not self._make_room(model, waited=now - oldest[model], now=now):
                break  # the oldest group waits for room; later groups wait behind it
            self._start(model)
        for view in self.views():
            if policy.idle_expired(view, now, self.cfg.idle_timeout):
                log.info("instance_idle_unload", backend=self.name, instance=view.instance)
                self._retire(self.instances[view.instance])
        for instance in list(self.instances.values()):
            if instance.state == "draining" and instance.inflight == 0:
                self._stop(instance)

    def _grant_ready(self) -> None:
        """Hand every waiter whose model is ready its instance, all of a group together."""
        for waiter in list(self.waiters):
            for instance in self.instances.values():
                if instance.model == waiter.model and instance.state == "ready":
                    if not waiter.future.done():
                        instance.inflight += 1
                        waiter.future.set_result(instance)
                    self.waiters.remove(waiter)
                    break

    def _backing_off(self, model: str, now: float) -> Unavailable | None:
        """A model whose last starts failed is not started again by every request: after
        each failure in a row the wait doubles (BACKOFF_FIRST up to BACKOFF_MAX)."""
        failures, retry_at = self._start_failures.get(model, (0, 0.0))
        if now >= retry_at:
            return None
        error = self.last_error.get(model, (0.0, "it failed"))[1]
        return Unavailable(
            f"model {model!r} failed to start {failures} time(s) in a row (last: {error}); "
            f"the next try is in {retry_at - now:.0f} s", retry_after=retry_at - now)

    def _never_fits(self, model: str) -> str | None:
        """Why ``model`` cannot be loaded whatever is evicted, if so (pinned models stay)."""
        pinned = [v for v in self.views() if v.pinned]
        if len(pinned) >= self.cfg.max_instances:
            return f"all {self.cfg.max_instances} instance slots hold pinned models"
        opts = self.backend.config.models[model]
        budget, need = self.ledger.budget(opts.gpu), opts.memory_gb or 0.0
        if budget is None or need == 0:
            return None
        held = sum(v.memory_gb for _, v in self.ledger.views() if v.pinned and v.gpu == opts.gpu)
        if held + need <= budget:
            return None
        by_pinned = f", {held:g} GB of it held by pinned models" if held else ""
        return f"it needs {need:g} GB on gpu {opts.gpu!r}, which has {budget:g} GB{by_pinned}"

    def _fail_waiters(self, model: str | None, error: GatewayError) -> None:
        """Answer the requests queued for ``model`` (for every model: ``None``) with ``error``."""
        for waiter in [w for w in self.waiters if model is None or w.model == model]:
            if not waiter.future.done():
                waiter.future.set_exception(error)
            self.waiters.remove(waiter)

    def _make_room(self, model: str, *, waited: float, now: float) -> bool:
        opts = self.backend.config.models[model]
        ledger_views = self.ledger.views(claimant=(self, model))
        shortfall = policy.memory_shortfall(
            self.ledger.budget(opts.gpu), [v for _, v in ledger_views], opts.gpu,
            opts.memory_gb or 0.0,
        )
        slots_needed = 0 if self._has_free_slot() else 1
        if slots_needed == 0 and shortfall <= 0:
            return True
        if any(i.state in ("draining", "stopping") for i in self.instances.values()):
            return False  # room is already being made
        if shortfall > 0 and any(v.gpu == opts.gpu and v.state in ("draining", "stopping")
                                 for _, v in ledger_views):
            return False  # memory on this device is already being freed, maybe by another
        # this backend's instances, and another backend's only when memory is short
        owners = {v.instance: owner for owner, v in ledger_views
                  if (owner is self or shortfall > 0)
                  and policy.evictable(v, now, owner.cfg.min_loaded)
                  and policy.may_displace(v, waited=waited, max_wait=self.cfg.max_wait,
                                          has_waiters=owner.has_waiters(v.model))}
        candidates = [v for _, v in ledger_views if v.instance in owners]
        victims = policy.choose_victims(candidates, slots_needed=slots_needed,
                                        memory_needed=shortfall, gpu=opts.gpu)
        if victims is None:
            return False
        for victim in victims:
            owner = owners[victim.instance]
            owner._retire(owner.instances[victim.instance])
        if shortfall > 0:
            self.ledger.claim(self, model, opts.gpu, opts.memory_gb or 0.0)
        self._swaps.setdefault(model, (now, [v.model for v in victims]))
        return False  # room comes when the victims have drained and stopped

    def _retire(self, instance: Instance) -> None:
        if instance.state == "ready":
            instance.state, instance.since = "draining", time.time()
            self._publish(instance.model, "draining")
            self._wake.set()

    # -- slow work, in tasks the supervisor owns ------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start(self, model: str) -> None:
        self.ledger.release(self, model)  # the instance itself holds the memory from now on
        slot = self.slots.free(self._used_slots())
        port = self.slots.port(slot)
        instance = Instance(f"{self.name}-{slot}", slot, model, port, self.slots.url(port))
        self.instances[instance.id] = instance
        self._publish(model, "loading")
        log.info("instance_starting", backend=self.name, model=model, instance=instance.id,
                 port=port)
        self._spawn(self._run_start(instance))

    def _spec(self, instance: Instance) -> InstanceSpec:
        opts = self.backend.config.models[instance.model]
        return InstanceSpec(
            backend=self.name, model=instance.model,
            model_arg=upstream_name(instance.model, opts), instance=instance.id,
            host_port=instance.port, managed=self.cfg, owner=self.owner,
        )

    async def _run_start(self, instance: Instance) -> None:
        started = time.monotonic()
        # The runtime's start runs on (a Docker call in a thread finishes even if its waiter
        # is cancelled); a cancelled start waits for it, bounded, to stop what it started.
        starting = asyncio.ensure_future(self.runtime.start(self._spec(instance)))
        try:
            instance.handle = await asyncio.shield(starting)
            await self._wait_healthy(instance, started + self.cfg.start_timeout)
        except (RuntimeStartError, GatewayError, OSError) as exc:
            await self._start_failed(instance, str(exc))
            return
        except asyncio.CancelledError:
            if instance.handle is None:
                with suppress(Exception):
                    instance.handle = await asyncio.wait_for(starting, CANCELLED_START_WAIT)
            await self._discard(instance)
            raise
        except Exception as exc:  # a bug must not leave the instance "starting" forever
            log.exception("instance_start_error", backend=self.name, instance=instance.id)
            await self._start_failed(instance, f"unexpected error: {exc.__class__.__name__}")
            return
        instance.state, instance.since = "ready", time.time()
        instance.ready_since = instance.last_used = time.monotonic()
        self.last_error.pop(instance.model, None)
        self._start_failures.pop(instance.model, None)
        seconds = time.monotonic() - started
        self._publish(instance.model, "loaded")
        log.info("instance_ready", backend=self.name, model=instance.model,
                 instance=instance.id, seconds=round(seconds, 3))
        swap = self._swaps.pop(instance.model, None)
        if swap is not None:
            began, replaced = swap
            total = time.monotonic() - began
            self.metrics.observe_swap(backend=self.name, seconds=total)
            log.info("swap_done", backend=self.name, model=instance.model, replaced=replaced,
                     seconds=round(total, 3), drain_and_stop_seconds=round(total - seconds, 3),
                     start_seconds=round(seconds, 3))
        self._wake.set()

    async def _wait_healthy(self, instance: Instance, deadline: float) -> None:
        """Poll until the upstream answers and serves the right model, the instance dies, or
        ``start_timeout`` passes."""
        assert instance.handle is not None
        expected = served_name(instance.model, self.backend.config.models[instance.model])
        delay, fast_until = FAST_POLL, time.monotonic() + FAST_PHASE
        while True:
            if not await self.runtime.is_alive(instance.handle):
                how = await self.runtime.exit_status(instance.handle) or "exited"
                lines = await self.runtime.logs(instance.handle)
                raise RuntimeStartError(f"the instance {how} while starting; last log lines:\n"
                                        f"{lines}")
            try:
                probe = await self.backend.probe(instance.base_url, self.probe_timeout)
            except GatewayError:
                probe = None
            if probe is not None:
                if not await self.runtime.is_alive(instance.handle):
                    continue  # what answered is not this instance: it is gone (see above)
                if await self.runtime.listens(instance.handle) is False:
                    raise RuntimeStartError(
                        f"port {instance.port} is answered by a program this gateway did not "
                        "start (it took the port after the check before the start); stop it, "
                        "or move this backend")
                if expected in probe.served:
                    instance.identities = probe.identities
                    return
                raise RuntimeStartError(
                    f"the instance serves the wrong model: {probe.mismatch.get(instance.model)}"
                )
            if time.monotonic() + delay > deadline:
                lines = await self.runtime.logs(instance.handle)
                raise RuntimeStartError(
                    f"not healthy within start_timeout ({self.cfg.start_timeout:g} s); last "
                    f"log lines:\n{lines}"
                )
            await asyncio.sleep(delay)
            if time.monotonic() > fast_until:
                delay = min(MAX_POLL, delay * 1.5)

    async def _start_failed(self, instance: Instance, reason: str) -> None:
        self._swaps.pop(instance.model, None)
        log.error("instance_failed", backend=self.name, model=instance.model,
                  instance=instance.id, reason=reason,
                  failures=self._start_failures.get(instance.model, (0, 0.0))[0] + 1)
        failures = self._start_failures.get(instance.model, (0, 0.0))[0] + 1
        wait = min(BACKOFF_FIRST * 2 ** (failures - 1), BACKOFF_MAX)
        self._start_failures[instance.model] = (failures, time.monotonic() + wait)
        self.last_error[instance.model] = (time.time(), reason)
        self._publish(instance.model, "failed")
        await self._discard(instance)
        self._fail_waiters(instance.model, Unavailable(
            f"model {instance.model!r} could not be started: {reason}", retry_after=wait))
        self._wake.set()

    async def _discard(self, instance: Instance) -> None:
        if instance.handle is not None:
            with suppress(Exception):
                await self.runtime.stop(instance.handle, self.cfg.stop_timeout)
        self.instances.pop(instance.id, None)

    def _stop(self, instance: Instance) -> None:
        instance.state, instance.since = "stopping", time.time()
        task = asyncio.create_task(self._run_stop(instance))
        self._stops.add(task)  # never cancelled: close() waits for it instead
        task.add_done_callback(self._stops.discard)

    async def _run_stop(self, instance: Instance) -> None:
        started = time.monotonic()
        await self._discard(instance)
        self._publish(instance.model, "idle")
        log.info("instance_stopped", backend=self.name, model=instance.model,
                 instance=instance.id, seconds=round(time.monotonic() - started, 3))
        for supervisor in self.ledger.supervisors:  # the freed memory may be another's wait
            supervisor._wake.set()

    def _publish(self, model: str, state: str) -> None:
        self.metrics.set_instance_state(backend=self.name, model=model, state=state)

    # -- lifetime ---------------------------------------------------------------------

    async def _loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                self._schedule()
            except Exception:  # a bug must not stop scheduling for good; log it, go on
                log.exception("schedule_error", backend=self.name)
            with suppress(TimeoutError):
                async with asyncio.timeout(0.25):  # timers: fairness, min_loaded, idle
                    await self._wake.wait()

    async def _died(self, instance: Instance) -> bool:
        """Whether a serving instance has exited. A dead one takes no more leases and is
        stopped, and its slot freed, once the requests holding it are done: its port is not
        given to another model while a request may still send to it."""
        if instance.dead:
            return True
        if instance.state not in ("ready", "draining") or instance.handle is None:
            return False
        try:
            if await self.runtime.is_alive(instance.handle):
                return False
        except RuntimeStartError as exc:  # cannot tell: a daemon hiccup is not a death
            log.warning("instance_state_unknown", backend=self.name, instance=instance.id,
                        reason=str(exc))
            return False
        if instance.dead or instance.state not in ("ready", "draining"):
            return instance.dead  # noticed meanwhile, or stopped on purpose
        instance.dead = True
        instance.state, instance.since = "draining", time.time()
        how, lines = "exited", ""
        with suppress(RuntimeStartError):
            how = await self.runtime.exit_status(instance.handle) or how
            lines = await self.runtime.logs(instance.handle)
        log.warning("instance_died", backend=self.name, instance=instance.id,
                    model=instance.model, how=how, last_lines=lines)
        self.last_error[instance.model] = (time.time(), f"the instance {how}")
        self._publish(instance.model, "draining")
        self._wake.set()  # _schedule stops it when its last lease is released
        return True

    async def _check_dead(self) -> None:
        """Notice instances killed from outside even when no request reaches them."""
        while True:
            await asyncio.sleep(1.0)
            for instance in list(self.instances.values()):
                await self._died(instance)

    async def _check_startable(self) -> None:
        """Ask the runtime whether an instance could start (engine, image, command)."""
        reason = await self.runtime.preflight(self.cfg)
        if reason != self.runtime_error:
            if reason is None:
                log.info("runtime_startable", backend=self.name)
            else:
                log.error("runtime_not_startable", backend=self.name, reason=reason)
        self.runtime_error = reason

    async def _watch_startable(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval)
            await self._check_startable()

    async def start(self) -> None:
        if self.closed:  # closed before it was started (a stop during a reload)
            return
        await self._check_startable()
        await self._adopt()
        self._loop_task = asyncio.create_task(self._loop(), name=f"supervisor-{self.name}")
        self._spawn(self._check_dead())
        self._spawn(self._watch_startable())
        for model, opts in self.backend.config.models.items():
            if opts.preload or opts.pinned:
                self._preloads.append(asyncio.create_task(self._preload(model)))

    async def _preload(self, model: str) -> None:
        """Load ``model`` and return when it is loaded or has failed: a wait in the queue that
        ends (``queue_timeout``) while it is still loading is waited again."""
        while True:
            try:
                async with self.lease(model):
                    return
            except GatewayError:
                if self.model_state(model).state != "loading":
                    return

    async def wait_preloaded(self) -> None:
        await asyncio.gather(*self._preloads, return_exceptions=True)

    async def _adopt(self) -> None:
        """Reuse healthy instances an earlier run of this gateway (or the predecessor of a
        reload) left serving configured models with the current spec; remove the rest.
        Another gateway's instances are not seen: they are neither adopted nor removed."""
        try:
            found = await self.runtime.find_existing(self.name, self.owner)
        except RuntimeStartError as exc:
            self.runtime_error = str(exc)
            log.error("runtime_unavailable", backend=self.name, reason=str(exc))
            return
        for item in found:
            instance, why_not = await self._adoptable(item)
            if instance is not None:
                instance.ready_since = time.monotonic()
                self.instances[instance.id] = instance
                self._publish(item.model, "loaded")
                log.info("instance_adopted", backend=self.name, model=item.model,
                         instance=instance.id)
                continue
            log.info("instance_stray_removed", backend=self.name, instance=item.instance,
                     model=item.model, reason=why_not)
            with suppress(RuntimeStartError):
                await self.runtime.remove(item)

    async def _adoptable(self, item: FoundInstance) -> tuple[Instance | None, str]:
        """The instance to adopt for ``item``, or why it is not adoptable."""
        models = self.backend.config.models
        if not item.running:
            return None, "not running"
        if item.model not in models:
            return None, "model not configured"
        if any(i.model == item.model for i in self.instances.values()):
            return None, "model already served"
        slot = None if item.host_port is None else self.slots.at_port(
            item.host_port, self._used_slots())
        if item.host_port is None or slot is None:
            return None, "port outside this backend's slots"
        instance = Instance(f"{self.name}-{slot}", slot, item.model, item.host_port,
                            self.slots.url(item.host_port), state="ready")
        spec = self._spec(instance)
        if item.fingerprint != self.runtime.fingerprint(spec):
            return None, "started with another spec (image, args, env, volumes or gpus)"
        try:
            probe = await self.backend.probe(instance.base_url, self.probe_timeout)
        except GatewayError as exc:
            return None, f"not healthy: {exc.message}"
        if served_name(item.model, models[item.model]) not in probe.served:
            return None, "serves another model"
        instance.identities = probe.identities
        try:
            instance.handle = await self.runtime.adopt(item, spec)
        except RuntimeStartError as exc:
            return None, str(exc)
        return instance, ""

    async def retire(self, drain_timeout: float, *, successor: bool) -> None:
        with suppress(TimeoutError):
            async with asyncio.timeout(drain_timeout):
                while any(i.inflight for i in self.instances.values()):  # noqa: ASYNC110 - bounded poll
                    await asyncio.sleep(0.05)
        self.refuse_waiting(f"backend {self.name!r} was reconfigured; retry")
        await self.close(stop_instances=not successor or self.cfg.runtime == "process")

    def refuse_waiting(self, reason: str) -> None:
        self._fail_waiters(None, Unavailable(reason, retry_after=1))

    async def close(self, *, stop_instances: bool | None = None) -> None:
        """Stop background work; stop the instances per ``on_shutdown`` unless told."""
        if self.closed:
            return
        self.closed = True
        if stop_instances is None:
            stop_instances = self.cfg.on_shutdown == "stop" or self.cfg.runtime == "process"
        tasks = [*self._preloads, *self._tasks]
        if self._loop_task is not None:
            tasks.append(self._loop_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._stops, return_exceptions=True)
        self.refuse_waiting("the gateway is shutting down; retry")
        if stop_instances:
            await asyncio.gather(*(self._discard(i) for i in list(self.instances.values())))
        await self.runtime.close()
        for model in self.ledger.claimed(self):
            self.ledger.release(self, model)
        self.ledger.supervisors.remove(self)

    # -- what /health and /v1/models show ---------------------------------------------

    def identity(self, served: str) -> ServedIdentity | None:
        key = self.backend.identity_key(served)
        for instance in self.instances.values():
            if instance.state == "ready" and key in instance.identities:
                return instance.identities[key]
        return None

    def model_state(self, model: str) -> ModelState:
        error = self.last_error.get(model)
        for instance in self.instances.values():
            if instance.model == model:
                state = {"starting": "loading", "ready": "loaded"}.get(instance.state,
                                                                      instance.state)
                return ModelState(state=state, healthy=True, since=instance.since,
                                  instance=instance.id, last_error=error and error[1])
        if error is not None:
            reason = error[1]
            failures, retry_at = self._start_failures.get(model, (0, 0.0))
            left = retry_at - time.monotonic()
            if left > 0:
                reason = (f"{reason} (failed {failures} time(s) in a row; next try in "
                          f"{left:.0f} s)")
            return ModelState(state="failed", healthy=False, reason=reason, since=error[0],
                              last_error=error[1])
        reason = self.not_startable()
        return ModelState(state="idle", healthy=reason is None, reason=reason)

    def not_startable(self) -> str | None:
        return None if self.runtime_error is None else f"not startable: {self.runtime_error}"

    def health(self) -> dict[str, Any]:
        models = {m: self.model_state(m).as_dict() for m in self.backend.config.models}
        failed = [m for m, s in models.items() if s["state"] == "failed"]
        reason = self.not_startable() or (
            "; ".join(f"{m}: {models[m]['reason']}" for m in failed) if failed else None
        )
        counts: dict[str, int] = defaultdict(int)
        for w in self.waiters:
            counts[w.model] += 1
        return {
            "kind": self.backend.config.kind,
            "managed": True,
            "runtime": self.cfg.runtime,
            "healthy": reason is None,
            "startable": self.runtime_error is None,
            "reason": reason,
            "queued": dict(counts),
            "instances": [
                {"instance": i.id, "model": i.model, "state": i.state, "port": i.port,
                 "inflight": i.inflight, "since": i.since}
                for i in self.instances.values()
            ],
            "models": models,
            "limits": self.backend.limits,
        }
