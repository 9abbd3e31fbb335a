"""A log target that takes no more lines (a full disk, a file-size limit) must not stop the
gateway: requests are answered, health checks go on, and SIGTERM exits cleanly."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.fakes import FAKE_STATE, serve_fake
from tests.fakes.tei import create_tei_app
from tests.ports import free_port
from tests.service_support import GatewayProcess, NotifyListener, gateway_config
from tests.test_service import embed, start

FULL = Path("/dev/full")  # every write fails with ENOSPC
MODEL = "org/model"


class GatewayLoggingToFull(GatewayProcess):
    def log_text(self) -> str:
        return "(the gateway's output went to /dev/full)"  # reading it would never end


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyListener]:
    listener = NotifyListener.bind(tmp_path)
    yield listener
    listener.close()


async def until_health_is(session: aiohttp.ClientSession, gw: GatewayProcess,
                          status: int) -> None:
    for _ in range(100):
        async with session.get(f"{gw.url}/health") as response:
            if response.status == status:
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"/health never answered {status}")


@pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full")
async def test_a_full_log_target_breaks_nothing(tmp_path: Path, notify: NotifyListener) -> None:
    gw = GatewayLoggingToFull(tmp_path / "gateway.yaml", FULL, free_port())
    app = create_tei_app(MODEL, dims=8)
    state = app[FAKE_STATE]
    try:
        async with serve_fake(app) as url, aiohttp.ClientSession() as session:
            backend = {"kind": "tei", "base_url": url, "models": {MODEL: {}}}
            await start(gw, notify, gateway_config(gw.port, {"t": backend}))
            for n in range(20):
                status, body = await embed(session, gw, MODEL, [f"text {n}"])
                assert status == 200, body
            state.healthy = False  # the health checks must still run, and see it
            await until_health_is(session, gw, 503)
            state.healthy = True
            await until_health_is(session, gw, 200)
            gw.signal(signal.SIGTERM)
            assert await gw.wait() == 0
    finally:
        gw.kill()
