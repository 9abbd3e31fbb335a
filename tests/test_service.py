"""The gateway as a systemd service: a real process, a real ``NOTIFY_SOCKET``, real signals.

Upstreams are in-process fakes (their ``FakeState`` is changed from the test); the gateway is
``python -m embedding_gateway.cli serve`` in its own session, killed in teardown whatever
happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes import FAKE_STATE, FakeState, serve_fake
from tests.fakes.vectors import fake_vectors
from tests.fakes.vllm import create_vllm_app
from tests.ports import free_port
from tests.service_support import (
    WAIT,
    Datagram,
    GatewayProcess,
    NotifyListener,
    gateway_config,
    vllm_backend,
)

DIMS = 16
SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener.bind(tmp_path)
    yield listener
    listener.close()


GatewayFactory = Callable[[], GatewayProcess]


@pytest.fixture
def gateway_process(tmp_path: Path) -> Iterator[GatewayFactory]:
    made: list[GatewayProcess] = []

    def make() -> GatewayProcess:
        index = len(made)
        gw = GatewayProcess(tmp_path / f"gateway{index}.yaml", tmp_path / f"gateway{index}.log",
                            free_port())
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.kill()


@contextlib.asynccontextmanager
async def fake_vllm(name: str) -> AsyncIterator[tuple[str, FakeState]]:
    """A vLLM serving ``org/NAME`` (which seeds its vectors) under the name ``NAME``."""
    app = create_vllm_app(f"org/{name}", dims=DIMS, served_model_name=name)
    async with serve_fake(app) as url:
        yield url, app[FAKE_STATE]


async def start(gw: GatewayProcess, notify: NotifyListener, config: dict[str, Any],
                **env: str) -> Datagram:
    gw.write_config(config)
    gw.start({"NOTIFY_SOCKET": notify.env_value, **env})
    try:
        return await notify.expect("READY=1")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\ngateway log:\n{gw.log_text()}") from None


async def embed(session: aiohttp.ClientSession, gw: GatewayProcess, model: str,
                texts: list[str], **headers: str) -> tuple[int, dict[str, Any]]:
    async with session.post(f"{gw.url}/v1/embeddings", headers=headers,
                            json={"model": model, "input": texts}) as response:
        return response.status, await response.json()


def vectors_of(body: dict[str, Any]) -> np.ndarray:
    return np.array([item["embedding"] for item in body["data"]], dtype=np.float32)


def assert_vectors(body: dict[str, Any], upstream_model: str, texts: list[str]) -> None:
    np.testing.assert_allclose(vectors_of(body), fake_vectors(upstream_model, texts, DIMS),
                               rtol=1e-6, atol=1e-7)


async def model_ids(session: aiohttp.ClientSession, gw: GatewayProcess) -> set[str]:
    async with session.get(f"{gw.url}/v1/models") as response:
        assert response.status == 200
        return {card["id"] for card in (await response.json())["data"]}


def is_watchdog(datagram: Datagram) -> bool:
    return "WATCHDOG=1" in datagram.text.splitlines()


# --- READY -----------------------------------------------------------------------------------


async def test_ready_is_sent_once_the_port_accepts_connections(
    notify: NotifyListener, gateway_process: GatewayFactory
) -> None:
    async with fake_vllm("a") as (url, _):
        gw = gateway_process()
        ready = await start(gw, notify, gateway_config(gw.port, {"a": vllm_backend(url, "a")}))
        with socket.create_connection(("127.0.0.1", gw.port), timeout=1):
            pass
        assert ready.fields["STATUS"].startswith("serving 1 model names")
        assert not any("READY=1" in d.text for d in notify.history[:-1])
        # systemd may signal as soon as it sees READY: the handlers are already in place
        # (SIGHUP's default action would end the process).
        gw.signal(signal.SIGHUP)
        await expect_reload(notify)
        assert gw.process is not None and gw.process.poll() is None


async def test_sigterm_while_preloading_stops_without_waiting_for_the_preload(
    notify: NotifyListener, gateway_process: GatewayFactory, tmp_path: Path
) -> None:
    port = free_port()
    backend = {
        "kind": "vllm",
        "base_url": f"http://127.0.0.1:{port}",
        "managed": {"runtime": "process", "start_timeout": 60, "stop_timeout": 2,
                    "command": [sys.executable, "-m", "tests.fakes.vllm", "--model", "{model}",
                                "--port", "{port}", "--startup-delay", "60"]},
        "models": {"m": {"preload": True}},
    }
    gw = gateway_process()
    gw.write_config(gateway_config(gw.port, {"p": backend}, ready_after_preload=True))
    gw.start({"NOTIFY_SOCKET": notify.env_value})
    deadline = time.monotonic() + WAIT
    while not any(e.get("event") == "process_started" for e in gw.log_events()):
        assert time.monotonic() < deadline, gw.log_text()
        await asyncio.sleep(0.05)
    # while it waits for the preload, systemd is asked for more time than its start timeout
    extend = await notify.expect(lambda d: "EXTEND_TIMEOUT_USEC" in d.fields)
    assert int(extend.fields["EXTEND_TIMEOUT_USEC"]) >= 10_000_000
    gw.signal(signal.SIGTERM)
    await notify.expect("STOPPING=1")
    assert await gw.wait() == 0
    assert not any("READY=1" in d.text for d in notify.history)
    stopped = [e for e in gw.log_events() if e.get("event") == "process_stopped"]
    assert len(stopped) == 1  # the starting instance was stopped, not left behind


async def test_abstract_namespace_notify_socket(
    tmp_path: Path, gateway_process: GatewayFactory
) -> None:
    listener = NotifyListener.bind(tmp_path, abstract=True)
    assert listener.env_value.startswith("@")
    try:
        async with fake_vllm("a") as (url, _):
            gw = gateway_process()
            await start(gw, listener, gateway_config(gw.port, {"a": vllm_backend(url, "a")}))
            gw.signal(signal.SIGTERM)
            await listener.expect("STOPPING=1")
            assert await gw.wait() == 0
    finally:
        listener.close()


# --- watchdog --------------------------------------------------------------------------------


async def test_watchdog_pings_stop_while_the_loop_is_blocked_and_resume(
    notify: NotifyListener, gateway_process: GatewayFactory
) -> None:
    async with fake_vllm("a") as (url, _), aiohttp.ClientSession() as session:
        gw = gateway_process()
        config = gateway_config(gw.port, {"a": vllm_backend(url, "a")}, debug_endpoints=True)
        await start(gw, notify, config, WATCHDOG_USEC="2000000")
        pings = [d for d in await notify.collect(3.0) if is_watchdog(d)]
        assert len(pings) >= 2  # one per second (half of WATCHDOG_USEC)

        async with session.post(f"{gw.url}/debug/block-loop?seconds=3") as response:
            assert response.status == 200
        after = await notify.expect(is_watchdog, timeout=3)
        # The last ping before the block and the first one after it are separated by the whole
        # block: while the loop is stuck nothing pings (at 1 s intervals there would be ~3).
        before = [d for d in notify.history if is_watchdog(d) and d is not after][-1]
        assert after.received - before.received > 2.0
        await notify.expect(is_watchdog, timeout=3)  # and they go on


async def test_no_watchdog_pings_when_watchdog_pid_is_another_process(
    notify: NotifyListener, gateway_process: GatewayFactory
) -> None:
    async with fake_vllm("a") as (url, _):
        gw = gateway_process()
        await start(gw, notify, gateway_config(gw.port, {"a": vllm_backend(url, "a")}),
                    WATCHDOG_USEC="200000", WATCHDOG_PID=str(os.getpid()))
        assert not [d for d in await notify.collect(1.5) if is_watchdog(d)]
        assert not any(is_watchdog(d) for d in notify.history)


# --- reload ----------------------------------------------------------------------------------


async def expect_reload(notify: NotifyListener) -> tuple[Datagram, Datagram]:
    reloading = await notify.expect("RELOADING=1")
    now_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert 0 < int(reloading.fields["MONOTONIC_USEC"]) <= now_usec
    return reloading, await notify.expect("READY=1")


async def test_sighup_applies_a_valid_config_and_keeps_the_old_one_when_invalid(
    notify: NotifyListener, gateway_process: GatewayFactory
) -> None:
    async with (fake_vllm("a") as (url_a, state_a), fake_vllm("b") as (url_b, _),
                aiohttp.ClientSession() as session):
        gw = gateway_process()
        first = gateway_config(gw.port, {"a": vllm_backend(url_a, "a")})
        await start(gw, notify, first)
        assert await model_ids(session, gw) == {"a"}

        # A slow request to backend a is in flight while a reload changes a's config (a new
        # alias): the old upstream drains it instead of dropping it.
        state_a.delay = 1.5
        slow = asyncio.create_task(embed(session, gw, "a", ["in flight"]))
        await wait_for_request(state_a)
        second = gateway_config(gw.port, {
            "a": vllm_backend(url_a, "a") | {"models": {"a": {"aliases": ["a2"]}}},
            "b": vllm_backend(url_b, "b"),
        })
        gw.write_config(second)
        gw.signal(signal.SIGHUP)
        await expect_reload(notify)
        status, body = await slow
        assert status == 200, body
        assert_vectors(body, "org/a", ["in flight"])
        state_a.delay = 0
        assert await model_ids(session, gw) == {"a", "a2", "b"}
        status, body = await embed(session, gw, "b", ["new backend"])
        assert status == 200, body
        assert_vectors(body, "org/b", ["new backend"])

        gw.write_config("server: {port: not-a-port}\nbackends:\n  c: {kind: nope}\n")
        gw.signal(signal.SIGHUP)
        await expect_reload(notify)
        rejected = [e for e in gw.log_events() if e.get("event") == "reload_rejected"]
        assert len(rejected) == 1, gw.log_text()
        problems = " ".join(rejected[0]["problems"])
        assert "server.port" in problems and "backends.c" in problems
        assert await model_ids(session, gw) == {"a", "a2", "b"}
        for model, upstream_model in (("a2", "org/a"), ("b", "org/b")):
            status, body = await embed(session, gw, model, ["still served"])
            assert status == 200, body
            assert_vectors(body, upstream_model, ["still served"])


async def wait_for_request(state: FakeState, count: int = 1) -> None:
    """Until the fake has received ``count`` embedding requests."""
    deadline = time.monotonic() + WAIT
    while sum(path.endswith("embeddings") for path, _ in state.requests) < count:
        assert time.monotonic() < deadline, "the upstream never received the request"
        await asyncio.sleep(0.02)


# --- shutdown --------------------------------------------------------------------------------


async def test_sigterm_finishes_the_request_in_flight_and_exits_zero(
    notify: NotifyListener, gateway_process: GatewayFactory
) -> None:
    async with fake_vllm("a") as (url, state), aiohttp.ClientSession() as session:
        gw = gateway_process()
        await start(gw, notify, gateway_config(gw.port, {"a": vllm_backend(url, "a")},
                                               shutdown_timeout=6))
        state.delay = 2.0
        texts = ["slow one", "slow two"]
        slow = asyncio.create_task(embed(session, gw, "a", texts))
        await wait_for_request(state)
        gw.signal(signal.SIGTERM)
        stopping = await notify.expect("STOPPING=1")
        assert "STATUS" in stopping.fields

        # Work that arrives while the request drains is refused with a retryable 503, and
        # /health tells load balancers that this instance is going away.
        async with aiohttp.ClientSession() as late:
            async with late.post(
                f"{gw.url}/v1/embeddings", json={"model": "a", "input": "late"}
            ) as response:
                assert response.status == 503
                assert response.headers["Retry-After"]
                assert (await response.json())["error"]["type"] == "service_unavailable"
            async with late.get(f"{gw.url}/health") as response:
                assert response.status == 503
                assert (await response.json())["draining"] is True

        status, body = await slow
        assert status == 200, body
        assert_vectors(body, "org/a", texts)
        assert await gw.wait() == 0
        assert any(e.get("event") == "stopped" for e in gw.log_events())


# --- managed children ------------------------------------------------------------------------


async def test_managed_processes_get_what_the_config_names_not_the_notify_socket(
    notify: NotifyListener, gateway_process: GatewayFactory, tmp_path: Path
) -> None:
    env_file, pid_file = tmp_path / "child.env", tmp_path / "child.pid"
    port = free_port()
    script = (f"env > {env_file}; echo $$ > {pid_file}; "
              f"exec {sys.executable} -m tests.fakes.vllm --model org/{{model}} "
              f"--served-model-name {{model}} --dims {DIMS} --port {{port}}")
    backend = {
        "kind": "vllm",
        "base_url": f"http://127.0.0.1:{port}",
        "managed": {"runtime": "process", "command": ["sh", "-c", script],
                    "env": {"MARKER_FOR_CHILD": "${MARKER_FOR_CHILD}"},
                    "start_timeout": 20, "stop_timeout": 5},
        "models": {"m": {"preload": True}},
    }
    gw = gateway_process()
    try:
        await start(gw, notify, gateway_config(gw.port, {"p": backend}, ready_after_preload=True),
                    WATCHDOG_USEC="30000000", WATCHDOG_PID="1", MARKER_FOR_CHILD="yes",
                    GATEWAY_ONLY_KEY="not for children")
        async with aiohttp.ClientSession() as session:
            status, body = await embed(session, gw, "m", ["from a child"])
        assert status == 200, body
        assert_vectors(body, "org/m", ["from a child"])
        child_env = dict(line.split("=", 1) for line in env_file.read_text().splitlines()
                         if "=" in line)
        assert child_env.get("MARKER_FOR_CHILD") == "yes"  # the file is the child's environment
        assert not set(SYSTEMD_VARIABLES) & set(child_env)
        assert "GATEWAY_ONLY_KEY" not in child_env  # the config does not name it
        gw.signal(signal.SIGTERM)
        assert await gw.wait() == 0
    finally:
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


# --- metrics ---------------------------------------------------------------------------------


async def scrape(session: aiohttp.ClientSession, gw: GatewayProcess,
                 **headers: str) -> tuple[int, dict[str, float]]:
    async with session.get(f"{gw.url}/metrics", headers=headers) as response:
        if response.status != 200:
            return response.status, {}
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return 200, samples


async def test_metrics_move_and_need_the_key_unless_public(
    notify: NotifyListener, gateway_process: GatewayFactory
) -> None:
    key = {"Authorization": "Bearer sekret"}
    requests = "embedding_gateway_requests_total{backend=a,model=a,status=200,task=embed}"
    inputs = "embedding_gateway_inputs_total{backend=a,model=a,task=embed}"
    async with fake_vllm("a") as (url, _), aiohttp.ClientSession() as session:
        gw = gateway_process()
        config = gateway_config(gw.port, {"a": vllm_backend(url, "a")}, api_keys=["sekret"])
        await start(gw, notify, config)

        assert (await scrape(session, gw))[0] == 401
        status, before = await scrape(session, gw, **key)
        assert status == 200
        assert before.get(requests, 0) == 0
        for _ in range(3):
            status, body = await embed(session, gw, "a", ["x", "y"], **key)
            assert status == 200, body
        _, after = await scrape(session, gw, **key)
        assert after[requests] == 3
        assert after[inputs] == 6
        assert after["process_resident_memory_bytes{}"] > 0

        gw.write_config(config | {"metrics": {"public": True}})
        gw.signal(signal.SIGHUP)
        await expect_reload(notify)
        status, public = await scrape(session, gw)
        assert status == 200
        assert public[requests] == 3  # counters survive a reload
        status, _ = await embed(session, gw, "a", ["x"])
        assert status == 401  # only /metrics became public



def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def test_a_killed_gateway_takes_its_managed_processes_with_it(
    notify: NotifyListener, gateway_process: GatewayFactory
) -> None:
    """SIGKILL leaves no cleanup to the gateway; the kernel ends its model servers."""
    if not shutil.which("setpriv"):
        pytest.skip("util-linux setpriv is not installed")
    port = free_port()
    backend = {
        "kind": "vllm",
        "base_url": f"http://127.0.0.1:{port}",
        "managed": {"runtime": "process", "start_timeout": 20,
                    "command": [sys.executable, "-m", "tests.fakes.vllm", "--model", "{model}",
                                "--port", "{port}"]},
        "models": {"m": {"preload": True}},
    }
    gw = gateway_process()
    await start(gw, notify, gateway_config(gw.port, {"p": backend}, ready_after_preload=True))
    [started] = [e for e in gw.log_events() if e.get("event") == "process_started"]
    child = int(started["pid"])
    assert running(child)
    try:
        gw.signal(signal.SIGKILL)
        await gw.wait()
        deadline = time.monotonic() + WAIT
        while running(child):
            assert time.monotonic() < deadline, f"model server {child} outlived the gateway"
            await asyncio.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
