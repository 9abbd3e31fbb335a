"""Fake Ollama, TEI and vLLM servers: real aiohttp apps on loopback speaking each wire format.

Every fake keeps a `FakeState` under `FAKE_STATE` on its app; tests change it to make the fake
slow (`delay`), stuck (`hang`), failing (`fail`) or unhealthy (`healthy=False`), and read
`requests` to see what the gateway sent. `serve_fake` runs an app on 127.0.0.1 for one test;
each module also runs as a process (`python -m tests.fakes.tei ...`) through `run_cli`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

__all__ = [
    "FAKE_STATE",
    "FakeError",
    "FakeState",
    "add_common_args",
    "fail_payload",
    "hold",
    "install_state",
    "pause",
    "run_cli",
    "serve_fake",
]

POLL_SECONDS = 0.02


@dataclass
class FakeState:
    """What a fake serves and how it misbehaves; tests mutate it while the server runs."""

    model: str
    dims: int
    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    delay: float = 0.0
    hang: bool = False
    fail: tuple[int, Any] | None = None
    healthy: bool = True
    stopping: asyncio.Event = field(default_factory=asyncio.Event, repr=False)


FAKE_STATE = web.AppKey("fake_state", FakeState)


class FakeError(Exception):
    """An error a fake answers with ``status``; each fake renders it in its upstream's shape."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def install_state(app: web.Application, state: FakeState) -> None:
    """Store `state` on `app`, record every request and release held requests on shutdown."""
    app[FAKE_STATE] = state
    app.middlewares.append(_record)

    async def release(_: web.Application) -> None:
        state.stopping.set()

    app.on_shutdown.append(release)


@web.middleware
async def _record(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    body: dict[str, Any] = {}
    if request.can_read_body:
        raw = await request.read()
        with contextlib.suppress(ValueError):
            parsed = json.loads(raw)
            body = parsed if isinstance(parsed, dict) else {"_body": parsed}
    request.app[FAKE_STATE].requests.append((request.path, body))
    return await handler(request)


async def hold(request: web.Request) -> None:
    """Wait while `hang` is set; if the server stops meanwhile, drop the connection unanswered."""
    state = request.app[FAKE_STATE]
    while state.hang:
        if state.stopping.is_set():
            if request.transport is not None:
                request.transport.close()
            raise asyncio.CancelledError
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(state.stopping.wait(), POLL_SECONDS)


async def pause(request: web.Request) -> None:
    """What every embedding request goes through first: `hang`, then `delay`."""
    await hold(request)
    state = request.app[FAKE_STATE]
    if state.delay > 0:
        await asyncio.sleep(state.delay)


def fail_payload(state: FakeState, default: Callable[[int], str]) -> tuple[int, Any, str] | None:
    """(status, payload, message) when `fail` is set: a str payload is the message, a dict or
    list is sent verbatim, None uses the upstream's usual message for that status."""
    if state.fail is None:
        return None
    status, payload = state.fail
    message = payload if isinstance(payload, str) else default(status)
    return status, payload, message


@contextlib.asynccontextmanager
async def serve_fake(app: web.Application) -> AsyncIterator[str]:
    """Run `app` on 127.0.0.1 on a free port; yields its base URL and stops it afterwards."""
    runner = web.AppRunner(app, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def add_common_args(parser: argparse.ArgumentParser, default_port: int) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port)
    parser.add_argument(
        "--startup-delay", type=float, default=0.0, help="seconds before the port is bound"
    )
    parser.add_argument(
        "--exit-after-start", action="store_true", help="print a few log lines and exit 1"
    )


def say(line: str) -> None:
    print(line, flush=True)


def run_cli(
    name: str,
    parser: argparse.ArgumentParser,
    build: Callable[[argparse.Namespace], web.Application],
    argv: Sequence[str] | None = None,
    crash_lines: Sequence[str] = (),
) -> int:
    """Parse arguments (unknown ones are reported and ignored, as real images get flags the
    fake does not model), then serve until SIGTERM or SIGINT. Prints
    `<name> listening on http://HOST:PORT` once the port is bound."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        say(f"{name}: ignoring arguments {' '.join(unknown)}")
    if args.exit_after_start:
        for line in crash_lines:
            say(line)
        return 1
    return asyncio.run(_serve(name, build(args), args.host, args.port, args.startup_delay))


async def _serve(name: str, app: web.Application, host: str, port: int, delay: float) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if delay > 0:
        say(f"{name}: loading model")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            return 0
    runner = web.AppRunner(app, shutdown_timeout=2.0, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        bound_host, bound_port = runner.addresses[0][:2]
        say(f"{name} listening on http://{bound_host}:{bound_port}")
        await stop.wait()
        say(f"{name}: shutting down")
    finally:
        await runner.cleanup()
    return 0
