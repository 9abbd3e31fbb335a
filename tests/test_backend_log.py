"""Every backend state change is in the log once, with its reason: down from the start,
found down by a request, back up, serving something else."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from structlog.testing import capture_logs

from tests.conftest import run_gateway
from tests.fakes import serve_fake
from tests.fakes.vllm import create_vllm_app
from tests.ports import free_port


def health_events(logs: list[dict[str, Any]], backend: str) -> list[tuple[bool, str | None]]:
    return [(e["healthy"], e.get("reason")) for e in logs
            if e.get("event") == "backend_health" and e.get("backend") == backend]


async def until(predicate: Any, what: str) -> None:
    for _ in range(100):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never: {what}")


async def test_down_from_the_start_found_down_and_mismatched_are_logged_once() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    app = create_vllm_app("/models/a", dims=8, error_shape="nested", served_model_name="a")
    fake = serve_fake(app)
    vllm = await fake.__aenter__()
    with capture_logs() as logs:
        config = {"server": {"health_interval": 0.1}, "backends": {
            "down": {"kind": "vllm", "base_url": closed, "models": {"x": {}}},
            "up": {"kind": "vllm", "base_url": vllm, "models": {"a": {}}},
            "other": {"kind": "vllm", "base_url": vllm, "models": {"b": {}}}}}
        async with run_gateway(config) as url, aiohttp.ClientSession() as session:
            await until(lambda: health_events(logs, "down") and health_events(logs, "up")
                        and health_events(logs, "other"), "a first line for each")
            await asyncio.sleep(0.5)  # five more checks: no more lines
            assert len(health_events(logs, "down")) == 1
            [(healthy, reason)] = health_events(logs, "down")
            assert healthy is False and "could not be reached" in reason
            assert health_events(logs, "up") == [(True, None)]
            [(healthy, reason)] = health_events(logs, "other")
            assert healthy is False and "b" in reason
            await fake.__aexit__(None, None, None)  # the next request finds "up" down
            async with session.post(f"{url}/v1/embeddings",
                                    json={"model": "a", "input": "x"}) as resp:
                assert resp.status == 502
            assert health_events(logs, "up")[1][0] is False
