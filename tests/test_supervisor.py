"""The supervisor through a real gateway, with instances that are fake TEI apps on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from embedding_gateway.runtimes.base import FoundInstance
from embedding_gateway.state import GATEWAY
from tests.conftest import run_gateway, serve_app
from tests.fake_runtime import FakeRuntime
from tests.fakes.vectors import which_model
from tests.ports import free_pair

MODELS = ["m-a", "m-b", "m-c", "m-p"]
DIMS = 384
WAIT = 10.0
pytestmark = pytest.mark.timeout(30)


def backend(port: int, models: dict[str, dict[str, Any]] | list[str], **managed: Any
            ) -> dict[str, Any]:
    settings = {"runtime": "process", "command": ["unused"], "start_timeout": 5,
                "queue_timeout": 8, "stop_timeout": 1, "max_wait": 30, **managed}
    if isinstance(models, list):
        models = {name: {} for name in models}
    return {"kind": "tei", "base_url": f"http://127.0.0.1:{port}", "managed": settings,
            "models": models}


@asynccontextmanager
async def gateway(runtime: FakeRuntime, backends: dict[str, Any], **top: Any
                  ) -> AsyncIterator[Client]:
    # lifecycle under test: every request reaches an instance, none is answered from a cache
    config = {"server": {"playground": False, "health_timeout": 1}, "backends": backends,
              "cache": {"memory_bytes": 0}, **top}
    try:
        async with run_gateway(config, runtime_factory=lambda managed: runtime) as url, \
                aiohttp.ClientSession() as session:
            yield Client(url, session)
    finally:
        await runtime.shutdown()


class Client:
    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url, self.session = url, session

    async def embed(self, model: str, text: str = "hello") -> tuple[int, dict[str, Any],
                                                                     dict[str, str]]:
        async with self.session.post(f"{self.url}/v1/embeddings",
                                     json={"model": model, "input": text}) as response:
            return response.status, await response.json(), dict(response.headers)

    async def ok(self, model: str, text: str = "hello") -> None:
        """One request that must succeed with vectors from ``model`` itself."""
        status, body, _ = await self.embed(model, text)
        assert status == 200, body
        assert which_model(body["data"][0]["embedding"], text, MODELS, DIMS) == model

    async def models(self) -> dict[str, dict[str, Any]]:
        async with self.session.get(f"{self.url}/v1/models") as response:
            return {m["id"]: m for m in (await response.json())["data"]}

    async def health(self) -> dict[str, Any]:
        async with self.session.get(f"{self.url}/health") as response:
            return await response.json()  # type: ignore[no-any-return]

    async def state(self, model: str) -> str:
        return str((await self.models())[model]["state"])


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"never: {what}"
        await asyncio.sleep(0.02)


async def queued(client: Client, backend_name: str, model: str, count: int) -> bool:
    health = await client.health()
    return bool(health["backends"][backend_name]["queued"].get(model, 0) >= count)


async def test_requests_are_grouped_by_model_a_b_a_c_needs_three_starts() -> None:
    runtime = FakeRuntime()
    runtime.start_delay = {"m-a": 0.3}
    async with gateway(runtime, {"t": backend(free_pair(), MODELS)}) as client:
        tasks = []
        for model in ["m-a", "m-b", "m-a", "m-c"]:
            tasks.append(asyncio.create_task(client.ok(model)))
            await until(lambda m=model, n=tasks: queued_total(client, len(n)), f"{model} queued")
        await asyncio.gather(*tasks)
        assert runtime.starts == ["m-a", "m-b", "m-c"]
        assert runtime.stops == ["m-a", "m-b"]


async def queued_total(client: Client, count: int) -> bool:
    health = await client.health()
    return sum(health["backends"]["t"]["queued"].values()) >= count


async def served_amid_a_stream(client: Client, busy: str, other: str) -> None:
    """Keep four clients asking for ``busy`` without pause while one asks for ``other``."""
    await client.ok(busy)
    done = asyncio.Event()

    async def stream() -> None:
        while not done.is_set():
            await client.ok(busy)

    workers = [asyncio.create_task(stream()) for _ in range(4)]
    try:
        await client.ok(other)
    finally:
        done.set()
        await asyncio.gather(*workers)


async def test_a_stream_of_one_model_does_not_starve_another() -> None:
    runtime = FakeRuntime()
    runtime.request_delay = {"m-a": 0.05}
    async with gateway(runtime, {"t": backend(free_pair(), MODELS, max_wait=0.3,
                                              queue_timeout=8)}) as client:
        await served_amid_a_stream(client, "m-a", "m-b")
        assert runtime.starts[:2] == ["m-a", "m-b"]


async def test_a_busy_backend_does_not_starve_another_on_the_same_gpu() -> None:
    """``max_wait`` holds across backends that share a GPU budget, not only within one."""
    runtime = FakeRuntime()
    runtime.request_delay = {"m-a": 0.05}
    on_gpu = {"memory_gb": 8, "gpu": "0"}
    backends = {"t": backend(free_pair(), {"m-a": on_gpu}, max_wait=0.3, queue_timeout=8),
                "u": backend(free_pair(), {"m-c": on_gpu}, max_wait=0.3, queue_timeout=8)}
    async with gateway(runtime, backends, gpus={"0": {"memory_gb": 10}}) as client:
        await served_amid_a_stream(client, "m-a", "m-c")
        assert runtime.starts[:2] == ["m-a", "m-c"]


async def test_a_slow_request_completes_before_its_instance_is_stopped() -> None:
    runtime = FakeRuntime()
    runtime.request_delay = {"m-a": 1.0}
    async with gateway(runtime, {"t": backend(free_pair(), MODELS, max_wait=0.1)}) as client:
        slow = asyncio.create_task(client.ok("m-a", "slow one"))
        await until(lambda: inflight(client, "m-a"), "m-a request in flight")
        other = asyncio.create_task(client.ok("m-b"))
        await until(lambda: has_state(client, "m-a", "draining"), "m-a draining")
        assert runtime.stops == []
        await slow
        await other
        assert runtime.stops == ["m-a"]
        assert runtime.starts == ["m-a", "m-b"]


async def inflight(client: Client, model: str) -> int:
    """Requests holding a lease on ``model``'s instances."""
    instances = (await client.health())["backends"]["t"]["instances"]
    return sum(i["inflight"] for i in instances if i["model"] == model)


