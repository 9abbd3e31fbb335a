"""``embedding-gateway serve`` as a real process in front of a fake vLLM: JSON logs, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.fakes import serve_fake
from tests.fakes.vectors import which_model
from tests.fakes.vllm import create_vllm_app
from tests.ports import free_port

MODEL = "intfloat/e5-base-v2"
CLIENT_KEY = "client-key-4f9a2c"
UPSTREAM_KEY = "upstream-key-7d1e0b"
START_BOUND = 20.0  # seconds for the process to start listening; a liveness bound


def command() -> list[str]:
    exe = shutil.which("embedding-gateway")
    return [exe] if exe else [sys.executable, "-m", "embedding_gateway.cli"]


async def read_until(stream: asyncio.StreamReader, lines: list[str], event: str) -> None:
    while True:
        raw = await stream.readline()
        if not raw:
            raise AssertionError("the gateway exited early:\n" + "".join(lines))
        line = raw.decode()
        lines.append(line)
        try:
            if json.loads(line).get("event") == event:
                return
        except ValueError:
            continue


async def test_serve_answers_logs_json_and_stops_on_sigterm(tmp_path: Path) -> None:
    app = create_vllm_app(MODEL, dims=32, api_key=UPSTREAM_KEY)
    async with serve_fake(app) as upstream:
        port = free_port()
        config = {
            "server": {"host": "127.0.0.1", "port": port, "api_keys": [CLIENT_KEY],
                       "shutdown_timeout": 5, "playground": False},
            "backends": {"vllm": {"kind": "vllm", "base_url": upstream,
                                  "api_key": "${UPSTREAM_KEY}", "models": {MODEL: {}}}},
        }
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
        env["UPSTREAM_KEY"] = UPSTREAM_KEY
        proc = await asyncio.create_subprocess_exec(
            *command(), "serve", "--config", str(path),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
        )
        assert proc.stdout is not None
        lines: list[str] = []
        try:
            async with asyncio.timeout(START_BOUND):
                await read_until(proc.stdout, lines, "listening")
            url = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as session:
                async with session.post(
                    url + "/v1/embeddings",
                    json={"model": MODEL, "input": ["hello there", "general"]},
                    headers={"Authorization": f"Bearer {CLIENT_KEY}",
                             "X-Request-ID": "cli-test-1"},
                ) as resp:
                    assert resp.status == 200, await resp.text()
                    body: dict[str, Any] = await resp.json()
                async with session.post(url + "/v1/embeddings",
                                        json={"model": MODEL, "input": "x"}) as resp:
                    assert resp.status == 401
            assert which_model(body["data"][0]["embedding"], "hello there", [MODEL], 32) == MODEL
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(START_BOUND):
                rest, _ = await proc.communicate()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, "".join(lines) + rest.decode()
    output = "".join(lines) + rest.decode()
    assert CLIENT_KEY not in output
    assert UPSTREAM_KEY not in output
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    requests = [r for r in records if r.get("event") == "request"
                and r.get("path") == "/v1/embeddings"]
    assert len(requests) == 2, output
    ok = next(r for r in requests if r["request_id"] == "cli-test-1")
    assert ok["model"] == MODEL
    assert ok["backend"] == "vllm"
    assert ok["inputs"] == 2
    assert ok["status"] == 200
    assert isinstance(ok["ms"], int | float)
    denied = next(r for r in requests if r["request_id"] != "cli-test-1")
    assert denied["status"] == 401


@pytest.mark.parametrize("args", [["serve", "--port"], ["serve", "--config"], ["frobnicate"]])
async def test_bad_command_lines_fail(args: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec(
        *command(), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode != 0
    assert b"usage" in err


async def test_serve_refuses_a_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("backends:\n  x:\n    kind: tei\n    base_url: nope\n", encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(
        *command(), "serve", "--config", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    assert proc.returncode != 0
    assert b"backends.x.base_url" in out
