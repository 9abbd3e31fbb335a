"""Managed TEI backends on a real Docker engine, through a real gateway.

The containers run the fake TEI (``tests.fakes.tei``) in the offline test image; every
container carries this session's label and is removed after each test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest

from embedding_gateway.config import ManagedConfig
from embedding_gateway.runtimes.base import InstanceHandle, InstanceSpec
from embedding_gateway.runtimes.docker import (
    LABEL_BACKEND,
    LABEL_MODEL,
    LABEL_OWNER,
    DockerRuntime,
)
from tests.conftest import run_gateway
from tests.docker_support import (
    PYTHON,
    clean_containers,  # noqa: F401
    docker_available,  # noqa: F401
    python_volumes,
    test_image,  # noqa: F401
    unique_name,
)
from tests.fakes import serve_fake
from tests.fakes.tei import create_tei_app
from tests.fakes.vectors import which_model
from tests.ports import free_port

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]
MODELS = ["org/model-a", "org/model-b", "org/model-c"]
DIMS = 384
FAKE_TEI = [PYTHON, "-m", "tests.fakes.tei", "--host", "0.0.0.0", "--port", "{port}",
            "--model-id", "{model}"]


class CountingDocker(DockerRuntime):
    """The real Docker runtime, counting the starts the supervisor asks for."""

    def __init__(self, managed: ManagedConfig) -> None:
        super().__init__(managed)
        self.starts: list[str] = []

    async def start(self, spec: InstanceSpec) -> InstanceHandle:
        self.starts.append(spec.model)
        return await super().start(spec)


def managed_backend(image: str, name_port: int, models: list[str], **managed: Any
                    ) -> dict[str, Any]:
    settings = {"runtime": "docker", "image": image, "args": FAKE_TEI, "container_port": 80,
                "volumes": python_volumes(), "start_timeout": 60, "queue_timeout": 120,
                "stop_timeout": 2, **managed}
    return {"kind": "tei", "base_url": f"http://127.0.0.1:{name_port}", "managed": settings,
            "models": {model: {} for model in models}}


@asynccontextmanager
async def gateway(backends: dict[str, Any], runtimes: list[CountingDocker] | None = None
                  ) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    def factory(managed: ManagedConfig) -> DockerRuntime:
        runtime = CountingDocker(managed)
        if runtimes is not None:
            runtimes.append(runtime)
        return runtime

    config = {"server": {"playground": False}, "backends": backends}
    async with run_gateway(config, runtime_factory=factory) as url, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        yield url, session


async def embed(session: aiohttp.ClientSession, url: str, model: str, text: str
                ) -> tuple[int, dict[str, Any]]:
    async with session.post(f"{url}/v1/embeddings", json={"model": model, "input": text}) as r:
        return r.status, await r.json()


async def embed_ok(session: aiohttp.ClientSession, url: str, model: str, text: str) -> None:
    status, body = await embed(session, url, model, text)
    assert status == 200, body
    assert which_model(body["data"][0]["embedding"], text, MODELS, DIMS) == model


def containers(client: docker.DockerClient, backend: str) -> list[Any]:
    return client.containers.list(all=True, filters={"label": f"{LABEL_BACKEND}={backend}"})


async def test_many_alternating_requests_are_all_served_by_the_right_model(
    clean_containers: str,  # noqa: F811
) -> None:
    name = unique_name("sup")
    runtimes: list[CountingDocker] = []
    async with gateway({name: managed_backend(clean_containers, free_port(), MODELS)},
                       runtimes) as (url, session):
        stream = [MODELS[i % 3] for i in range(210)]  # every request changes model
        changes = len(stream) - 1
        results = await asyncio.gather(
            *(embed(session, url, model, f"text {i}") for i, model in enumerate(stream)))
        failed = [body for status, body in results if status != 200]
        assert failed == []
        wrong = [
            (model, i) for i, (model, (_, body)) in enumerate(zip(stream, results, strict=True))
            if which_model(body["data"][0]["embedding"], f"text {i}", MODELS, DIMS) != model
        ]
        assert wrong == []
        starts = runtimes[0].starts
        assert set(starts) == set(MODELS)
        assert len(starts) * 10 < changes, (len(starts), changes)


async def test_a_container_that_exits_at_once_is_a_503_with_its_logs_then_starts_again(
    clean_containers: str, tmp_path: Path  # noqa: F811
) -> None:
    name = unique_name("sup")
    script = ("if [ ! -f /flag/ok ]; then echo 'loading org/model-a'; "
              "echo 'Error: weights are corrupt'; exit 3; fi; exec " + " ".join(FAKE_TEI))
    backend = managed_backend(clean_containers, free_port(), MODELS[:1],
                              args=["sh", "-c", script],
                              volumes=[*python_volumes(), f"{tmp_path}:/flag:ro"])
    runtimes: list[CountingDocker] = []
    async with gateway({name: backend}, runtimes) as (url, session):
        status, body = await embed(session, url, MODELS[0], "x")
        assert status == 503, body
        assert "Error: weights are corrupt" in body["error"]["message"]
        async with session.get(f"{url}/v1/models") as response:
            state = (await response.json())["data"][0]
        assert state["state"] == "failed"
        assert "weights are corrupt" in state["last_error"]

        (tmp_path / "ok").write_text("")
        await asyncio.sleep(2)  # a model that failed to start is tried again after a backoff
        await embed_ok(session, url, MODELS[0], "x")
        assert runtimes[0].starts == MODELS[:1] * 2


async def test_a_kept_container_is_adopted_by_the_next_gateway_and_strays_removed(
    clean_containers: str, docker_available: docker.DockerClient  # noqa: F811
) -> None:
    name = unique_name("sup")
    port = free_port()
    first = managed_backend(clean_containers, port, MODELS[:2], on_shutdown="keep")
    async with gateway({name: first}) as (url, session):
        await embed_ok(session, url, MODELS[0], "kept")
    kept = [c.id for c in containers(docker_available, name)]
    assert len(kept) == 1

    owner = docker_available.containers.get(kept[0]).labels[LABEL_OWNER]
    assert owner.endswith(":8000")  # host and configured port
    managed = ManagedConfig(**first["managed"])
    stray_runtime = DockerRuntime(managed)
    spec = InstanceSpec(backend=name, model="org/unknown", model_arg="org/unknown",
                        instance="stray", host_port=free_port(), managed=managed,
                        owner=owner)  # this gateway's
    stray = await stray_runtime.start(spec)
    foreign = await stray_runtime.start(replace(  # another gateway's, on the same engine
        spec, model=MODELS[0], model_arg=MODELS[0], host_port=free_port(), owner="elsewhere:1"))
    await stray_runtime.close()

    runtimes: list[CountingDocker] = []
    second = managed_backend(clean_containers, port, MODELS[:2])
    async with gateway({name: second}, runtimes) as (url, session):
        remaining = containers(docker_available, name)
        assert sorted(c.id for c in remaining) == sorted([*kept, foreign.ref])
        assert stray.ref not in [c.id for c in remaining]
        await embed_ok(session, url, MODELS[0], "adopted")
        assert runtimes[0].starts == []
    assert [c.id for c in containers(docker_available, name)] == [foreign.ref]
    docker_available.containers.get(foreign.ref).remove(force=True)


async def test_an_unknown_image_is_a_clear_error_naming_it(
    clean_containers: str,  # noqa: F811
) -> None:
    name = unique_name("sup")
    image = f"embedding-gateway-test:absent-{name}"
    async with gateway({name: managed_backend(image, free_port(), MODELS[:1])}) as (url, session):
        status, body = await embed(session, url, MODELS[0], "x")
        assert status == 503, body
        assert image in body["error"]["message"]
        assert "not present" in body["error"]["message"]


async def test_a_container_killed_from_outside_is_restarted_by_the_next_requests(
    clean_containers: str, docker_available: docker.DockerClient  # noqa: F811
) -> None:
    name = unique_name("sup")
    runtimes: list[CountingDocker] = []
    async with gateway({name: managed_backend(clean_containers, free_port(), MODELS[:1])},
                       runtimes) as (url, session):
        await embed_ok(session, url, MODELS[0], "before")
        [container] = containers(docker_available, name)
        assert container.labels[LABEL_MODEL] == MODELS[0]
        container.kill()
        status, body = await embed(session, url, MODELS[0], "after")
        if status != 200:
            assert status == 503, body
            assert "exited" in body["error"]["message"]
            await embed_ok(session, url, MODELS[0], "after")
        assert runtimes[0].starts == MODELS[:1] * 2
        assert [c.id for c in containers(docker_available, name)] != [container.id]


async def test_an_unreachable_docker_daemon_leaves_remote_backends_serving() -> None:
    async with serve_fake(create_tei_app("org/remote")) as remote_url:
        backends = {
            "remote": {"kind": "tei", "base_url": remote_url, "models": {"org/remote": {}}},
            "local": managed_backend("any:image", free_port(), MODELS[:1],
                                     docker_host="unix:///nonexistent.sock"),
        }
        async with gateway(backends) as (url, session):
            status, body = await embed(session, url, "org/remote", "x")
            assert status == 200, body
            assert which_model(body["data"][0]["embedding"], "x", ["org/remote"], DIMS)
            async with session.get(f"{url}/health") as response:
                health = await response.json()
            local = health["backends"]["local"]
            assert local["healthy"] is False
            assert "/nonexistent.sock" in local["reason"]
            assert health["backends"]["remote"]["healthy"] is True
            status, body = await embed(session, url, MODELS[0], "x")
            assert status == 503, body
            assert "/nonexistent.sock" in body["error"]["message"]
