"""What the supervisor needs from a way of running a managed upstream.

A runtime starts one instance serving one model on a host port, tells whether it is still
alive, returns its last log lines, stops it, and lists instances it left running earlier
(for adoption after a gateway restart). It decides nothing: the supervisor owns lifecycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ..config import ManagedConfig


@dataclass(frozen=True)
class InstanceSpec:
    """One instance to start: ``model_arg`` fills ``{model}``, ``port`` fills ``{port}``."""

    backend: str
    model: str  # the configured model name (a label; not necessarily what the upstream knows)
    model_arg: str  # what the upstream loads (ModelConfig.upstream_model or the model name)
    instance: str  # unique id of this instance, e.g. "tei-0"
    host_port: int  # where the gateway reaches it on this host (or the docker host)
    managed: ManagedConfig
    owner: str = ""  # the gateway starting it (see Supervisor.owner); only it finds or adopts it


@dataclass
class InstanceHandle:
    """A started (or adopted) instance; ``ref`` is the runtime's own id (container id, pid)."""

    spec: InstanceSpec
    ref: str
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FoundInstance:
    """An instance found running at start-up, described by its labels."""

    ref: str
    backend: str
    model: str
    instance: str
    host_port: int | None
    running: bool
    fingerprint: str | None = None  # of the spec it was started with (see Runtime.fingerprint)


class Runtime(Protocol):
    async def start(self, spec: InstanceSpec) -> InstanceHandle:
        """Start the instance; raise ``RuntimeStartError`` with a clear cause on failure."""

    async def preflight(self, managed: ManagedConfig) -> str | None:
        """Why no instance could be started now (an unreachable Docker engine, an image that
        is not present with ``pull: false``, a command not on PATH), or ``None``. Cheap: the
        supervisor asks at start and every health interval, so ``/health`` says it before any
        request tries a start."""

    async def stop(self, handle: InstanceHandle, grace: float) -> None:
        """Stop and remove it: graceful first, forced after ``grace`` seconds; idempotent."""

    async def is_alive(self, handle: InstanceHandle) -> bool:
        """False once the process or container has exited; ``RuntimeStartError`` when the
        runtime cannot tell (a Docker daemon that does not answer)."""

    async def listens(self, handle: InstanceHandle) -> bool | None:
        """Whether the socket listening on its host port is the instance's own (False: a
        program this gateway did not start answers there), or ``None`` where that cannot be
        told or needs no telling (Docker publishes the port only for its container)."""

    async def exit_status(self, handle: InstanceHandle) -> str | None:
        """How it ended ("exited with status 3", "killed by signal 9 (SIGKILL)", "killed:
        out of memory"), or ``None`` while it runs or when that cannot be known."""

    async def logs(self, handle: InstanceHandle, lines: int = 30) -> str:
        """The last ``lines`` lines of its output (secrets are never in here by construction)."""

    async def find_existing(self, backend: str, owner: str) -> list[FoundInstance]:
        """Instances labelled as ``owner``'s for ``backend``, left by an earlier run; those of
        other gateways sharing the engine are never listed (nor adopted, nor removed)."""

    def fingerprint(self, spec: InstanceSpec) -> str | None:
        """A digest of everything the instance was started with; a found instance whose
        fingerprint differs from the current spec's is not adopted (the config changed)."""

    async def adopt(self, found: FoundInstance, spec: InstanceSpec) -> InstanceHandle:
        """A handle for a found instance that will be reused."""

    async def remove(self, found: FoundInstance) -> None:
        """Remove a stray found instance."""

    async def close(self) -> None:
        """Release clients and threads. Instances that can outlive the gateway (containers)
        are left as they are; ones that cannot (processes) are stopped."""
