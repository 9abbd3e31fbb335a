"""DockerRuntime against a real Docker engine and the offline test image."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import aiohttp
import docker
import pytest
from aiohttp import web
from docker.errors import ImageNotFound, NotFound
from docker.types import DeviceRequest

from embedding_gateway.config import ManagedConfig
from embedding_gateway.errors import RuntimeStartError
from embedding_gateway.runtimes.base import InstanceHandle, InstanceSpec
from embedding_gateway.runtimes.docker import DockerRuntime, container_name, device_requests
from tests.docker_support import (
    clean_containers,  # noqa: F401
    docker_available,  # noqa: F401
    fake_tei_managed,
    test_image,  # noqa: F401
    unique_name,
)
from tests.fakes import serve_fake
from tests.ports import free_port

pytestmark = pytest.mark.docker
SECRET = "hf_do-not-leak-7f3a9"
WAIT = 60.0


def spec_for(managed: ManagedConfig, *, backend: str | None = None, instance: str = "i0",
             model: str = "org/model-a") -> InstanceSpec:
    return InstanceSpec(backend=backend or unique_name("rt"), model=model, model_arg=model,
                        instance=instance, host_port=free_port(), managed=managed)


def busybox(image: str, script: str, **fields: object) -> ManagedConfig:
    return ManagedConfig(runtime="docker", image=image, args=["sh", "-c", script], **fields)


async def get_text(url: str) -> str:
    """GET ``url`` once the server answers (bounded wait), returning its body."""
    deadline = asyncio.get_running_loop().time() + WAIT
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(url) as response:
                    response.raise_for_status()
                    return await response.text()
            except aiohttp.ClientError:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.1)


async def wait_exited(runtime: DockerRuntime, handle: InstanceHandle) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    while await runtime.is_alive(handle):
        assert asyncio.get_running_loop().time() < deadline, "container did not exit"
        await asyncio.sleep(0.1)


@pytest.fixture
async def runtime(clean_containers: str) -> AsyncIterator[DockerRuntime]:  # noqa: F811
    managed = ManagedConfig(runtime="docker", image=clean_containers)
    docker_runtime = DockerRuntime(managed)
    yield docker_runtime
    await docker_runtime.close()


async def test_fake_tei_serves_on_the_published_port_then_stops(
    runtime: DockerRuntime, clean_containers: str, docker_available: docker.DockerClient  # noqa: F811
) -> None:
    spec = spec_for(fake_tei_managed(clean_containers))
    handle = await runtime.start(spec)

    info = await get_text(f"http://127.0.0.1:{spec.host_port}/info")
    assert '"model_id":"org/model-a"' in info.replace(" ", "")
    container = docker_available.containers.get(handle.ref)
    assert container.name == container_name(spec.backend, "i0")
    assert container.labels["embedding-gateway.backend"] == spec.backend
    assert container.labels["embedding-gateway.model"] == "org/model-a"
    assert container.labels["embedding-gateway.instance"] == "i0"
    assert container.labels["embedding-gateway.host_port"] == str(spec.host_port)
    bindings = container.attrs["HostConfig"]["PortBindings"]["80/tcp"]
    assert bindings == [{"HostIp": "127.0.0.1", "HostPort": str(spec.host_port)}]
    assert await runtime.is_alive(handle)

    await runtime.stop(handle, grace=5)
    with pytest.raises(NotFound):
        docker_available.containers.get(handle.ref)
    assert not await runtime.is_alive(handle)
    await runtime.stop(handle, grace=5)
    assert await runtime.logs(handle) == ""


async def test_args_env_and_volumes_are_filled(
    runtime: DockerRuntime, clean_containers: str, tmp_path: Path  # noqa: F811
) -> None:
    (tmp_path / "index.html").write_text("hello from the volume\n")
    script = ("mkdir -p /tmp/www && cp /data-{model}/index.html /tmp/www/ && "
              "echo \"$SERVED\" > /tmp/www/model && exec httpd -f -p {port} -h /tmp/www")
    managed = busybox(clean_containers, script, container_port=8080,
                      env={"SERVED": "model={model}"}, volumes=[f"{tmp_path}:/data-{{model}}:ro"])
    spec = spec_for(managed, model="m1")
    handle = await runtime.start(spec)

    base = f"http://127.0.0.1:{spec.host_port}"
    assert await get_text(f"{base}/index.html") == "hello from the volume\n"
    assert await get_text(f"{base}/model") == "model=m1\n"
    await runtime.stop(handle, grace=5)


async def test_a_container_that_exits_keeps_its_logs(
    runtime: DockerRuntime, clean_containers: str  # noqa: F811
) -> None:
    script = "echo loading failed >&2; echo line 1; echo line 2; echo line 3; exit 3"
    handle = await runtime.start(spec_for(busybox(clean_containers, script)))

    await wait_exited(runtime, handle)
    logs = await runtime.logs(handle)
    assert "loading failed" in logs
    assert "line 1" in logs
    tail = await runtime.logs(handle, lines=2)
    assert "line 3" in tail
    assert "line 1" not in tail
    assert await runtime.exit_status(handle) == "exited with status 3"
    await runtime.stop(handle, grace=5)


async def test_fake_tei_crash_output_is_in_logs(
    runtime: DockerRuntime, clean_containers: str  # noqa: F811
) -> None:
    handle = await runtime.start(spec_for(fake_tei_managed(clean_containers,
                                                           "--exit-after-start")))
    await wait_exited(runtime, handle)
    assert "Could not download model artifacts" in await runtime.logs(handle)
    await runtime.stop(handle, grace=5)


async def test_a_missing_image_is_named_and_never_pulled(
    runtime: DockerRuntime, docker_available: docker.DockerClient  # noqa: F811
) -> None:
    image = f"embedding-gateway-test:absent-{unique_name('x')}"
    spec = spec_for(ManagedConfig(runtime="docker", image=image))

    with pytest.raises(RuntimeStartError) as caught:
        await runtime.start(spec)
    assert image in str(caught.value)
    assert "pull it or set pull: true" in str(caught.value)
    with pytest.raises(ImageNotFound):
        docker_available.images.get(image)
    with pytest.raises(NotFound):
        docker_available.containers.get(container_name(spec.backend, spec.instance))


async def test_a_host_port_in_use_is_reported(
    runtime: DockerRuntime, clean_containers: str, docker_available: docker.DockerClient  # noqa: F811
) -> None:
    spec = spec_for(busybox(clean_containers, "sleep 600"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", spec.host_port))
        taken.listen()
        with pytest.raises(RuntimeStartError) as caught:
            await runtime.start(spec)
    assert f"host port {spec.host_port} is already in use" in str(caught.value)
    with pytest.raises(NotFound):
        docker_available.containers.get(container_name(spec.backend, spec.instance))


async def test_secret_env_values_stay_out_of_errors_logs_and_reprs(
    runtime: DockerRuntime, clean_containers: str  # noqa: F811
) -> None:
    env = {"HF_TOKEN": SECRET, "api_key": SECRET, "PLAIN": "visible"}
    not_executable = ManagedConfig(runtime="docker", image=clean_containers, env=env,
                                   args=[f"/no/such/{SECRET}"], init=False)
    with pytest.raises(RuntimeStartError) as caught:
        await runtime.start(spec_for(not_executable))
    assert "/no/such/***" in str(caught.value)
    assert SECRET not in str(caught.value)

    echo = busybox(clean_containers, 'echo "token=$HF_TOKEN plain=$PLAIN"', env=env)
    handle = await runtime.start(spec_for(echo))
    await wait_exited(runtime, handle)
    logs = await runtime.logs(handle)
    assert "token=*** plain=visible" in logs
    assert SECRET not in logs
    assert SECRET not in repr(runtime)
    await runtime.stop(handle, grace=5)


async def test_find_existing_adopt_and_remove(
    runtime: DockerRuntime, clean_containers: str, docker_available: docker.DockerClient  # noqa: F811
) -> None:
    backend = unique_name("find")
    running_spec = spec_for(busybox(clean_containers, "sleep 600"), backend=backend,
                            instance="a", model="m-a")
    exited_spec = spec_for(busybox(clean_containers, "exit 0"), backend=backend,
                           instance="b", model="m-b")
    running = await runtime.start(running_spec)
    exited = await runtime.start(exited_spec)
    await wait_exited(runtime, exited)
    other = await runtime.start(spec_for(busybox(clean_containers, "sleep 600")))

    found = {item.instance: item for item in await runtime.find_existing(backend, "")}
    assert set(found) == {"a", "b"}
    assert (found["a"].ref, found["a"].model, found["a"].running) == (running.ref, "m-a", True)
    assert found["a"].host_port == running_spec.host_port
    assert (found["b"].model, found["b"].running) == ("m-b", False)

    await runtime.remove(found["b"])
    with pytest.raises(NotFound):
        docker_available.containers.get(exited.ref)
    await runtime.remove(found["b"])
    adopted = await runtime.adopt(found["a"], running_spec)
    assert adopted.ref == running.ref
    assert adopted.labels["embedding-gateway.instance"] == "a"
    assert await runtime.is_alive(adopted)
    assert [item.instance for item in await runtime.find_existing(backend, "")] == ["a"]
    await runtime.stop(adopted, grace=0)
    await runtime.stop(other, grace=0)


async def test_another_gateways_containers_are_never_found_replaced_or_removed(
    runtime: DockerRuntime, clean_containers: str, docker_available: docker.DockerClient  # noqa: F811
) -> None:
    backend = unique_name("owned")
    ours = replace(spec_for(busybox(clean_containers, "sleep 600"), backend=backend,
                            instance="a"), owner="host:8000")
    theirs = replace(ours, owner="host:8001", host_port=free_port())
    mine = await runtime.start(ours)
    other = await runtime.start(theirs)  # the same backend and instance names, another owner
    assert [item.ref for item in await runtime.find_existing(backend, "host:8000")] == [mine.ref]
    assert [item.ref for item in await runtime.find_existing(backend, "host:8001")] == [other.ref]
    again = await runtime.start(ours)  # our leftover is replaced; theirs is not touched
    assert await runtime.is_alive(other)
    assert docker_available.containers.get(other.ref).labels["embedding-gateway.owner"] \
        == "host:8001"
    await runtime.stop(again, grace=0)
    impostor = docker_available.containers.create(  # our name, another owner's label
        clean_containers, ["sleep", "600"], name=container_name(backend, "a", "host:8000"),
        labels={"embedding-gateway.owner": "elsewhere:8000"})
    with pytest.raises(RuntimeStartError, match="did not start"):
        await runtime.start(ours)
    docker_available.containers.get(impostor.id)  # left alone
    impostor.remove(force=True)
    await runtime.stop(other, grace=0)


async def test_a_leftover_container_with_the_same_name_is_replaced(
    runtime: DockerRuntime, clean_containers: str, docker_available: docker.DockerClient  # noqa: F811
) -> None:
    spec = spec_for(busybox(clean_containers, "sleep 600"))
    first = await runtime.start(spec)
    second = await runtime.start(spec)

    assert second.ref != first.ref
    with pytest.raises(NotFound):
        docker_available.containers.get(first.ref)
    assert await runtime.is_alive(second)
    await runtime.stop(second, grace=0)


@pytest.mark.parametrize("docker_host", ["unix:///nonexistent/docker.sock", "tcp://127.0.0.1:{port}",
                                         "ssh://nobody@127.0.0.1:{port}"])
async def test_an_unreachable_daemon_is_a_clear_start_error(docker_host: str) -> None:
    host = docker_host.format(port=free_port())
    managed = ManagedConfig(runtime="docker", image="any:latest", docker_host=host)
    runtime = DockerRuntime(managed)

    with pytest.raises(RuntimeStartError) as caught:
        await runtime.start(spec_for(managed))
    assert f"cannot reach the Docker daemon at {host}" in str(caught.value)
    assert "paramiko" not in str(caught.value)  # ssh:// is supported, just not reachable
    await runtime.close()


def test_gpus_become_device_requests() -> None:
    assert device_requests("none") == []
    assert device_requests("all") == [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    assert device_requests(["0", "2"]) == [
        DeviceRequest(device_ids=["0", "2"], capabilities=[["gpu"]])]


def test_container_names_are_sanitised() -> None:
    assert container_name("tei", "tei/0 a") == "embedding-gateway-tei-tei-0-a"


def test_an_engine_named_by_docker_host_in_the_environment_is_remote(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ports are bound to 127.0.0.1 only when the engine is on this host."""
    monkeypatch.setenv("DOCKER_HOST", "tcp://gpu-host:2376")
    from_env = DockerRuntime(ManagedConfig(runtime="docker", image="x:1"))
    assert not from_env._local and "tcp://gpu-host:2376" in repr(from_env)
    monkeypatch.delenv("DOCKER_HOST")
    assert DockerRuntime(ManagedConfig(runtime="docker", image="x:1"))._local
    unix = ManagedConfig(runtime="docker", image="x:1", docker_host="unix:///run/docker.sock")
    assert DockerRuntime(unix)._local


