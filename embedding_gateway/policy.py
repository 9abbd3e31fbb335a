"""Lifecycle decisions as pure functions: which queued model goes next, which instance to evict.

No I/O, no clock, no logging: the supervisor passes in what it sees and ``now``; tests pass
tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class InstanceView:
    instance: str
    model: str
    state: str  # starting | ready | draining | stopping
    inflight: int
    last_used: float
    ready_since: float | None
    pinned: bool
    memory_gb: float = 0.0
    gpu: str | None = None


def queue_order(oldest_waiter: Mapping[str, float]) -> list[str]:
    """Models with waiting requests, by their oldest waiter: A B A C is served as A A B C."""
    return sorted(oldest_waiter, key=lambda model: oldest_waiter[model])


def evictable(view: InstanceView, now: float, min_loaded: float) -> bool:
    if view.pinned or view.state != "ready":
        return False
    return view.ready_since is None or now - view.ready_since >= min_loaded


def may_displace(
    view: InstanceView, *, waited: float, max_wait: float, has_waiters: bool
) -> bool:
    """A busy instance keeps serving its model until another model's queue has waited
    ``max_wait``; an instance with nothing in flight and nobody waiting yields at once."""
    if view.inflight == 0 and not has_waiters:
        return True
    return waited >= max_wait


def choose_victims(
    candidates: Iterable[InstanceView],
    *,
    slots_needed: int,
    memory_needed: float = 0.0,
    gpu: str | None = None,
) -> list[InstanceView] | None:
    """Least recently used first, until a slot (and the memory on ``gpu``) is free.

    ``slots_needed`` is how many of the candidates must go for a slot; ``memory_needed`` how
    many GB must be freed on ``gpu``. ``None`` when even all candidates are not enough.
    """
    chosen: list[InstanceView] = []
    freed = 0.0
    for view in sorted(candidates, key=lambda v: v.last_used):
        if len(chosen) >= slots_needed and freed >= memory_needed:
            break
        helps_memory = gpu is not None and view.gpu == gpu and freed < memory_needed
        if len(chosen) < slots_needed or helps_memory:
            chosen.append(view)
            if view.gpu == gpu:
                freed += view.memory_gb
    if len(chosen) < slots_needed or freed < memory_needed:
        return None
    return chosen


def memory_shortfall(
    budget_gb: float | None, used: Iterable[InstanceView], gpu: str | None, need_gb: float
) -> float:
    """GB that must be freed on ``gpu`` before ``need_gb`` more fit (0 when no budget)."""
    if budget_gb is None or gpu is None:
        return 0.0
    in_use = sum(v.memory_gb for v in used if v.gpu == gpu)
    return max(0.0, in_use + need_gb - budget_gb)


def idle_expired(view: InstanceView, now: float, idle_timeout: float) -> bool:
    return (
        idle_timeout > 0
        and not view.pinned
        and view.state == "ready"
        and view.inflight == 0
        and now - view.last_used >= idle_timeout
    )
