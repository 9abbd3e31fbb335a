"""``/health`` says a managed backend is not startable, and why, before any request tries:
a command not on PATH (real processes), an image that is not present with ``pull: false``
and an unreachable engine (a real Docker engine). It sees the cause go away too."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest

from embedding_gateway.config import ManagedConfig
from embedding_gateway.runtimes.docker import DockerRuntime
from tests.conftest import run_gateway
from tests.docker_support import (
    clean_containers,  # noqa: F401
    docker_available,  # noqa: F401
    python_volumes,
    test_image,  # noqa: F401
    unique_name,
)
from tests.ports import free_port

CHECK_INTERVAL = 0.2  # server.health_interval: how often startability is checked
RECOVERY_BOUND = 20.0  # seconds for /health to see a cause gone; a liveness bound


class CountingDocker(DockerRuntime):
    def __init__(self, managed: ManagedConfig, starts: list[str]) -> None:
        super().__init__(managed)
        self.starts = starts

    async def start(self, spec: Any) -> Any:
        self.starts.append(spec.model)
        return await super().start(spec)


async def health_of(url: str, backend: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/health") as response:
        body = await response.json()
    return body["backends"][backend]


async def until_startable(url: str, backend: str) -> dict[str, Any]:
    async with asyncio.timeout(RECOVERY_BOUND):
        while True:
            health = await health_of(url, backend)
            if health["startable"]:
                return health
            await asyncio.sleep(CHECK_INTERVAL)


def process_config(command: str) -> dict[str, Any]:
    return {
        "server": {"playground": False, "health_interval": CHECK_INTERVAL},
        "backends": {"local": {
            "kind": "openai", "base_url": f"http://127.0.0.1:{free_port()}",
            "managed": {"runtime": "process", "command": [command, "--port", "{port}"]},
            "models": {"m": {}},
        }},
    }


async def test_a_command_not_on_path_is_not_startable_until_it_appears(tmp_path: Path) -> None:
    program = tmp_path / "embedding-server"
    async with run_gateway(process_config(str(program))) as url:
        health = await health_of(url, "local")
        assert health["healthy"] is False
        assert health["startable"] is False
        assert health["reason"].startswith("not startable: ")
        assert str(program) in health["reason"]
        assert health["models"]["m"]["state"] == "idle"
        assert str(program) in health["models"]["m"]["reason"]
        program.write_text("#!/bin/sh\nexit 0\n")
        program.chmod(0o755)
        health = await until_startable(url, "local")
        assert health["healthy"] is True and health["reason"] is None


async def test_a_command_on_path_is_startable() -> None:
    async with run_gateway(process_config("sh")) as url:
        health = await health_of(url, "local")
        assert health["startable"] is True and health["healthy"] is True


def docker_backend(image: str, starts: list[str], **managed: Any
                   ) -> tuple[dict[str, Any], Any]:
    config = {
        "server": {"playground": False, "health_interval": CHECK_INTERVAL},
        "backends": {"tei": {
            "kind": "tei", "base_url": f"http://127.0.0.1:{free_port()}",
            "managed": {"runtime": "docker", "image": image, "container_port": 80,
                        "volumes": python_volumes(), **managed},
            "models": {"org/model-a": {}},
        }},
    }
    return config, lambda cfg: CountingDocker(cfg, starts)


@pytest.mark.docker
async def test_a_missing_image_is_not_startable_until_it_is_there(
    clean_containers: str, docker_available: docker.DockerClient  # noqa: F811
) -> None:
    repository = f"embedding-gateway-test-absent-{uuid.uuid4().hex[:8]}"
    image = f"{repository}:latest"
    starts: list[str] = []
    config, factory = docker_backend(image, starts)
    try:
        async with run_gateway(config, runtime_factory=factory) as url:
            health = await health_of(url, "tei")
            assert health["startable"] is False and health["healthy"] is False
            assert image in health["reason"] and "not present" in health["reason"]
            assert starts == []  # no request asked; nothing was tried
            docker_available.images.get(clean_containers).tag(repository, "latest")
            health = await until_startable(url, "tei")
            assert health["healthy"] is True
            assert starts == []
    finally:
        docker_available.images.remove(image, noprune=True)


@pytest.mark.docker
async def test_a_present_image_is_startable(clean_containers: str) -> None:  # noqa: F811
    config, factory = docker_backend(clean_containers, [])
    async with run_gateway(config, runtime_factory=factory) as url:
        health = await health_of(url, "tei")
        assert health["startable"] is True and health["healthy"] is True


async def test_an_unreachable_engine_is_not_startable() -> None:
    socket = f"/nonexistent-{unique_name('engine')}.sock"
    starts: list[str] = []
    config, factory = docker_backend("any:image", starts, docker_host=f"unix://{socket}")
    async with run_gateway(config, runtime_factory=factory) as url:
        health = await health_of(url, "tei")
        assert health["startable"] is False
        assert health["reason"].startswith("not startable: ")
        assert socket in health["reason"]
        assert starts == []