async def leased(client: Client, model: str, count: int) -> bool:
    return await inflight(client, model) == count


async def has_state(client: Client, model: str, state: str) -> bool:
    return await client.state(model) == state


async def test_queue_timeout_is_a_503_with_retry_after() -> None:
    runtime = FakeRuntime()
    runtime.start_delay = {"m-a": 1.5}
    async with gateway(runtime, {"t": backend(free_pair(), MODELS,
                                              queue_timeout=0.3)}) as client:
        status, body, headers = await client.embed("m-a")
        assert status == 503, body
        assert "queue_timeout" in body["error"]["message"]
        assert int(headers["Retry-After"]) >= 1
        await until(lambda: has_state(client, "m-a", "loaded"), "the start went on")
        await client.ok("m-a")
        assert runtime.starts == ["m-a"]


async def test_a_full_queue_is_a_429_with_retry_after() -> None:
    runtime = FakeRuntime()
    runtime.start_delay = {"m-a": 0.5}
    async with gateway(runtime, {"t": backend(free_pair(), MODELS, max_queue=2)}) as client:
        first = [asyncio.create_task(client.ok("m-a")) for _ in range(2)]
        await until(lambda: queued(client, "t", "m-a", 2), "two queued")
        status, body, headers = await client.embed("m-a")
        assert status == 429, body
        assert "max_queue" in body["error"]["message"]
        assert int(headers["Retry-After"]) >= 1
        await asyncio.gather(*first)


async def test_max_instances_evicts_the_least_recently_used() -> None:
    runtime = FakeRuntime()
    async with gateway(runtime, {"t": backend(free_pair(), MODELS, max_instances=2)}) as client:
        await client.ok("m-a")
        await client.ok("m-b")
        await client.ok("m-a")
        await client.ok("m-c")
        assert runtime.stops == ["m-b"]
        states = await client.models()
        assert states["m-a"]["state"] == "loaded"
        assert states["m-c"]["state"] == "loaded"
        assert states["m-b"]["state"] == "idle"
        assert sorted(runtime.running()) == ["m-a", "m-c"]


