"""The gateway as systemd runs it: a real ``embedding-gateway serve`` process, a real
``NOTIFY_SOCKET`` bound by the test, real signals."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
WAIT = 20.0  # liveness bound for anything the gateway should do "soon"


@dataclass
class Datagram:
    received: float  # time.monotonic() on arrival
    text: str

    @property
    def fields(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.text.splitlines() if "=" in line)


@dataclass
class NotifyListener:
    """The listening end of ``NOTIFY_SOCKET``, as systemd binds it; read from the event loop."""

    sock: socket.socket
    env_value: str
    history: list[Datagram] = field(default_factory=list)
    _pending: list[Datagram] = field(default_factory=list)

    @classmethod
    def bind(cls, directory: Path, *, abstract: bool = False) -> NotifyListener:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"embedding-gateway-test-{uuid.uuid4().hex}"
            sock.bind("\0" + name)
            value = "@" + name
        else:
            value = str(directory / "notify.sock")
            sock.bind(value)
        sock.setblocking(False)
        return cls(sock, value)

    def close(self) -> None:
        self.sock.close()

    async def next(self, timeout: float = WAIT) -> Datagram:
        if self._pending:
            return self._pending.pop(0)
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), timeout)
        datagram = Datagram(time.monotonic(), data.decode())
        self.history.append(datagram)
        return datagram

    async def expect(self, predicate: Callable[[Datagram], bool] | str,
                     timeout: float = WAIT) -> Datagram:
        """The next datagram that matches (a predicate, or a line it must contain); the ones
        skipped stay in ``history``."""
        match = predicate if callable(predicate) else (
            lambda d: predicate in d.text.splitlines())
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                datagram = await self.next(max(remaining, 0.001))
            except TimeoutError:
                seen = [d.text for d in self.history[-10:]]
                message = f"no datagram matched within {timeout}s; last: {seen}"
                raise AssertionError(message) from None
            if match(datagram):
                return datagram

    async def collect(self, seconds: float) -> list[Datagram]:
        """Every datagram that arrives within ``seconds``."""
        deadline = time.monotonic() + seconds
        got = []
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                got.append(await self.next(remaining))
            except TimeoutError:
                break
        return got


@dataclass
class GatewayProcess:
    """``python -m embedding_gateway.cli serve --config PATH`` with its output in a file."""

    config_path: Path
    log_path: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self, config: dict[str, Any] | str) -> None:
        text = config if isinstance(config, str) else yaml.safe_dump(config)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.config_path)

    def start(self, env: dict[str, str]) -> None:
        full_env = {k: v for k, v in os.environ.items()
                    if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        full_env.update(env)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "embedding_gateway.cli", "serve",
                 "--config", str(self.config_path)],
                cwd=REPO_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    async def wait(self, timeout: float = WAIT) -> int:
        assert self.process is not None
        return await asyncio.to_thread(self.process.wait, timeout)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                events.append(json.loads(line))
        return events

    def kill(self) -> None:
        """Teardown: the whole session (managed children included), then reap."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)


def vllm_backend(base_url: str, *models: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "vllm", "base_url": base_url, "models": {m: {} for m in models}, **extra}


def gateway_config(port: int, backends: dict[str, Any], **server: Any) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": port, "health_interval": 0.5,
                   "playground": False, **server},
        "backends": backends,
    }
