"""The notifier against a real AF_UNIX datagram socket, as systemd would listen on it."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from embedding_gateway.systemd import Notifier, child_environ


class NotifySocket:
    """The listening end of ``NOTIFY_SOCKET``."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def environ(self, **extra: str) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.env_value, **extra}

    def receive(self) -> str:
        self.sock.settimeout(5)
        return self.sock.recv(4096).decode()

    def drain(self) -> list[str]:
        """Every datagram already queued, without waiting."""
        self.sock.setblocking(False)
        messages = []
        while True:
            try:
                messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return messages


def _bind(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    return sock


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifySocket]:
    if request.param == "path":
        path = str(tmp_path / "notify.sock")
        sock, env_value = _bind(path), path
    else:
        name = f"embedding-gateway-test-{uuid.uuid4().hex}"
        sock, env_value = _bind("\0" + name), "@" + name
    with sock:
        yield NotifySocket(sock, env_value)


def test_ready_with_status(notify_socket: NotifySocket) -> None:
    notifier = Notifier(notify_socket.environ())
    assert notifier.enabled
    notifier.ready("serving 3 models")
    assert notify_socket.receive() == "READY=1\nSTATUS=serving 3 models"


def test_ready_without_status(notify_socket: NotifySocket) -> None:
    Notifier(notify_socket.environ()).ready()
    assert notify_socket.receive() == "READY=1"


def test_status_is_one_utf8_line(notify_socket: NotifySocket) -> None:
    Notifier(notify_socket.environ()).status("loading nlpai-lab/KURE-v1\n한국어 모델")
    assert notify_socket.receive() == "STATUS=loading nlpai-lab/KURE-v1 한국어 모델"


def test_reloading_carries_monotonic_usec_in_the_same_datagram(
    notify_socket: NotifySocket,
) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier(notify_socket.environ()).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = notify_socket.receive().split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_stopping(notify_socket: NotifySocket) -> None:
    notifier = Notifier(notify_socket.environ())
    notifier.stopping("draining 2 requests")
    notifier.stopping()
    assert notify_socket.receive() == "STOPPING=1\nSTATUS=draining 2 requests"
    assert notify_socket.receive() == "STOPPING=1"


def test_watchdog_interval_is_half_of_watchdog_usec(notify_socket: NotifySocket) -> None:
    assert Notifier(notify_socket.environ(WATCHDOG_USEC="30000000")).watchdog_interval() == 15.0
    own_pid = notify_socket.environ(WATCHDOG_USEC="2000000", WATCHDOG_PID=str(os.getpid()))
    assert Notifier(own_pid).watchdog_interval() == 1.0
    assert Notifier(notify_socket.environ()).watchdog_interval() is None
    assert Notifier(notify_socket.environ(WATCHDOG_USEC="soon")).watchdog_interval() is None
    assert Notifier({"WATCHDOG_USEC": "2000000"}).watchdog_interval() is None


async def test_watchdog_pings_from_the_event_loop(notify_socket: NotifySocket) -> None:
    notifier = Notifier(notify_socket.environ(WATCHDOG_USEC="2000000"))
    task = asyncio.create_task(notifier.run_watchdog())
    await asyncio.sleep(3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pings = notify_socket.drain()
    assert len(pings) >= 2
    assert set(pings) == {"WATCHDOG=1"}


async def test_no_pings_while_the_event_loop_is_blocked(notify_socket: NotifySocket) -> None:
    notifier = Notifier(notify_socket.environ(WATCHDOG_USEC="2000000"))
    task = asyncio.create_task(notifier.run_watchdog())
    await asyncio.sleep(0.1)
    assert notify_socket.drain() == ["WATCHDOG=1"]

    time.sleep(2.5)  # noqa: ASYNC251 - a handler doing blocking work on the loop
    assert notify_socket.drain() == []

    await asyncio.sleep(0.1)
    assert notify_socket.drain() == ["WATCHDOG=1"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_watchdog_pid_of_another_process_disables_the_pings(
    notify_socket: NotifySocket,
) -> None:
    other_pid = str(os.getppid())
    notifier = Notifier(notify_socket.environ(WATCHDOG_USEC="2000000", WATCHDOG_PID=other_pid))
    assert notifier.watchdog_interval() is None
    await asyncio.wait_for(notifier.run_watchdog(), timeout=5)
    notifier.status("still here")
    assert notify_socket.receive() == "STATUS=still here"


async def test_silent_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    for notifier in (Notifier(), Notifier({})):
        assert not notifier.enabled
        notifier.ready("ready")
        notifier.status("status")
        notifier.reloading()
        notifier.stopping()
        assert notifier.watchdog_interval() is None
        await asyncio.wait_for(notifier.run_watchdog(), timeout=5)


def test_reads_the_process_environment_by_default(
    notify_socket: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.env_value)
    Notifier().ready()
    assert notify_socket.receive() == "READY=1"


def test_send_failures_are_swallowed(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})
    assert notifier.enabled
    notifier.ready("nobody listens")
    notifier.stopping()


@pytest.mark.timeout(20)
def test_a_full_socket_queue_does_not_block(notify_socket: NotifySocket) -> None:
    queue_length = int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())
    notifier = Notifier(notify_socket.environ())
    for number in range(queue_length + 20):
        notifier.status(f"update {number}")
    received = notify_socket.drain()
    assert received[0] == "STATUS=update 0"
    assert len(received) < queue_length + 20


def test_unsupported_socket_address_disables_the_notifier() -> None:
    assert not Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


def test_child_environ_strips_the_notify_variables_and_the_gateways_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    monkeypatch.setenv("HF_HOME", "/var/lib/embedding-gateway/hf")
    monkeypatch.setenv("GATEWAY_API_KEY", "client-key")
    monkeypatch.setenv("OPENAI_API_KEY", "another-backends-key")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    env = child_environ({"PORT": "18000"})
    assert not {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} & env.keys()
    assert not {"GATEWAY_API_KEY", "OPENAI_API_KEY"} & env.keys()
    assert env["CUDA_VISIBLE_DEVICES"] == "1"
    assert env["HF_HOME"] == "/var/lib/embedding-gateway/hf"
    assert env["PORT"] == "18000"
    assert env["PATH"] == os.environ["PATH"]
    assert "NOTIFY_SOCKET" in os.environ