async def test_a_gpu_budget_is_shared_across_backends() -> None:
    runtime = FakeRuntime()
    on_gpu = {"memory_gb": 6, "gpu": "0"}
    backends = {"t": backend(free_pair(), {"m-a": on_gpu}),
                "u": backend(free_pair(), {"m-b": on_gpu})}
    async with gateway(runtime, backends, gpus={"0": {"memory_gb": 10}}) as client:
        await client.ok("m-a")
        await client.ok("m-b")
        assert runtime.stops == ["m-a"]
        assert runtime.running() == ["m-b"]
        await client.ok("m-a")
        assert runtime.stops == ["m-a", "m-b"]


async def test_a_slow_stop_on_another_backend_is_not_followed_by_more_evictions() -> None:
    """One eviction frees enough; while it is still stopping, no second victim is chosen."""
    runtime = FakeRuntime()
    runtime.stop_delay = {"m-a": 1.0, "m-b": 1.0}
    on_gpu = {"memory_gb": 8, "gpu": "0"}
    backends = {"t": backend(free_pair(), {"m-a": on_gpu, "m-b": on_gpu}, max_instances=2),
                "u": backend(free_pair(), {"m-c": on_gpu})}
    async with gateway(runtime, backends, gpus={"0": {"memory_gb": 20}}) as client:
        await client.ok("m-a")
        await client.ok("m-b")
        await client.ok("m-c")
        assert runtime.stops == ["m-a"]  # least recently used, and only it
        assert sorted(runtime.running()) == ["m-b", "m-c"]


async def test_a_pinned_model_is_loaded_at_start_and_never_evicted() -> None:
    runtime = FakeRuntime()
    models = {"m-p": {"pinned": True}, "m-a": {}, "m-b": {}}
    async with gateway(runtime, {"t": backend(free_pair(), models, max_instances=2,
                                              idle_timeout=0.2)}) as client:
        await until(lambda: has_state(client, "m-p", "loaded"), "m-p preloaded")
        await client.ok("m-a")
        await client.ok("m-b")
        await client.ok("m-a")
        assert "m-p" not in runtime.stops
        assert runtime.stops[:2] == ["m-a", "m-b"]
        await client.ok("m-p")


async def test_an_idle_instance_is_unloaded() -> None:
    runtime = FakeRuntime()
    async with gateway(runtime, {"t": backend(free_pair(), MODELS, idle_timeout=0.2)}) as client:
        await client.ok("m-a")
        await until(lambda: has_state(client, "m-a", "idle"), "m-a unloaded")
        assert runtime.stops == ["m-a"]
        await client.ok("m-a")
        assert runtime.starts == ["m-a", "m-a"]


async def test_min_loaded_keeps_a_fresh_instance() -> None:
    runtime = FakeRuntime()
    async with gateway(runtime, {"t": backend(free_pair(), MODELS, min_loaded=1.0)}) as client:
        await client.ok("m-a")
        other = asyncio.create_task(client.ok("m-b"))
        await until(lambda: queued(client, "t", "m-b", 1), "m-b queued")
        await asyncio.sleep(0.3)
        assert await client.state("m-a") == "loaded"
        assert runtime.stops == []
        await other
        assert runtime.stops == ["m-a"]


async def test_an_instance_that_exits_at_once_is_a_503_with_its_log_lines() -> None:
    runtime = FakeRuntime()
    runtime.exit_at_once = {"m-a": ["loading weights", "CUDA error: out of memory"]}
    async with gateway(runtime, {"t": backend(free_pair(), MODELS)}) as client:
        status, body, headers = await client.embed("m-a")
        assert status == 503, body
        assert "CUDA error: out of memory" in body["error"]["message"]
        assert "Retry-After" in headers
        state = (await client.models())["m-a"]
        assert state["state"] == "failed"
        assert "CUDA error: out of memory" in state["last_error"]
        health = await client.health()
        assert health["backends"]["t"]["healthy"] is False
        assert "CUDA error" in health["backends"]["t"]["reason"]

        del runtime.exit_at_once["m-a"]
        # not started again by every request: they get 503 until the backoff has passed
        for _ in range(30):
            status, body, headers = await client.embed("m-a")
            assert status == 503 and 1 <= int(headers["Retry-After"]) <= 2, body
            assert "the next try is in" in body["error"]["message"]
        assert runtime.starts == ["m-a"]
        assert "next try in" in (await client.models())["m-a"]["reason"]
        await asyncio.sleep(2)
        await client.ok("m-a")
        assert runtime.starts == ["m-a", "m-a"]
        state = (await client.models())["m-a"]
        assert state["state"] == "loaded"
        assert state["instance"] == "t-0"
        assert state["last_error"] is None


