#!/usr/bin/env python3
"""What large token-id requests cost the gateway in memory.

Starts ``fast_upstream.py`` and a gateway in front of it (both on loopback, both stopped at
the end), sends ``--concurrency`` requests at once, each a ~``--megabytes`` MB body of
cl100k_base token ids of real text split into inputs of 8191 ids (as LangChain splits long
texts), and
reports the gateway's RSS before, at its peak (sampled every 10 ms, and the kernel's high
water mark) and after the requests are answered. Bounded: one round, a few seconds.

    python scripts/token_memory.py                        # token_ids: openai (the default)
    python scripts/token_memory.py --token-ids model      # ids forwarded to the upstream
    python scripts/token_memory.py --max-token-ids 0      # the default bound on token ids
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson
import tiktoken
import yaml

from embedding_gateway.cl100k import write_tiktoken_cache

SCRIPTS = Path(__file__).resolve().parent
MODEL = "fast-64"
INPUT_IDS = 8191


def memory_mb(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields


def text_ids() -> list[int]:
    """cl100k_base ids of real text (this repository's README), by tiktoken, offline."""
    with tempfile.TemporaryDirectory() as cache:
        write_tiktoken_cache(cache)
        os.environ["TIKTOKEN_CACHE_DIR"] = cache
        encoding = tiktoken.get_encoding("cl100k_base")
    return encoding.encode_ordinary((SCRIPTS.parent / "README.md").read_text())


def token_body(megabytes: float, seed: int, text: list[int]) -> tuple[bytes, int]:
    """A request body of about ``megabytes`` MB: the text's ids over and over, from a
    different place in it for each request, and how many ids it carries."""
    digits = len(orjson.dumps(text)) / len(text)  # "12345," as orjson writes it
    count = int(megabytes * 1e6 / digits)
    ids = np.resize(np.roll(np.array(text), -seed * 997), count).tolist()
    inputs = [ids[i:i + INPUT_IDS] for i in range(0, count, INPUT_IDS)]
    return orjson.dumps({"model": MODEL, "input": inputs}), count


async def wait_ready(url: str, proc: subprocess.Popen[bytes], seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"the gateway exited with {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{url}/health/ready") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)
    raise SystemExit("the gateway did not become ready")


async def measure(url: str, pid: int, bodies: list[bytes]) -> dict[str, Any]:
    samples: list[float] = []
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            samples.append(memory_mb(pid)["VmRSS"])
            await asyncio.sleep(0.01)

    before = memory_mb(pid)["VmRSS"]
    statuses: Counter[int] = Counter()
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async def post(body: bytes) -> None:
            async with session.post(f"{url}/v1/embeddings", data=body,
                                    headers={"Content-Type": "application/json"}) as response:
                await response.read()
                statuses[response.status] += 1

        sampler = asyncio.create_task(sample())
        started = time.monotonic()
        await asyncio.gather(*(post(body) for body in bodies))
        seconds = time.monotonic() - started
        done.set()
        await sampler
    await asyncio.sleep(2)
    after = memory_mb(pid)
    return {"rss_before_mb": round(before, 1), "rss_peak_mb": round(max(samples), 1),
            "high_water_mb": round(after["VmHWM"], 1), "rss_after_mb": round(after["VmRSS"], 1),
            "seconds": round(seconds, 2), "statuses": dict(statuses)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    upstream = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "fast_upstream.py"), "--port", "0", "--dims", "64",
         "--model", MODEL], stdout=subprocess.PIPE)
    gateway = None
    try:
        assert upstream.stdout is not None
        line = upstream.stdout.readline().decode()
        match = re.search(r"http://[\d.]+:(\d+)", line)
        if match is None:
            raise SystemExit(f"fast_upstream did not start: {line!r}")
        model: dict[str, Any] = {"dimensions": 64}
        if args.token_ids:
            model["token_ids"] = args.token_ids
        # bodies may wait behind others' parsing on a busy machine: no 408 for that here
        limits: dict[str, Any] = {"max_body_bytes": 32 * 1024 * 1024, "body_timeout": 600}
        if args.max_token_ids:
            limits["max_token_ids"] = args.max_token_ids
        # fast_upstream, one process parsing 16 large bodies, answers its health check late
        config = {"server": {"port": args.port, "playground": False, "limits": limits,
                             "health_timeout": 60, "health_interval": 60},
                  "backends": {"fast": {"kind": "vllm", "timeout": 600,
                                        "base_url": f"http://127.0.0.1:{match.group(1)}",
                                        "models": {MODEL: model}}}}
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
            yaml.safe_dump(config, handle)
        gateway = subprocess.Popen(
            [sys.executable, "-m", "embedding_gateway.cli", "serve", "--config", handle.name,
             "--log-level", "warning"], stdout=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{args.port}"
        asyncio.run(wait_ready(url, gateway))
        bodies, text = [], text_ids()
        for n in range(args.concurrency):
            body, ids = token_body(args.megabytes, n, text)
            bodies.append(body)
        result = asyncio.run(measure(url, gateway.pid, bodies))
        return {"concurrency": args.concurrency, "body_mb": round(len(bodies[0]) / 1e6, 1),
                "ids_per_request": ids, "token_ids": args.token_ids or "(default)", **result}
    finally:
        for proc in (gateway, upstream):
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--megabytes", type=float, default=15.0, help="size of each body")
    parser.add_argument("--port", type=int, default=18123, help="the gateway's port")
    parser.add_argument("--token-ids", choices=("openai", "model"), default=None,
                        help="the model's token_ids setting (default: not set)")
    parser.add_argument("--max-token-ids", type=int, default=8_000_000,
                        help="server.limits.max_token_ids; 0 leaves the default")
    args = parser.parse_args(argv)
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
