"""Managed instances as local processes (``managed.command``).

Each process runs in its own session and process group, so stopping it signals everything it
spawned. Its merged stdout and stderr are kept in a bounded ring of recent lines. The systemd
variables of the gateway (``NOTIFY_SOCKET``, ``WATCHDOG_*``) are not passed on: a child must
never speak for the gateway. Processes do not outlive the gateway: the supervisor stops them
when it closes, whatever ``on_shutdown`` says.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import subprocess
from collections import deque
from dataclasses import dataclass, field

import structlog

from ..config import ManagedConfig
from ..errors import RuntimeStartError
from ..systemd import child_environ
from .base import FoundInstance, InstanceHandle, InstanceSpec
from .ports import is_port_free, listening_sockets, sockets_of_group
from .secrets import scrub

LOG_LINES = 200

_GROUP_POLL = 0.05
_DRAIN_TIMEOUT = 1.0
_KILL_WAIT = 5.0
_CLOSE_GRACE = 5.0

log = structlog.get_logger(__name__)


@functools.cache
def die_with_parent() -> tuple[str, ...]:
    """A prefix that makes the kernel send SIGTERM to the child when the gateway dies without
    cleaning up (SIGKILL, OOM): no orphaned model servers holding a GPU. util-linux's setpriv
    (2.33 or later) execs the command, so pid and process group stay the command's own.
    Empty where setpriv or its --pdeathsig is missing."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return ()
    usage = subprocess.run([setpriv, "--help"], capture_output=True, text=True, check=False)
    return (setpriv, "--pdeathsig", "TERM", "--") if "--pdeathsig" in usage.stdout else ()


@dataclass
class _Running:
    process: asyncio.subprocess.Process
    env: dict[str, str]  # all of the child's environment: its secrets are scrubbed from logs
    command: list[str]  # and so are secrets given as flags
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    reader: asyncio.Task[None] | None = None


def fill(template: str, spec: InstanceSpec) -> str:
    """Fill ``{model}`` and ``{port}`` (the host port the process listens on)."""
    return template.replace("{model}", spec.model_arg).replace("{port}", str(spec.host_port))


def command_missing(program: str, env: dict[str, str]) -> str | None:
    """Why ``program`` cannot be run with ``env``'s PATH, or ``None``."""
    if shutil.which(program, path=env.get("PATH")) is None:
        return f"command {program!r} not found or not executable"
    return None


def describe_exit(returncode: int) -> str:
    """A process's return code in words (negative: the signal that ended it)."""
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = "unknown"
    return f"killed by signal {-returncode} ({name})"


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)


async def _group_gone(pgid: int, deadline: float) -> bool:
    """Wait until no process is left in the group (descendants may outlive the leader, and
    killed ones linger until reaped); nothing signals this, so it is polled."""
    loop = asyncio.get_running_loop()
    while _group_exists(pgid):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(_GROUP_POLL)
    return True


async def _collect(stream: asyncio.StreamReader, lines: deque[str]) -> None:
    while True:
        try:
            raw = await stream.readline()
        except ValueError:  # a line beyond the stream limit; the rest of it was dropped
            lines.append("[line too long, dropped]")
            continue
        if not raw:
            return
        lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))


async def _drain(running: _Running, *, cancel: bool) -> None:
    """Let the reader take in what an exited process wrote; bounded, because a descendant
    that left the process group may hold the pipe open."""
    if running.reader is None:
        return
    await asyncio.wait({running.reader}, timeout=_DRAIN_TIMEOUT)
    if cancel and not running.reader.done():
        running.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running.reader