async def test_a_runtime_start_error_is_a_503_naming_the_cause() -> None:
    runtime = FakeRuntime()
    runtime.fail_start = {"m-a": "image example/tei:1 is not present"}
    async with gateway(runtime, {"t": backend(free_pair(), MODELS)}) as client:
        status, body, _ = await client.embed("m-a")
        assert status == 503, body
        assert "image example/tei:1 is not present" in body["error"]["message"]


async def test_start_timeout_is_a_503_and_the_instance_is_stopped() -> None:
    runtime = FakeRuntime()
    runtime.start_delay = {"m-a": 10.0}
    async with gateway(runtime, {"t": backend(free_pair(), MODELS, start_timeout=0.4)}) as client:
        status, body, _ = await client.embed("m-a")
        assert status == 503, body
        assert "start_timeout" in body["error"]["message"]
        assert runtime.stops == ["m-a"]
        assert runtime.running() == []
        assert await client.state("m-a") == "failed"


async def test_an_instance_serving_the_wrong_model_never_serves() -> None:
    runtime = FakeRuntime()
    runtime.serve_as = {"m-a": "m-b"}
    async with gateway(runtime, {"t": backend(free_pair(), MODELS)}) as client:
        status, body, _ = await client.embed("m-a")
        assert status == 503, body
        assert "data" not in body
        assert "wrong model" in body["error"]["message"]
        assert "m-b" in body["error"]["message"]
        state = (await client.models())["m-a"]
        assert state["state"] == "failed"
        assert "wrong model" in state["reason"]
        assert runtime.stops == ["m-a"]


async def test_a_client_leaving_during_a_start_does_not_cancel_it() -> None:
    runtime = FakeRuntime()
    runtime.start_delay = {"m-a": 0.5}
    async with gateway(runtime, {"t": backend(free_pair(), MODELS)}) as client:
        request = asyncio.create_task(client.embed("m-a"))
        await until(lambda: has_state(client, "m-a", "loading"), "m-a loading")
        state = (await client.models())["m-a"]
        assert state["instance"] == "t-0"
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
        await until(lambda: has_state(client, "m-a", "loaded"), "m-a loaded")
        await client.ok("m-a")
        assert runtime.starts == ["m-a"]
        assert runtime.stops == []


async def test_an_instance_killed_from_outside_is_restarted() -> None:
    runtime = FakeRuntime()
    async with gateway(runtime, {"t": backend(free_pair(), MODELS)}) as client:
        await client.ok("m-a")
        await runtime.kill("m-a")
        await until(lambda: has_state(client, "m-a", "failed"), "the death noticed")
        await client.ok("m-a")
        assert runtime.starts == ["m-a", "m-a"]


async def test_adoption_keeps_the_right_healthy_instance_and_removes_the_rest() -> None:
    runtime = FakeRuntime()
    port = free_pair()
    other_port = free_pair()
    good = await runtime.serve_external("m-a", port)
    liar = await runtime.serve_external("m-c", other_port)
    runtime.existing = [
        FoundInstance(good, "t", "m-a", "t-0", port, running=True),
        FoundInstance(liar, "t", "m-b", "t-1", other_port, running=True),  # serves m-c
        FoundInstance("fake-unknown", "t", "not-configured", "t-2", port + 1, running=True),
        FoundInstance("fake-exited", "t", "m-b", "t-3", other_port + 1, running=False),
        FoundInstance("fake-other", "elsewhere", "m-a", "x-0", 1, running=True),
    ]
    async with gateway(runtime, {"t": backend(port, MODELS, max_instances=4)}) as client:
        assert await client.state("m-a") == "loaded"
        await client.ok("m-a")
        assert runtime.starts == []
        assert sorted(runtime.removed) == sorted([liar, "fake-unknown", "fake-exited"])
        assert runtime.running() == ["m-a"]