@asynccontextmanager
async def silent_engine(release: asyncio.Event) -> AsyncIterator[ManagedConfig]:
    """A Docker engine that answers ping and version, and holds every other call until
    ``release`` is set; yields a managed config pointing at it."""

    async def engine(request: web.Request) -> web.Response:
        if request.path.endswith("/_ping"):
            return web.Response(text="OK")
        if request.path.endswith("/version"):
            return web.json_response({"ApiVersion": "1.43", "Version": "24.0"})
        await release.wait()
        return web.json_response([])

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", engine)
    async with serve_fake(app) as url:
        yield ManagedConfig(runtime="docker", image="any:latest",
                            docker_host=url.replace("http://", "tcp://"))


async def test_an_engine_that_stops_answering_holds_only_its_own_threads() -> None:
    """Docker calls stuck on a silent engine must not starve the loop's default executor,
    which resolves upstream host names."""
    release = asyncio.Event()
    async with silent_engine(release) as managed:
        runtime = DockerRuntime(managed)
        stuck = [asyncio.create_task(runtime.find_existing(f"b{i}", "")) for i in range(12)]
        await asyncio.sleep(0.5)
        assert not any(task.done() for task in stuck)
        loop = asyncio.get_running_loop()
        resolved = await asyncio.wait_for(loop.getaddrinfo("localhost", 80), 5)
        assert resolved
        release.set()
        assert await asyncio.gather(*stuck) == [[]] * 12
        await runtime.close()


async def test_a_closed_runtime_refuses_calls_and_closes_without_waiting() -> None:
    """A retired supervisor's last request may still ask a closed runtime: it gets a clear
    error, and no new pool or client is left behind; closing does not wait for stuck calls."""
    release = asyncio.Event()
    async with silent_engine(release) as managed:
        runtime = DockerRuntime(managed)
        stuck = [asyncio.create_task(runtime.find_existing("b", "")) for _ in range(4)]
        await asyncio.sleep(0.5)
        await asyncio.wait_for(runtime.close(), 2)  # not behind the stuck calls
        handle = InstanceHandle(spec=spec_for(managed), ref="gone")
        with pytest.raises(RuntimeStartError, match="is closed"):
            await runtime.is_alive(handle)
        release.set()
        await asyncio.gather(*stuck, return_exceptions=True)
