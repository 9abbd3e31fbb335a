"""Table tests of the pure lifecycle decisions in ``embedding_gateway.policy``."""

from __future__ import annotations

import pytest

from embedding_gateway.policy import (
    InstanceView,
    choose_victims,
    evictable,
    idle_expired,
    may_displace,
    memory_shortfall,
    queue_order,
)


def view(name: str = "i", *, model: str = "m", state: str = "ready", inflight: int = 0,
         last_used: float = 0.0, ready_since: float | None = 0.0, pinned: bool = False,
         memory_gb: float = 0.0, gpu: str | None = None) -> InstanceView:
    return InstanceView(instance=name, model=model, state=state, inflight=inflight,
                        last_used=last_used, ready_since=ready_since, pinned=pinned,
                        memory_gb=memory_gb, gpu=gpu)


@pytest.mark.parametrize(("oldest", "expected"), [
    ({}, []),
    ({"A": 1.0}, ["A"]),
    # requests A(1) B(2) A(3) C(4): the supervisor keeps each model's oldest waiter
    ({"A": 1.0, "B": 2.0, "C": 4.0}, ["A", "B", "C"]),
    ({"C": 0.5, "A": 1.0, "B": 2.0}, ["C", "A", "B"]),
    ({"B": 3.0, "A": 3.5}, ["B", "A"]),
])
def test_queue_order_by_oldest_waiter(oldest: dict[str, float], expected: list[str]) -> None:
    assert queue_order(oldest) == expected


@pytest.mark.parametrize(("instance", "now", "min_loaded", "expected"), [
    (view(), 10.0, 0.0, True),
    (view(pinned=True), 10.0, 0.0, False),
    (view(state="starting", ready_since=None), 10.0, 0.0, False),
    (view(state="draining"), 10.0, 0.0, False),
    (view(state="stopping"), 10.0, 0.0, False),
    (view(ready_since=8.0), 10.0, 5.0, False),
    (view(ready_since=5.0), 10.0, 5.0, True),
    (view(ready_since=None), 10.0, 5.0, True),
    (view(inflight=3), 10.0, 0.0, True),  # busy is for may_displace to judge
])
def test_evictable(instance: InstanceView, now: float, min_loaded: float, expected: bool) -> None:
    assert evictable(instance, now, min_loaded) is expected


@pytest.mark.parametrize(("inflight", "has_waiters", "waited", "max_wait", "expected"), [
    (0, False, 0.0, 30.0, True),  # idle and unwanted: yields at once
    (1, False, 0.0, 30.0, False),  # busy: keeps serving ...
    (1, False, 29.9, 30.0, False),
    (1, False, 30.0, 30.0, True),  # ... until the other queue waited max_wait
    (0, True, 5.0, 30.0, False),  # its own queue is waiting
    (0, True, 31.0, 30.0, True),
    (2, True, 0.0, 0.0, True),  # max_wait 0: always fair, never sticky
])
def test_may_displace_fairness_bound(inflight: int, has_waiters: bool, waited: float,
                                     max_wait: float, expected: bool) -> None:
    instance = view(inflight=inflight)
    assert may_displace(instance, waited=waited, max_wait=max_wait,
                        has_waiters=has_waiters) is expected


def names(victims: list[InstanceView] | None) -> list[str] | None:
    return None if victims is None else [v.instance for v in victims]


LRU = [view("b", last_used=2.0), view("a", last_used=1.0), view("c", last_used=3.0)]
GPU = [
    view("g1", last_used=1.0, memory_gb=4.0, gpu="0"),
    view("x", last_used=0.5, memory_gb=8.0, gpu="1"),
    view("g2", last_used=2.0, memory_gb=4.0, gpu="0"),
    view("g3", last_used=3.0, memory_gb=6.0, gpu="0"),
]


@pytest.mark.parametrize(("candidates", "slots", "memory", "gpu", "expected"), [
    (LRU, 0, 0.0, None, []),
    (LRU, 1, 0.0, None, ["a"]),
    (LRU, 2, 0.0, None, ["a", "b"]),
    (LRU, 4, 0.0, None, None),
    ([], 1, 0.0, None, None),
    (GPU, 0, 3.0, "0", ["g1"]),  # LRU on the right device; x (other gpu) is not touched
    (GPU, 0, 5.0, "0", ["g1", "g2"]),
    (GPU, 0, 14.0, "0", ["g1", "g2", "g3"]),
    (GPU, 0, 15.0, "0", None),
    (GPU, 1, 0.0, "0", ["x"]),  # a slot alone: plain LRU
    (GPU, 1, 3.0, "0", ["x", "g1"]),  # the slot's victim frees nothing on gpu 0
    (GPU, 0, 8.0, "1", ["x"]),
])
def test_choose_victims_lru_and_memory(candidates: list[InstanceView], slots: int,
                                       memory: float, gpu: str | None,
                                       expected: list[str] | None) -> None:
    assert names(choose_victims(candidates, slots_needed=slots, memory_needed=memory,
                                gpu=gpu)) == expected


@pytest.mark.parametrize(("budget", "gpu", "need", "expected"), [
    (None, "0", 100.0, 0.0),  # no budget declared
    (10.0, None, 100.0, 0.0),  # model not placed on a device
    (24.0, "0", 4.0, 0.0),  # 14 used + 4 fits in 24
    (16.0, "0", 4.0, 2.0),
    (10.0, "0", 4.0, 8.0),
    (8.0, "1", 0.0, 0.0),  # 8 used on gpu 1, nothing more needed
    (8.0, "1", 1.0, 1.0),
    (8.0, "2", 8.0, 0.0),  # an empty device
])
def test_memory_shortfall(budget: float | None, gpu: str | None, need: float,
                          expected: float) -> None:
    assert memory_shortfall(budget, GPU, gpu, need) == pytest.approx(expected)


@pytest.mark.parametrize(("instance", "now", "idle_timeout", "expected"), [
    (view(last_used=0.0), 10.0, 10.0, True),
    (view(last_used=0.0), 9.9, 10.0, False),
    (view(last_used=0.0), 100.0, 0.0, False),  # 0 disables idle unloading
    (view(last_used=0.0, pinned=True), 100.0, 10.0, False),
    (view(last_used=0.0, inflight=1), 100.0, 10.0, False),
    (view(last_used=0.0, state="starting"), 100.0, 10.0, False),
    (view(last_used=0.0, state="draining"), 100.0, 10.0, False),
])
def test_idle_expired(instance: InstanceView, now: float, idle_timeout: float,
                      expected: bool) -> None:
    assert idle_expired(instance, now, idle_timeout) is expected