async def test_an_instance_started_with_another_spec_is_replaced_not_adopted() -> None:
    runtime = FakeRuntime()
    port = free_pair()
    old = await runtime.serve_external("m-a", port)
    runtime.existing = [FoundInstance(old, "t", "m-a", "t-0", port, running=True,
                                      fingerprint="image:1.8")]
    runtime.fingerprints = {"m-a": "image:1.9"}  # the config changed since it was started
    async with gateway(runtime, {"t": backend(port, MODELS)}) as client:
        assert await client.state("m-a") == "idle"
        assert runtime.removed == [old]
        await client.ok("m-a")
        assert runtime.starts == ["m-a"]


async def test_an_adopted_instance_keeps_its_port_free_of_new_starts() -> None:
    runtime = FakeRuntime()
    port = free_pair()
    ref = await runtime.serve_external("m-a", port + 1)
    runtime.existing = [FoundInstance(ref, "t", "m-a", "t-1", port + 1, running=True)]
    async with gateway(runtime, {"t": backend(port, MODELS, max_instances=2)}) as client:
        await client.ok("m-b")
        await client.ok("m-a")
        assert runtime.starts == ["m-b"]


async def test_health_and_models_show_loading_loaded_and_idle() -> None:
    runtime = FakeRuntime()
    runtime.start_delay = {"m-a": 0.4}
    async with gateway(runtime, {"t": backend(free_pair(), MODELS)}) as client:
        states = await client.models()
        assert {m: s["state"] for m, s in states.items()} == {m: "idle" for m in MODELS}
        assert all(s["managed"] for s in states.values())
        request = asyncio.create_task(client.ok("m-a"))
        await until(lambda: has_state(client, "m-a", "loading"), "m-a loading")
        health = (await client.health())["backends"]["t"]
        assert health["managed"] is True
        assert [(i["model"], i["state"]) for i in health["instances"]] == [("m-a", "starting")]
        assert health["queued"] == {"m-a": 1}
        await request
        health = (await client.health())["backends"]["t"]
        assert health["healthy"] is True
        assert [(i["instance"], i["model"], i["state"]) for i in health["instances"]] == [
            ("t-0", "m-a", "ready")]
        assert health["models"]["m-a"]["state"] == "loaded"
        assert health["models"]["m-b"]["state"] == "idle"


async def test_a_request_meeting_a_killed_instance_is_a_503_and_the_next_restarts_it() -> None:
    runtime = FakeRuntime()
    async with gateway(runtime, {"t": backend(free_pair(), MODELS)}) as client:
        await client.ok("m-a")
        await runtime.kill("m-a")
        status, body, headers = await client.embed("m-a")
        assert status == 503, body
        assert "exited" in body["error"]["message"]
        assert "Retry-After" in headers
        assert runtime.stops == ["m-a"]
        await client.ok("m-a")
        assert runtime.starts == ["m-a", "m-a"]


async def test_an_instance_that_cannot_be_adopted_is_removed_and_start_goes_on() -> None:
    runtime = FakeRuntime()
    port = free_pair()
    await runtime.serve_external("m-a", port)
    runtime.existing = [FoundInstance("fake-ghost", "t", "m-a", "t-0", port, running=True)]
    async with gateway(runtime, {"t": backend(port, MODELS)}) as client:
        assert runtime.removed == ["fake-ghost"]
        assert await client.state("m-a") == "idle"


async def test_a_model_that_can_never_fit_fails_at_once_and_does_not_block_others() -> None:
    runtime = FakeRuntime()
    runtime.start_delay = {"m-a": 0.3}
    models = {"m-a": {}, "m-b": {"memory_gb": 7, "gpu": "0"},
              "m-p": {"pinned": True, "memory_gb": 6, "gpu": "0"}}
    async with gateway(runtime, {"t": backend(free_pair(), models, max_instances=3)},
                       gpus={"0": {"memory_gb": 10}}) as client:
        await until(lambda: has_state(client, "m-p", "loaded"), "m-p preloaded")
        status, body, _ = await client.embed("m-b")
        assert status == 503, body
        assert "7 GB" in body["error"]["message"], body
        assert "6 GB of it held by pinned models" in body["error"]["message"], body
        await client.ok("m-a")


