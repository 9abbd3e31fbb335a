"""The records the supervisor keeps: instances, queued requests, instance slots and ports, and
the GPU memory ledger shared by every managed backend."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from . import policy
from .backends.base import ServedIdentity
from .config import GpuConfig, ManagedConfig
from .runtimes.base import InstanceHandle

if TYPE_CHECKING:
    from .supervisor import Supervisor


@dataclass
class Instance:
    id: str
    slot: int
    model: str
    port: int
    base_url: str
    state: str = "starting"  # starting | ready | draining | stopping
    handle: InstanceHandle | None = None
    inflight: int = 0
    since: float = field(default_factory=time.time)
    ready_since: float | None = None
    last_used: float = field(default_factory=time.monotonic)
    dead: bool = False  # exited on its own; its slot is freed once no lease holds it
    # what its check found it serving (weights and revision): its models' fingerprint
    identities: dict[str, ServedIdentity] = field(default_factory=dict)


@dataclass
class Waiter:
    """A request queued for ``model``; ``future`` is resolved with its leased instance."""

    model: str
    future: asyncio.Future[Instance]
    enqueued: float


def granted(waiter: Waiter) -> Instance | None:
    """The instance a waiter was given, if it was given one (it holds a lease then)."""
    future = waiter.future
    if future.done() and not future.cancelled() and future.exception() is None:
        return future.result()
    return None


class Slots:
    """Instance slots of one backend and their host ports: slot ``n`` listens on
    ``ports[0] + n``, or on ``base_url``'s port + ``n`` without a range."""

    def __init__(self, base_url: str, managed: ManagedConfig) -> None:
        parts = urlsplit(base_url)
        self.scheme, self.host = parts.scheme, parts.hostname or "127.0.0.1"
        self.first_port = managed.ports[0] if managed.ports else (
            parts.port or (443 if parts.scheme == "https" else 80)
        )
        self.count = managed.max_instances

    def port(self, slot: int) -> int:
        return self.first_port + slot

    def url(self, port: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return urlunsplit((self.scheme, f"{host}:{port}", "", "", ""))

    def free(self, used: set[int]) -> int:
        """The lowest free slot; only asked when one is free."""
        return next(n for n in range(self.count) if n not in used)

    def at_port(self, port: int, used: set[int]) -> int | None:
        """The free slot whose port is ``port`` (where an adopted instance must go)."""
        return next((n for n in range(self.count) if n not in used and self.port(n) == port),
                    None)


class DeviceLedger:
    """GPU memory shared by the instances of every managed backend.

    A supervisor that evicts for a model *claims* that model's memory until it starts it, so
    that another backend cannot take the freed memory in between (and starve it)."""

    def __init__(self, gpus: dict[str, GpuConfig]) -> None:
        self.gpus = gpus
        self.supervisors: list[Supervisor] = []
        self._claims: dict[tuple[Supervisor, str], policy.InstanceView] = {}

    def budget(self, gpu: str | None) -> float | None:
        return self.gpus[gpu].memory_gb if gpu in self.gpus else None

    def views(self, claimant: tuple[Supervisor, str] | None = None
              ) -> list[tuple[Supervisor, policy.InstanceView]]:
        """Every instance, and every claim but ``claimant``'s own."""
        instances = [(s, v) for s in self.supervisors for v in s.views()]
        claims = [(owner, view) for (owner, model), view in self._claims.items()
                  if (owner, model) != claimant]
        return instances + claims

    def claim(self, owner: Supervisor, model: str, gpu: str | None, memory_gb: float) -> None:
        self._claims[(owner, model)] = policy.InstanceView(
            instance=f"claim:{model}", model=model, state="claimed", inflight=0,
            last_used=0.0, ready_since=None, pinned=False, memory_gb=memory_gb, gpu=gpu,
        )

    def release(self, owner: Supervisor, model: str) -> None:
        self._claims.pop((owner, model), None)

    def claimed(self, owner: Supervisor) -> list[str]:
        return [model for (who, model) in self._claims if who is owner]
