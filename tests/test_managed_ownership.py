"""A gateway runs only what it started: a port another program holds is refused before a
managed start (said in the answer, ``/health`` and the log) instead of that program being
taken for the instance, and how a managed process ended is always logged. Real processes:
the TEI fake as the managed server, run by ``ProcessRuntime``."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from embedding_gateway.state import GATEWAY
from embedding_gateway.supervisor import Supervisor
from tests.conftest import serve_app
from tests.fakes.tei import create_tei_app
from tests.ports import free_port
from tests.service_support import REPO_ROOT

pytestmark = pytest.mark.timeout(120)
MODEL = "org/owned"


def managed_tei(port: int, command: list[str] | None = None) -> dict[str, Any]:
    return {"backends": {"local": {
        "kind": "tei",
        "base_url": f"http://127.0.0.1:{port}",
        "managed": {
            "runtime": "process",
            "command": command or [sys.executable, "-m", "tests.fakes.tei", "--model-id",
                                   "{model}", "--port", "{port}", "--dims", "8"],
            "env": {"PYTHONPATH": str(REPO_ROOT)},
            "start_timeout": 30, "queue_timeout": 40, "stop_timeout": 5,
        },
        "models": {MODEL: {}},
    }}}


async def embed(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with session.post(f"{url}/v1/embeddings",
                            json={"model": MODEL, "input": "x"}) as response:
        return response.status, await response.json()


async def test_a_second_gateway_on_the_same_port_never_uses_the_first_ones_process() -> None:
    port = free_port()
    async with serve_app(managed_tei(port)) as (first, first_app), \
            aiohttp.ClientSession() as session:
        status, body = await embed(session, first)
        assert status == 200, body
        supervisor = first_app[GATEWAY].upstreams["local"]
        assert isinstance(supervisor, Supervisor)
        first_pid = int(next(iter(supervisor.instances.values())).handle.ref)  # type: ignore[union-attr]

        with capture_logs() as events:
            async with serve_app(managed_tei(port)) as (second, _):
                status, body = await embed(session, second)
                assert status == 503, body  # not the first gateway's vectors
                assert f"port {port} is already in use" in body["error"]["message"], body
                async with session.get(f"{second}/health") as response:
                    health = await response.json()
        backend = health["backends"]["local"]
        assert backend["healthy"] is False
        assert f"port {port} is already in use" in backend["reason"], backend
        failed = [e for e in events if e["event"] == "instance_failed"]
        assert failed and f"port {port} is already in use" in failed[0]["reason"], events

        os.kill(first_pid, 0)  # the second gateway left the first one's process alone
        status, body = await embed(session, first)
        assert status == 200, body


async def test_a_process_that_fails_to_start_says_how_it_ended() -> None:
    script = ("echo loading weights; echo 'db postgres://user:hunter2@db/x'; "
              "echo out of memory >&2; exit 3")
    with capture_logs() as events:
        async with serve_app(managed_tei(free_port(), ["sh", "-c", script])) as (url, _), \
                aiohttp.ClientSession() as session:
            status, body = await embed(session, url)
    assert status == 503, body
    message = body["error"]["message"]
    assert "exited with status 3 while starting" in message, message
    assert "loading weights" in message and "out of memory" in message, message
    assert "hunter2" not in message
    failed = [e for e in events if e["event"] == "instance_failed"]
    assert failed and "exited with status 3" in failed[0]["reason"], events


async def test_a_serving_process_killed_from_outside_is_logged_with_its_signal() -> None:
    with capture_logs() as events:
        async with serve_app(managed_tei(free_port())) as (url, app), \
                aiohttp.ClientSession() as session:
            status, body = await embed(session, url)
            assert status == 200, body
            supervisor = app[GATEWAY].upstreams["local"]
            assert isinstance(supervisor, Supervisor)
            handle = next(iter(supervisor.instances.values())).handle
            assert handle is not None
            os.kill(int(handle.ref), signal.SIGKILL)
            for _ in range(100):  # noticed within a second or two, with no request
                if any(e["event"] == "instance_died" for e in events):
                    break
                await asyncio.sleep(0.1)
            status, body = await embed(session, url)  # and started again on demand
            assert status == 200, body
    died = [e for e in events if e["event"] == "instance_died"]
    assert died, events
    assert died[0]["how"] == "killed by signal 9 (SIGKILL)", died[0]
    assert "tei listening on http://127.0.0.1" in died[0]["last_lines"], died[0]


async def test_a_program_that_takes_the_port_after_the_check_is_not_taken_for_the_instance(
) -> None:
    """The managed command never listens; another server binds its port after the check
    before the start, and answers as the right model: the start fails, naming the port."""
    port = free_port()
    async with serve_app(managed_tei(port, ["sleep", "600"])) as (url, app), \
            aiohttp.ClientSession() as session:
        request = asyncio.create_task(embed(session, url))
        supervisor = app[GATEWAY].upstreams["local"]
        assert isinstance(supervisor, Supervisor)
        for _ in range(200):  # started: the port was free at the check
            if any(i.handle is not None for i in supervisor.instances.values()):
                break
            await asyncio.sleep(0.05)
        impostor = web.AppRunner(create_tei_app(MODEL, dims=8))
        await impostor.setup()
        await web.TCPSite(impostor, "127.0.0.1", port).start()
        try:
            status, body = await request
        finally:
            await impostor.cleanup()
    assert status == 503, body
    assert f"port {port} is answered by a program this gateway did not start" \
        in body["error"]["message"], body