async def test_a_model_with_every_slot_pinned_fails_at_once() -> None:
    runtime = FakeRuntime()
    models = {"m-a": {}, "m-p": {"pinned": True}}
    async with gateway(runtime, {"t": backend(free_pair(), models)}) as client:
        await until(lambda: has_state(client, "m-p", "loaded"), "m-p preloaded")
        status, body, _ = await client.embed("m-a")
        assert status == 503, body
        assert "pinned" in body["error"]["message"]


async def test_a_swap_is_logged_and_counted_once_with_its_durations() -> None:
    runtime = FakeRuntime()
    async with gateway(runtime, {"t": backend(free_pair(), ["m-a", "m-b"])}) as client:
        with capture_logs() as events:
            await client.ok("m-a")  # a first start, not a swap
            await client.ok("m-b")  # m-a drains and stops, m-b starts
        swaps = [e for e in events if e["event"] == "swap_done"]
        assert len(swaps) == 1, events
        assert swaps[0]["model"] == "m-b" and swaps[0]["replaced"] == ["m-a"]
        assert swaps[0]["seconds"] >= swaps[0]["start_seconds"] >= 0
        async with client.session.get(f"{client.url}/metrics") as response:
            families = {f.name: f for f in text_string_to_metric_families(await response.text())}
        [count] = [s.value for s in families["embedding_gateway_swap_duration_seconds"].samples
                   if s.name.endswith("_count")]
        assert count == 1


async def test_every_request_on_an_instance_that_dies_gets_a_retryable_503() -> None:
    runtime = FakeRuntime()
    async with gateway(runtime, {"t": backend(free_pair(), ["m-a"])}) as client:
        await client.ok("m-a")
        runtime.hang("m-a")
        requests = [asyncio.create_task(client.embed("m-a")) for _ in range(3)]
        await until(lambda: inflight(client, "m-a"), "requests in flight")
        await runtime.kill("m-a")
        for status, body, headers in await asyncio.gather(*requests):
            assert status == 503 and headers.get("Retry-After"), body
        await client.ok("m-a")  # and the next one starts it again


async def test_a_dead_instance_keeps_its_slot_while_a_request_holds_it() -> None:
    """Its port must not go to another model while a leased request may still send to it."""
    runtime = FakeRuntime()
    runtime.request_delay = {"m-a": 2.0}
    b = backend(free_pair(), MODELS, max_instances=2)
    b["max_concurrency"] = 1  # a second request for m-a is leased, then waits for the first
    async with gateway(runtime, {"t": b}) as client:
        await client.ok("m-a")
        await client.ok("m-b")
        slow_a = asyncio.create_task(client.embed("m-a"))
        await until(lambda: inflight(client, "m-a"), "m-a busy")
        for_a = asyncio.create_task(client.embed("m-a", "for a"))
        await until(lambda: leased(client, "m-a", 2), "m-a leased twice")
        await runtime.kill("m-a")
        await until(lambda: has_state(client, "m-a", "draining"), "m-a seen dead")
        for_c = asyncio.create_task(client.ok("m-c"))
        status, body, _ = await for_a
        assert status == 503, body  # never sent to m-c on m-a's port
        assert (await slow_a)[0] in (200, 503)  # finished before the kill, or cut off by it
        await for_c


async def test_waiting_for_preloads_outlasts_the_queue_timeout() -> None:
    """READY (with ready_after_preload) waits for the load itself, however long it takes
    within start_timeout."""
    runtime = FakeRuntime()
    runtime.start_delay = {"m-a": 1.0}
    config = {"server": {"playground": False, "health_timeout": 1},
              "backends": {"t": backend(free_pair(), {"m-a": {"preload": True}},
                                        queue_timeout=0.3, start_timeout=5)}}
    try:
        async with serve_app(config, runtime_factory=lambda _: runtime) as (_url, app):
            gateway_state = app[GATEWAY]
            await gateway_state.wait_preloaded()
            assert gateway_state.upstreams["t"].model_state("m-a").state == "loaded"
    finally:
        await runtime.shutdown()
