#!/usr/bin/env python3
"""Soak a running gateway: mixed traffic for a bounded time, its resources sampled throughout.

The traffic, on loopback only, is what a gateway meets in a day: valid requests of every size
and encoding, bad ones (broken JSON, unknown models, empty inputs), clients that hang up while
their request is in flight, and idle connections left open. Every few seconds the gateway's
RSS, open file descriptors and event-loop tasks (``/metrics``) are recorded; a leak shows as
growth from the first quarter of the run to the last.

    python scripts/soak.py --gateway http://127.0.0.1:8000 --model fast-1024 \\
        --gateway-pid PID --minutes 2 --json soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson

CONCURRENCY = 16


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


async def loop_tasks(session: aiohttp.ClientSession, gateway: str) -> float | None:
    async with session.get(f"{gateway}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith("embedding_gateway_event_loop_tasks "):
                return float(line.split()[1])
    return None


def request_body(rng: random.Random, model: str, counter: itertools.count) -> tuple[str, bytes]:
    """(kind, body) for one request."""
    n = next(counter)
    roll = rng.random()
    if roll < 0.70:
        size = rng.choice((1, 1, 4, 32, 128))
        body = {"model": model, "input": [f"soak {n} {i}" for i in range(size)],
                "encoding_format": rng.choice(("float", "base64"))}
        return "valid", orjson.dumps(body)
    if roll < 0.80:
        return "bad_json", b'{"model": ' + str(n).encode()
    if roll < 0.90:
        return "unknown_model", orjson.dumps({"model": f"no-such-{n}", "input": "x"})
    return "empty_input", orjson.dumps({"model": model, "input": []})


async def client(session: aiohttp.ClientSession, args: argparse.Namespace, deadline: float,
                 seed: int, outcomes: Counter[str], counter: itertools.count) -> None:
    rng = random.Random(seed)
    url = f"{args.gateway}/v1/embeddings"
    headers = {"Content-Type": "application/json"}
    while time.monotonic() < deadline:
        kind, body = request_body(rng, args.model, counter)
        hang_up = rng.random() < 0.05
        try:
            async with asyncio.timeout(0.005 if hang_up else 60):
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    outcomes[f"{kind}:{response.status}"] += 1
        except TimeoutError:
            outcomes["hung_up" if hang_up else "timeout"] += 1
        except aiohttp.ClientError as exc:
            outcomes[f"error:{type(exc).__name__}"] += 1


async def idle_sockets(args: argparse.Namespace, deadline: float, opened: Counter[str]) -> None:
    """Connections that send nothing, opened a few at a time: the gateway closes them."""
    host, port = args.gateway.removeprefix("http://").split(":")
    while time.monotonic() < deadline:
        writers = []
        for _ in range(5):
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection(host, int(port))
                writers.append(writer)
                opened["idle_sockets"] += 1
        await asyncio.sleep(2)
        for writer in writers:
            writer.close()


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    deadline = time.monotonic() + args.minutes * 60
    outcomes: Counter[str] = Counter()
    samples: list[dict[str, Any]] = []
    counter = itertools.count()
    started = time.monotonic()
    connector = aiohttp.TCPConnector(limit=CONCURRENCY * 2)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def sample() -> None:
            while time.monotonic() < deadline:
                samples.append({"t": round(time.monotonic() - started, 1),
                                "rss_mb": round(rss_mb(args.gateway_pid), 1),
                                "fds": open_fds(args.gateway_pid),
                                "tasks": await loop_tasks(session, args.gateway),
                                "requests": sum(outcomes.values())})
                await asyncio.sleep(args.interval)

        work = [client(session, args, deadline, seed, outcomes, counter)
                for seed in range(CONCURRENCY)]
        await asyncio.gather(sample(), idle_sockets(args, deadline, outcomes), *work)
        await asyncio.sleep(3)  # what the run left behind, once it has settled
        settled = {"rss_mb": round(rss_mb(args.gateway_pid), 1),
                   "fds": open_fds(args.gateway_pid),
                   "tasks": await loop_tasks(session, args.gateway)}
    quarter = max(1, len(samples) // 4)
    first, last = samples[:quarter], samples[-quarter:]

    def mean(rows: list[dict[str, Any]], key: str) -> float:
        values = [row[key] for row in rows if row[key] is not None]
        return round(sum(values) / len(values), 1) if values else 0.0

    return {
        "minutes": args.minutes,
        "outcomes": dict(sorted(outcomes.items())),
        "server_errors": sum(v for k, v in outcomes.items() if k.split(":")[-1].startswith("5")),
        "first_quarter": {key: mean(first, key) for key in ("rss_mb", "fds", "tasks")},
        "last_quarter": {key: mean(last, key) for key in ("rss_mb", "fds", "tasks")},
        "after": settled,
        "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway", default="http://127.0.0.1:8000")
    parser.add_argument("--model", required=True)
    parser.add_argument("--gateway-pid", type=int, required=True)
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= 60:
        parser.error("--minutes must be within (0, 60]: a soak is bounded")
    report = asyncio.run(soak(args))
    summary = {k: v for k, v in report.items() if k != "samples"}
    print(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode())
    if args.json:
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return 1 if report["server_errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