class ProcessRuntime:
    """Runs each instance as a local process group; the handle's ``ref`` is the pid."""

    def __init__(self, managed: ManagedConfig) -> None:
        """``managed`` mirrors ``DockerRuntime``; each spec carries its own settings."""
        self._running: dict[str, _Running] = {}

    def __repr__(self) -> str:
        return f"ProcessRuntime(running={sorted(self._running)})"

    async def start(self, spec: InstanceSpec) -> InstanceHandle:
        command = [fill(part, spec) for part in spec.managed.command]
        env = child_environ({name: fill(value, spec) for name, value in spec.managed.env.items()})
        missing = command_missing(command[0], env)
        if missing is not None:  # setpriv would just exit
            raise RuntimeStartError(missing)
        if not is_port_free(spec.host_port):  # else it dies of the clash, and meanwhile the
            # other program answers its health checks as if it were this instance
            raise RuntimeStartError(
                f"port {spec.host_port} is already in use by a program this gateway did not "
                "start; stop it, or move this backend (base_url's port or managed.ports)")
        try:
            process = await asyncio.create_subprocess_exec(
                *await asyncio.to_thread(die_with_parent), *command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        except FileNotFoundError:
            raise RuntimeStartError(f"command {command[0]!r} not found") from None
        except PermissionError:
            raise RuntimeStartError(f"command {command[0]!r} is not executable") from None
        except OSError as exc:
            raise RuntimeStartError(
                scrub(f"command {command[0]!r} failed: {exc}", env, command)) from None
        running = _Running(process=process, env=env, command=command)
        assert process.stdout is not None
        running.reader = asyncio.create_task(_collect(process.stdout, running.lines))
        ref = str(process.pid)
        self._running[ref] = running
        log.info("process_started", pid=process.pid, command=command[0], port=spec.host_port)
        return InstanceHandle(spec=spec, ref=ref)

    async def preflight(self, managed: ManagedConfig) -> str | None:
        program = managed.command[0]
        if "{" in program:  # filled per instance; start() checks it then
            return None
        return command_missing(program, child_environ(managed.env))

    async def stop(self, handle: InstanceHandle, grace: float) -> None:
        await self._stop(handle.ref, grace)

    async def _stop(self, ref: str, grace: float) -> None:
        """SIGTERM to the group, SIGKILL after ``grace``; it is forgotten only once gone, so a
        stop cut short leaves it for ``close()`` to finish."""
        running = self._running.get(ref)
        if running is None:
            return
        process = running.process
        pgid = process.pid  # the leader of its own session: pgid == pid
        _signal_group(pgid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), grace)
        if not await _group_gone(pgid, deadline):
            log.warning("process_killed", pid=process.pid, grace=grace)
            _signal_group(pgid, signal.SIGKILL)
            await _group_gone(pgid, loop.time() + _KILL_WAIT)
        await process.wait()
        self._running.pop(ref, None)
        await _drain(running, cancel=True)
        log.info("process_stopped", pid=process.pid, how=describe_exit(process.returncode))

    async def is_alive(self, handle: InstanceHandle) -> bool:
        running = self._running.get(handle.ref)
        return running is not None and running.process.returncode is None

    async def listens(self, handle: InstanceHandle) -> bool | None:
        running = self._running.get(handle.ref)
        if running is None:
            return None
        listening = await asyncio.to_thread(listening_sockets, handle.spec.host_port)
        if not listening:
            return None  # nothing listens (it is still starting), or /proc does not say
        return bool(listening & await asyncio.to_thread(sockets_of_group, running.process.pid))

    async def exit_status(self, handle: InstanceHandle) -> str | None:
        running = self._running.get(handle.ref)
        if running is None or running.process.returncode is None:
            return None
        return describe_exit(running.process.returncode)

    async def logs(self, handle: InstanceHandle, lines: int = 30) -> str:
        running = self._running.get(handle.ref)
        if running is None or lines <= 0:
            return ""
        if running.process.returncode is not None:
            await _drain(running, cancel=False)
        tail = list(running.lines)[-lines:]
        return scrub("\n".join(tail) + ("\n" if tail else ""), running.env, running.command)

    async def find_existing(self, backend: str, owner: str) -> list[FoundInstance]:
        return []

    def fingerprint(self, spec: InstanceSpec) -> str | None:
        return None  # nothing is ever found to compare with

    async def adopt(self, found: FoundInstance, spec: InstanceSpec) -> InstanceHandle:
        raise RuntimeStartError("local processes do not outlive the gateway; none to adopt")

    async def remove(self, found: FoundInstance) -> None:
        return None

    async def close(self) -> None:
        """Processes cannot outlive the gateway: any still running are stopped."""
        await asyncio.gather(*(self._stop(ref, _CLOSE_GRACE) for ref in list(self._running)))

