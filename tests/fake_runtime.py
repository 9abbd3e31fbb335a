"""A ``Runtime`` whose instances are fake TEI apps served in-process on the requested port.

Knobs are keyed by the model argument (what fills ``{model}``): ``start_delay`` (seconds
before the port is bound, alive meanwhile), ``fail_start`` (``start`` raises),
``exit_at_once`` (the instance is dead at once and its logs are these lines), ``serve_as``
(report another model id), ``request_delay`` (every embedding request takes this long),
``stop_delay`` (how long stopping an instance takes); models in ``rerankers`` are served as
TEI serves a cross-encoder (``/rerank``, ``model_type`` reranker in ``/info``).
``kill`` ends an instance from outside. ``starts``, ``stops`` and ``removed`` record calls.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from aiohttp import web

from embedding_gateway.config import ManagedConfig
from embedding_gateway.errors import RuntimeStartError
from embedding_gateway.runtimes.base import FoundInstance, InstanceHandle, InstanceSpec
from tests.fakes.tei import TEI_STATE, create_tei_app


@dataclass
class _Instance:
    model: str
    port: int
    runner: web.AppRunner | None = None
    alive: bool = True
    log_lines: list[str] = field(default_factory=list)
    boot: asyncio.Task[None] | None = None


class FakeRuntime:
    def __init__(self) -> None:
        self.start_delay: dict[str, float] = {}
        self.stop_delay: dict[str, float] = {}
        self.fingerprints: dict[str, str] = {}
        self.fail_start: dict[str, str] = {}
        self.exit_at_once: dict[str, list[str]] = {}
        self.serve_as: dict[str, str] = {}
        self.request_delay: dict[str, float] = {}
        self.rerankers: set[str] = set()
        self.existing: list[FoundInstance] = []
        self.starts: list[str] = []
        self.stops: list[str] = []
        self.removed: list[str] = []
        self.closed = False
        self._instances: dict[str, _Instance] = {}
        self._count = 0

    # -- test helpers ------------------------------------------------------------------

    async def serve_external(self, model: str, port: int) -> str:
        """A running instance no ``start`` call made (as if left by an earlier gateway)."""
        ref = self._new_ref()
        instance = _Instance(model, port)
        self._instances[ref] = instance
        await self._bind(instance, model)
        return ref

    def hang(self, model: str) -> None:
        """Requests to running instances of ``model`` get no answer until they end."""
        for instance in self._instances.values():
            if instance.model == model and instance.runner is not None:
                instance.runner.app[TEI_STATE].hang = True

    async def kill(self, model: str) -> None:
        """End every running instance of ``model`` as if killed from outside: requests it
        was answering are cut off."""
        for instance in list(self._instances.values()):  # stops may run meanwhile
            if instance.model == model and instance.alive:
                instance.alive = False
                await self._unbind(instance)

    def running(self) -> list[str]:
        return [i.model for i in self._instances.values() if i.alive]

    async def shutdown(self) -> None:
        for ref in list(self._instances):
            await self._drop(ref)

    # -- the Runtime protocol --------------------------------------------------------------

    def _new_ref(self) -> str:
        self._count += 1
        return f"fake-{self._count}"

    async def start(self, spec: InstanceSpec) -> InstanceHandle:
        model = spec.model_arg
        self.starts.append(model)
        if model in self.fail_start:
            raise RuntimeStartError(self.fail_start[model])
        ref = self._new_ref()
        instance = _Instance(model, spec.host_port)
        self._instances[ref] = instance
        if model in self.exit_at_once:
            instance.alive = False
            instance.log_lines = list(self.exit_at_once[model])
        elif self.start_delay.get(model, 0) > 0:
            instance.boot = asyncio.create_task(self._boot(instance, self.start_delay[model]))
        else:
            await self._bind(instance, model)
        return InstanceHandle(spec=spec, ref=ref)

    async def _boot(self, instance: _Instance, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._bind(instance, instance.model)

    async def _bind(self, instance: _Instance, model: str) -> None:
        app = create_tei_app(self.serve_as.get(model, model),
                             model_type="reranker" if model in self.rerankers else "embedding")
        app[TEI_STATE].delay = self.request_delay.get(model, 0.0)
        runner = web.AppRunner(app, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, "127.0.0.1", instance.port).start()
        except OSError as exc:
            await runner.cleanup()
            instance.alive = False
            instance.log_lines = [f"bind 127.0.0.1:{instance.port}: {exc.strerror}"]
            raise RuntimeStartError(f"port {instance.port} is taken") from None
        instance.runner = runner
        instance.log_lines.append(f"serving {model} on {instance.port}")

    async def _unbind(self, instance: _Instance) -> None:
        if instance.boot is not None:
            instance.boot.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeStartError):
                await instance.boot
        if instance.runner is not None:
            runner, instance.runner = instance.runner, None
            await runner.cleanup()

    async def _drop(self, ref: str) -> None:
        instance = self._instances.pop(ref, None)
        if instance is not None:
            instance.alive = False
            await self._unbind(instance)

    async def stop(self, handle: InstanceHandle, grace: float) -> None:
        if handle.ref in self._instances:
            model = self._instances[handle.ref].model
            self.stops.append(model)
            await asyncio.sleep(self.stop_delay.get(model, 0))
        await self._drop(handle.ref)

    async def preflight(self, managed: ManagedConfig) -> str | None:
        return None

    def fingerprint(self, spec: InstanceSpec) -> str | None:
        """What ``find_existing`` reports as the spec an instance was started with:
        ``self.fingerprints[model]``, None unless a test sets one."""
        return self.fingerprints.get(spec.model)

    async def is_alive(self, handle: InstanceHandle) -> bool:
        instance = self._instances.get(handle.ref)
        return instance is not None and instance.alive

    async def listens(self, handle: InstanceHandle) -> bool | None:
        return None

    async def exit_status(self, handle: InstanceHandle) -> str | None:
        return None if await self.is_alive(handle) else "killed by signal 9 (SIGKILL)"

    async def logs(self, handle: InstanceHandle, lines: int = 30) -> str:
        instance = self._instances.get(handle.ref)
        if instance is None:
            return ""
        tail = instance.log_lines[-lines:]
        return "\n".join(tail) + ("\n" if tail else "")

    async def find_existing(self, backend: str, owner: str) -> list[FoundInstance]:
        return [found for found in self.existing if found.backend == backend]

    async def adopt(self, found: FoundInstance, spec: InstanceSpec) -> InstanceHandle:
        if found.ref not in self._instances:
            raise RuntimeStartError(f"instance {found.ref} is gone")
        return InstanceHandle(spec=spec, ref=found.ref)

    async def remove(self, found: FoundInstance) -> None:
        self.removed.append(found.ref)
        await self._drop(found.ref)

    async def close(self) -> None:
        self.closed = True
