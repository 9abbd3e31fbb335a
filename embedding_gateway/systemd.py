"""Tell systemd when the gateway is ready, alive, reloading and stopping (``sd_notify``).

The datagrams are written to ``NOTIFY_SOCKET`` directly rather than through
``sdnotify.SystemdNotifier`` (0.3.2). That class does map the abstract-namespace form
``@name`` to ``\\0name``, but it reads ``NOTIFY_SOCKET`` only from the process environment
(the address cannot be injected, so tests cannot aim it at their own socket), it encodes
messages as Latin-1 where the protocol is UTF-8 (a ``STATUS=`` naming a Korean model fails),
and it swallows every exception with a bare ``except`` unless ``debug`` is set. What remains
is a ``sendto`` of one datagram, done here the way libsystemd's ``sd_notify`` does it: a fresh
socket per message, nothing held open, never blocking the event loop.

Without ``NOTIFY_SOCKET`` every method is a silent no-op; a failed send is logged at debug
level and never raised.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger(__name__)

SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _socket_address(value: str | None) -> str | None:
    """A path or a Linux abstract-namespace address (``@name`` -> ``\\0name``)."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    log.debug("notify_socket_unsupported", notify_socket=value)
    return None


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


class Notifier:
    """The service side of the ``sd_notify`` protocol, read from ``environ`` once."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _socket_address(env.get("NOTIFY_SOCKET"))
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def ready(self, status: str | None = None) -> None:
        self._send("READY=1", status)

    def status(self, text: str) -> None:
        self._send(None, text)

    def reloading(self) -> None:
        """Start of a reload; send ``ready()`` again when it is done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}", None)

    def extend_timeout(self, seconds: float, status: str | None = None) -> None:
        """Ask for ``seconds`` more before systemd gives up on the start (a long preload)."""
        self._send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}", status)

    def stopping(self, status: str | None = None) -> None:
        self._send("STOPPING=1", status)

    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half of ``WATCHDOG_USEC``, as ``sd_watchdog_enabled`` advises.

        ``None`` when there is no watchdog for this process (unset, invalid, or
        ``WATCHDOG_PID`` names another process, e.g. a parent that left it in the environment).
        """
        if not self.enabled or not self._watchdog_usec:
            return None
        if self._watchdog_pid and self._watchdog_pid != str(os.getpid()):
            return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            log.debug("watchdog_usec_invalid", watchdog_usec=self._watchdog_usec)
            return None
        if usec <= 0:
            return None
        return usec / 2_000_000

    async def run_watchdog(self) -> None:
        """Ping ``WATCHDOG=1`` from the event loop until cancelled.

        The pings run on the loop on purpose: a loop blocked by synchronous work stops them,
        and systemd restarts a gateway that no longer answers anyone.
        """
        interval = self.watchdog_interval()
        if interval is None:
            return
        while True:
            self._send("WATCHDOG=1", None)
            await asyncio.sleep(interval)

    def _send(self, state: str | None, status: str | None) -> None:
        if self._address is None:
            return
        lines = [] if state is None else [state]
        if status is not None:
            lines.append(f"STATUS={_one_line(status)}")
        message = "\n".join(lines).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.setblocking(False)
                sock.sendto(message, self._address)
        except OSError as exc:
            log.debug("sd_notify_failed", notification=lines[0], error=str(exc))


# What a model server needs from the gateway's environment to run at all; everything else
# (client API keys, other backends' keys, the notify socket) stays with the gateway.
CHILD_PASSLIST = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TERM",
    "LD_LIBRARY_PATH", "VIRTUAL_ENV", "XDG_CACHE_HOME", "HF_HOME", "HF_HUB_CACHE",
    "HF_HUB_OFFLINE", "TRANSFORMERS_CACHE", "SENTENCE_TRANSFORMERS_HOME",
    "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS",
})
CHILD_PASS_PREFIXES = ("LC_", "CUDA_", "NVIDIA_")


def child_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process: what running a program needs from ours
    (``CHILD_PASSLIST``, locale, CUDA and NVIDIA variables), plus ``extra`` (what the config
    names). Never systemd's notify variables: a child that inherits ``NOTIFY_SOCKET`` could
    report READY or STOPPING for the gateway. Never the gateway's other secrets."""
    env = {k: v for k, v in os.environ.items()
           if (k in CHILD_PASSLIST or k.startswith(CHILD_PASS_PREFIXES))
           and k not in SYSTEMD_VARIABLES}
    if extra:
        env.update(extra)
    return env
