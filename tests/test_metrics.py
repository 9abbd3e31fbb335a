from __future__ import annotations

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from embedding_gateway.metrics import INSTANCE_STATES, Metrics


def _families(metrics: Metrics) -> dict[str, Metric]:
    body, _ = metrics.render()
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def _value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_requests_move_the_counters_and_the_histogram() -> None:
    metrics = Metrics()
    labels = {"model": "bge-m3", "backend": "ollama", "task": "embed"}
    metrics.observe_request(**labels, status=200, seconds=0.02, inputs=3, tokens=41)
    metrics.observe_request(**labels, status=200, seconds=0.7, inputs=1, tokens=9)
    metrics.observe_request(**labels, status=503, seconds=0.001, inputs=2, tokens=0)

    assert _value(metrics, "embedding_gateway_requests_total", **labels, status="200") == 2
    assert _value(metrics, "embedding_gateway_requests_total", **labels, status="503") == 1
    assert _value(metrics, "embedding_gateway_inputs_total", **labels) == 6
    assert _value(metrics, "embedding_gateway_tokens_total", **labels) == 50
    duration = "embedding_gateway_request_duration_seconds"
    assert _value(metrics, f"{duration}_count", **labels) == 3
    assert _value(metrics, f"{duration}_bucket", **labels, le="0.001") == 1
    assert _value(metrics, f"{duration}_bucket", **labels, le="0.025") == 2
    assert _value(metrics, f"{duration}_bucket", **labels, le="60.0") == 3


def test_upstream_errors_by_kind() -> None:
    metrics = Metrics()
    metrics.upstream_error(backend="tei", kind="timeout")
    metrics.upstream_error(backend="tei", kind="timeout")
    metrics.upstream_error(backend="tei", kind="mismatch")
    name = "embedding_gateway_upstream_errors_total"
    assert _value(metrics, name, backend="tei", kind="timeout") == 2
    assert _value(metrics, name, backend="tei", kind="mismatch") == 1
    with pytest.raises(ValueError, match="teapot"):
        metrics.upstream_error(backend="tei", kind="teapot")


def test_queue_and_swaps() -> None:
    metrics = Metrics()
    metrics.set_queue_depth(backend="tei", depth=4)
    metrics.set_queue_depth(backend="tei", depth=1)
    metrics.observe_queue_wait(backend="tei", model="nlpai-lab/KURE-v1", seconds=12.5)
    metrics.observe_swap(backend="tei", seconds=42.0)

    assert _value(metrics, "embedding_gateway_queue_depth", backend="tei") == 1
    wait = "embedding_gateway_queue_wait_seconds_count"
    assert _value(metrics, wait, backend="tei", model="nlpai-lab/KURE-v1") == 1
    assert _value(metrics, "embedding_gateway_swaps_total", backend="tei") == 1
    assert _value(metrics, "embedding_gateway_swap_duration_seconds_sum", backend="tei") == 42.0


def test_instance_state_is_one_hot() -> None:
    metrics = Metrics()
    labels = {"backend": "tei", "model": "intfloat/multilingual-e5-large-instruct"}
    metrics.set_instance_state(**labels, state="loading")
    metrics.set_instance_state(**labels, state="loaded")

    values = {
        state: _value(metrics, "embedding_gateway_instance_state", **labels, state=state)
        for state in INSTANCE_STATES
    }
    assert values == {"loaded": 1, "loading": 0, "idle": 0, "failed": 0, "draining": 0}
    with pytest.raises(ValueError, match="exploded"):
        metrics.set_instance_state(**labels, state="exploded")


def test_backend_health() -> None:
    metrics = Metrics()
    metrics.set_backend_health(backend="ollama", healthy=True)
    metrics.set_backend_health(backend="tei", healthy=False)
    assert _value(metrics, "embedding_gateway_backend_healthy", backend="ollama") == 1
    assert _value(metrics, "embedding_gateway_backend_healthy", backend="tei") == 0


def test_exposition_parses_and_names_every_metric() -> None:
    metrics = Metrics()
    metrics.observe_request(
        model="e5-large", backend="tei", task="rerank", status=200, seconds=0.05, inputs=1,
        tokens=5
    )
    metrics.upstream_error(backend="tei", kind="refused")
    metrics.set_queue_depth(backend="tei", depth=0)
    metrics.observe_queue_wait(backend="tei", model="e5-large", seconds=0.0)
    metrics.observe_swap(backend="tei", seconds=3.0)
    metrics.set_instance_state(backend="tei", model="e5-large", state="idle")
    metrics.set_backend_health(backend="tei", healthy=True)

    body, content_type = metrics.render()
    assert content_type.startswith("text/plain; version=")
    families = _families(metrics)
    expected = {
        "embedding_gateway_requests": "counter",
        "embedding_gateway_request_duration_seconds": "histogram",
        "embedding_gateway_inputs": "counter",
        "embedding_gateway_tokens": "counter",
        "embedding_gateway_upstream_errors": "counter",
        "embedding_gateway_queue_depth": "gauge",
        "embedding_gateway_queue_wait_seconds": "histogram",
        "embedding_gateway_swaps": "counter",
        "embedding_gateway_swap_duration_seconds": "histogram",
        "embedding_gateway_instance_state": "gauge",
        "embedding_gateway_backend_healthy": "gauge",
    }
    assert {name: families[name].type for name in expected} == expected
    assert b"embedding_gateway_requests_total{" in body
    assert "process_resident_memory_bytes" in families


def test_apps_have_separate_registries() -> None:
    first, second = Metrics(), Metrics()
    first.set_backend_health(backend="ollama", healthy=True)
    assert _value(first, "embedding_gateway_backend_healthy", backend="ollama") == 1
    assert _value(second, "embedding_gateway_backend_healthy", backend="ollama") is None
