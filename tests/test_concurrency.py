"""The adaptive limit on calls in flight, fed the latencies each kind of upstream gives."""

from __future__ import annotations

from embedding_gateway.concurrency import FIRST_PROBE_AFTER, AdaptiveLimit, FixedLimit

SERVICE = 0.040  # seconds a call takes on an idle upstream


def run(limit: AdaptiveLimit, latency_with: float, rounds: int = 400) -> list[int]:
    """Feed ``rounds`` calls: alone at a limit of one (requests held meanwhile), else
    ``limit.limit`` at once, each taking ``latency_with(in_flight)``."""
    seen = []
    for _ in range(rounds):
        in_flight = limit.limit
        if in_flight == 1:
            limit.observe(latency_with(1), 1, 16)
            limit.held()
        else:
            for _ in range(in_flight):
                limit.observe(latency_with(in_flight), in_flight, 16)
        seen.append(limit.limit)
    return seen


def test_an_upstream_that_serves_one_call_at_a_time_keeps_one_call() -> None:
    limit = AdaptiveLimit(maximum=64)
    seen = run(limit, lambda n: SERVICE * (1 + n) / 2)  # on average half a call ahead each
    assert max(seen) <= 2 and limit.limit == 1
    assert seen.count(2) < 40, "tries of a second call should thin out as they keep failing"


def test_an_upstream_with_parallel_capacity_gets_more_calls_up_to_the_maximum() -> None:
    limit = AdaptiveLimit(maximum=12)
    seen = run(limit, lambda n: SERVICE * 1.05)
    assert seen[-1] == 12
    assert seen.index(12) < FIRST_PROBE_AFTER + 40


def test_capacity_that_ends_is_found() -> None:
    limit = AdaptiveLimit(maximum=64)
    workers = 6  # side by side up to six, queueing past that
    seen = run(limit, lambda n: SERVICE * max(1.0, n / workers) * 1.02, rounds=600)
    assert 4 <= limit.limit <= 9, seen[-50:]


def test_a_slower_model_after_a_swap_is_learnt_again() -> None:
    limit = AdaptiveLimit(maximum=64)
    run(limit, lambda n: SERVICE * 1.02, rounds=100)
    assert limit.limit == 64
    # three times slower, still side by side: calls first look slowed down by each other
    # (the no-load latency is the old model's), until the new one's is learnt
    seen = run(limit, lambda n: 3 * SERVICE * 1.02, rounds=600)
    assert min(seen) < 64 and seen[-1] == 64


def test_a_configured_bound_does_not_move() -> None:
    limit = FixedLimit(3)
    for _ in range(50):
        limit.observe(10.0, 3, 1)
        limit.held()
    assert limit.limit == limit.maximum == 3
