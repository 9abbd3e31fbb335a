"""A real Docker engine for tests: an offline test image, fixtures and cleanup.

The image ``embedding-gateway-test:latest`` is built without any registry: ``FROM scratch``
with the host's static busybox. Containers that run Python bind-mount (read-only) the host's
Python prefix, its shared libraries and the repository at ``/src`` (the image's workdir), so
``python -m tests.fakes.tei`` runs inside a container exactly as on the host.

Each test session tags its own image ``embedding-gateway-test:run-<id>`` carrying the label
``embedding-gateway.test-run=<id>``; containers inherit image labels, so every container the
session started (through any runtime or a gateway subprocess) is found and removed by it.

Use in a test module::

    from tests.docker_support import clean_containers, docker_available, test_image  # noqa: F401
"""

from __future__ import annotations

import contextlib
import os
import shutil
import site
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
from docker.errors import DockerException, NotFound

from embedding_gateway.config import ManagedConfig

BASE_IMAGE = "embedding-gateway-test:latest"
TEST_LABEL = "embedding-gateway.test"
RUN_LABEL = "embedding-gateway.test-run"
RUN_ID = uuid.uuid4().hex[:10]
SESSION_IMAGE = f"embedding-gateway-test:run-{RUN_ID}"
REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

_DOCKERFILE = f"""\
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN ["/bin/mkdir", "-p", "/tmp", "/src", "/www", "/usr/lib", "/usr/lib64"]
RUN ["/bin/ln", "-s", "usr/lib", "/lib"]
RUN ["/bin/ln", "-s", "usr/lib64", "/lib64"]
ENV PATH={Path(PYTHON).parent}:/bin PYTHONDONTWRITEBYTECODE=1 HOME=/tmp
WORKDIR /src
LABEL {TEST_LABEL}=1
"""


def unique_name(prefix: str) -> str:
    """A backend or instance name no other test session uses (container names derive from it)."""
    return f"{prefix}-{RUN_ID}-{uuid.uuid4().hex[:6]}"


def python_volumes() -> list[str]:
    """Read-only bind mounts that let the container run this interpreter on the repo at /src."""
    mounts = {sys.base_prefix, sys.prefix, "/usr/lib", "/usr/lib64"}
    mounts.update(path for path in site.getsitepackages() if not path.startswith(sys.prefix))
    volumes = [f"{path}:{path}:ro" for path in sorted(mounts) if os.path.isdir(path)]
    return [*volumes, f"{REPO}:/src:ro"]


def fake_tei_managed(
    image: str, *extra_args: str, env: dict[str, str] | None = None, **fields: Any
) -> ManagedConfig:
    """A docker ``ManagedConfig`` running the fake TEI (``tests.fakes.tei``) in the test image;
    ``{model}`` is the model id it reports, ``{port}`` the container port 80."""
    return ManagedConfig(
        runtime="docker",
        image=image,
        args=[PYTHON, "-m", "tests.fakes.tei", "--host", "0.0.0.0", "--port", "{port}",
              "--model-id", "{model}", *extra_args],
        container_port=80,
        volumes=python_volumes(),
        env=env or {},
        init=True,
        **fields,
    )


def build_test_image(client: docker.DockerClient) -> str:
    """Build the base image and this session's labelled tag; return the session tag."""
    with tempfile.TemporaryDirectory() as context:
        shutil.copy2(shutil.which("busybox") or "/bin/busybox", Path(context, "busybox"))
        Path(context, "Dockerfile").write_text(_DOCKERFILE)
        client.images.build(path=context, tag=BASE_IMAGE, rm=True, forcerm=True)
    with tempfile.TemporaryDirectory() as context:
        Path(context, "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nLABEL {RUN_LABEL}={RUN_ID}\n")
        client.images.build(path=context, tag=SESSION_IMAGE, rm=True, forcerm=True)
    return SESSION_IMAGE


def remove_run_containers(client: docker.DockerClient) -> None:
    """Remove every container started from this session's image, running or not."""
    for container in client.containers.list(all=True,
                                            filters={"label": f"{RUN_LABEL}={RUN_ID}"}):
        with contextlib.suppress(NotFound):
            container.remove(force=True)


@pytest.fixture(scope="session")
def docker_available() -> Iterator[docker.DockerClient]:
    """A client of a working engine; skips (or fails with ``EG_REQUIRE_DOCKER=1``) without one."""
    try:
        client = docker.from_env()
        client.ping()
    except (DockerException, OSError) as exc:
        message = f"no Docker engine: {exc}"
        if os.environ.get("EG_REQUIRE_DOCKER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    yield client
    client.close()


@pytest.fixture(scope="session")
def test_image(docker_available: docker.DockerClient) -> Iterator[str]:
    """This session's test image tag; its containers and the tag are removed at the end."""
    tag = build_test_image(docker_available)
    yield tag
    remove_run_containers(docker_available)
    with contextlib.suppress(NotFound):
        docker_available.images.remove(tag, noprune=True)


@pytest.fixture
def clean_containers(docker_available: docker.DockerClient, test_image: str) -> Iterator[str]:
    """Like ``test_image``, but removes this session's containers after each test."""
    yield test_image
    remove_run_containers(docker_available)
