"""Managed instances as Docker containers, local or on a remote engine (``tcp://``, ``ssh://``).

The Docker SDK is blocking: every call runs in a worker thread of this runtime's own small
pool, so an engine that stops answering holds only those threads, not the loop's default
executor, which also resolves upstream host names.
Containers carry ``embedding-gateway.*`` labels so a restarted gateway can find and adopt them;
the owner label (the gateway that started it) keeps other gateways on the engine from
adopting or removing them.
An image is pulled only when ``pull: true``; creating a container never pulls implicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import docker
import structlog
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container
from docker.types import DeviceRequest

from ..config import ManagedConfig
from ..errors import RuntimeStartError
from .base import FoundInstance, InstanceHandle, InstanceSpec
from .ports import is_port_free
from .secrets import scrub

__all__ = ["DockerRuntime", "container_name", "device_requests"]

LABEL_PREFIX = "embedding-gateway."
LABEL_BACKEND = LABEL_PREFIX + "backend"
LABEL_MODEL = LABEL_PREFIX + "model"
LABEL_INSTANCE = LABEL_PREFIX + "instance"
LABEL_HOST_PORT = LABEL_PREFIX + "host_port"
LABEL_SPEC = LABEL_PREFIX + "spec"
LABEL_OWNER = LABEL_PREFIX + "owner"

_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_.-]+")
_PORT_TAKEN = ("address already in use", "port is already allocated")

log = structlog.get_logger(__name__)
T = TypeVar("T")


def container_name(backend: str, instance: str, owner: str = "") -> str:
    """``embedding-gateway-{backend}-{instance}`` with characters Docker refuses replaced, and
    a digest of its owner: two gateways on one engine may name their backends alike."""
    suffix = f"-{hashlib.sha256(owner.encode()).hexdigest()[:8]}" if owner else ""
    return _NAME_CHARS.sub("-", f"embedding-gateway-{backend}-{instance}{suffix}")


def device_requests(gpus: list[str] | str) -> list[DeviceRequest]:
    """``all`` → every GPU, ``none`` → no device request, a list → those device ids."""
    if gpus == "none":
        return []
    if gpus == "all":
        return [DeviceRequest(count=-1, capabilities=[["gpu"]])]
    return [DeviceRequest(device_ids=list(gpus), capabilities=[["gpu"]])]


def fill(template: str, spec: InstanceSpec) -> str:
    """Fill ``{model}`` and ``{port}`` (the port the server listens on inside the container)."""
    return template.replace("{model}", spec.model_arg).replace(
        "{port}", str(spec.managed.container_port))


def _explain(exc: Exception) -> str:
    if isinstance(exc, APIError) and exc.explanation:
        return str(exc.explanation)
    return str(exc)


class DockerRuntime:
    """Runs each instance as one container on the engine at ``managed.docker_host``."""

    def __init__(self, managed: ManagedConfig) -> None:
        self._docker_host = managed.docker_host
        self._client: docker.DockerClient | None = None
        self._connect_lock = asyncio.Lock()
        self._threads: ThreadPoolExecutor | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"DockerRuntime(docker_host={self._where!r})"

    @property
    def _engine(self) -> str | None:
        """The engine's address: ``docker_host``, else ``DOCKER_HOST`` (the SDK's default)."""
        return self._docker_host or os.environ.get("DOCKER_HOST") or None

    @property
    def _where(self) -> str:
        return self._engine or "the local socket"

    @property
    def _local(self) -> bool:
        """Whether the engine runs on this host: then ports are bound to 127.0.0.1 only."""
        engine = self._engine
        return engine is None or engine.startswith("unix://")

    def _connect(self) -> docker.DockerClient:
        # from_env reads DOCKER_TLS_VERIFY and DOCKER_CERT_PATH too: a tcp:// engine on 2376
        # speaks TLS when they are set. ssh:// needs paramiko (the [ssh] extra).
        environment = dict(os.environ)
        if self._docker_host is not None:
            environment["DOCKER_HOST"] = self._docker_host
        client = docker.from_env(environment=environment)
        client.ping()
        return client

    async def _docker(self) -> docker.DockerClient:
        async with self._connect_lock:
            if self._client is None:
                try:
                    client = await self._in_thread(self._connect)
                except (DockerException, OSError) as exc:
                    raise RuntimeStartError(
                        f"cannot reach the Docker daemon at {self._where}: {exc}") from exc
                if self._closed:  # closed while connecting
                    client.close()
                    raise RuntimeStartError(f"the runtime for {self._where} is closed")
                self._client = client
            return self._client

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking SDK call in a thread; a lost daemon becomes ``RuntimeStartError``,
        Docker's own errors (``NotFound``, conflicts) stay for the caller to judge."""
        try:
            return await self._in_thread(fn, *args, **kwargs)
        except DockerException:  # APIError is an OSError too; it is Docker's answer
            raise
        except OSError as exc:  # requests' connection errors and timeouts
            raise RuntimeStartError(
                f"the Docker daemon at {self._where} is unreachable: {exc}") from None

    async def _container(self, ref: str) -> Container | None:
        client = await self._docker()
        try:
            return await self._call(client.containers.get, ref)
        except NotFound:
            return None

    async def start(self, spec: InstanceSpec) -> InstanceHandle:
        managed = spec.managed
        env = managed.env
        client = await self._docker()
        image = managed.image or ""
        name = container_name(spec.backend, spec.instance, spec.owner)
        try:
            await self._ensure_image(client, image, managed.pull)
            leftover = await self._container(name)
            if leftover is not None:
                if leftover.labels.get(LABEL_OWNER) != spec.owner:
                    raise RuntimeStartError(
                        f"a container named {name} exists that this gateway did not start; "
                        "remove it, or rename this backend")
                log.info("container_leftover_removed", container=name)
                await self._force_remove(leftover)
            if self._local and not is_port_free(spec.host_port):
                raise RuntimeStartError(self._port_taken(spec.host_port))
            labels = {
                LABEL_BACKEND: spec.backend,
                LABEL_MODEL: spec.model,
                LABEL_INSTANCE: spec.instance,
                LABEL_HOST_PORT: str(spec.host_port),
                LABEL_SPEC: self.fingerprint(spec),
                LABEL_OWNER: spec.owner,
            }
            binding: Any = ("127.0.0.1", spec.host_port) if self._local else spec.host_port
            container = await self._call(
                client.containers.create,
                image,
                command=[fill(arg, spec) for arg in managed.args] or None,
                name=name,
                labels=labels,
                environment={key: fill(value, spec) for key, value in env.items()},
                ports={f"{managed.container_port}/tcp": binding},
                volumes=[fill(volume, spec) for volume in managed.volumes],
                init=managed.init,
                shm_size=managed.shm_size,
                device_requests=device_requests(managed.gpus),
                detach=True,
            )
        except DockerException as exc:
            message = f"container {name} could not be created: {_explain(exc)}"
            raise RuntimeStartError(scrub(message, env, managed.args)) from None
        try:
            await self._call(container.start)
        except DockerException as exc:
            await self._force_remove(container)
            reason = _explain(exc)
            if any(marker in reason for marker in _PORT_TAKEN):
                raise RuntimeStartError(self._port_taken(spec.host_port)) from None
            message = f"container {name} could not be started: {reason}"
            if "could not select device driver" in reason:
                message += "; the Docker host has no GPU runtime (set gpus: none, or install it)"
            raise RuntimeStartError(scrub(message, env, managed.args)) from None
        log.info("container_started", container=name, image=image, host_port=spec.host_port,
                 docker_host=self._where)
        return InstanceHandle(spec=spec, ref=container.id, labels=labels)

    async def preflight(self, managed: ManagedConfig) -> str | None:
        try:
            client = await self._docker()
            if managed.pull or not managed.image:
                return None
            await self._call(client.images.get, managed.image)
        except RuntimeStartError as exc:
            return str(exc)
        except ImageNotFound:
            return self._image_missing(managed.image or "")
        except DockerException as exc:
            return f"the Docker engine at {self._where} refused a check: {_explain(exc)}"
        return None

    @contextlib.contextmanager
    def _api_errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except DockerException as exc:
            raise RuntimeStartError(f"{what} failed on {self._where}: {_explain(exc)}") from None

    def _port_taken(self, port: int) -> str:
        return f"host port {port} is already in use on {self._where}; choose another port"

    def _image_missing(self, image: str) -> str:
        return (f"image {image} is not present on the Docker host ({self._where}); "
                "pull it or set pull: true")

    async def _ensure_image(self, client: docker.DockerClient, image: str, pull: bool) -> None:
        try:
            await self._call(client.images.get, image)
            return
        except ImageNotFound:
            if not pull:
                raise RuntimeStartError(self._image_missing(image)) from None
        log.info("image_pull", image=image, docker_host=self._where)
        try:
            await self._call(client.images.pull, image)
        except DockerException as exc:
            raise RuntimeStartError(f"image {image} could not be pulled: {_explain(exc)}") from None

    async def _force_remove(self, container: Container) -> None:
        try:
            await self._call(container.remove, force=True)
        except NotFound:
            pass
        except APIError as exc:
            if exc.status_code != 409:  # removal already in progress
                raise

    async def stop(self, handle: InstanceHandle, grace: float) -> None:
        with self._api_errors("stopping a container"):
            container = await self._container(handle.ref)
            if container is None:
                return
            try:
                await self._call(container.stop, timeout=math.ceil(max(0.0, grace)))
            except NotFound:
                return
            await self._force_remove(container)
        log.info("container_stopped", container=container.name)

    async def is_alive(self, handle: InstanceHandle) -> bool:
        with self._api_errors("reading container state"):
            container = await self._container(handle.ref)
        return container is not None and container.status == "running"

    async def listens(self, handle: InstanceHandle) -> bool | None:
        return None  # the engine published the port for this container, or failed the start

    async def exit_status(self, handle: InstanceHandle) -> str | None:
        with self._api_errors("reading container state"):
            container = await self._container(handle.ref)
        if container is None or container.status in ("created", "running", "restarting"):
            return None
        state = container.attrs.get("State", {})
        if state.get("OOMKilled"):
            return "killed: out of memory"
        how = f"exited with status {state.get('ExitCode')}"
        return f"{how}: {state['Error']}" if state.get("Error") else how

    async def logs(self, handle: InstanceHandle, lines: int = 30) -> str:
        with self._api_errors("reading container logs"):
            container = await self._container(handle.ref)
            if container is None:
                return ""
            try:
                raw: bytes = await self._call(container.logs, tail=lines)
            except NotFound:
                return ""
        managed = handle.spec.managed
        return scrub(raw.decode("utf-8", "replace"), managed.env, managed.args)

    def fingerprint(self, spec: InstanceSpec) -> str:
        """sha256 over what the container is created with (env values included, so it is a
        digest, never the values)."""
        managed = spec.managed
        created = {
            "image": managed.image,
            "args": [fill(arg, spec) for arg in managed.args],
            "env": {key: fill(value, spec) for key, value in sorted(managed.env.items())},
            "volumes": [fill(volume, spec) for volume in managed.volumes],
            "container_port": managed.container_port,
            "host_port": spec.host_port,
            "gpus": managed.gpus,
            "init": managed.init,
            "shm_size": managed.shm_size,
        }
        return hashlib.sha256(json.dumps(created, sort_keys=True).encode()).hexdigest()[:32]

    async def find_existing(self, backend: str, owner: str) -> list[FoundInstance]:
        client = await self._docker()
        with self._api_errors("listing containers"):
            containers = await self._call(
                client.containers.list, all=True, ignore_removed=True,
                filters={"label": [f"{LABEL_BACKEND}={backend}", f"{LABEL_OWNER}={owner}"]})
        return [self._found(container) for container in containers]

    @staticmethod
    def _found(container: Container) -> FoundInstance:
        labels = container.labels
        port = labels.get(LABEL_HOST_PORT, "")
        return FoundInstance(
            ref=container.id,
            backend=labels.get(LABEL_BACKEND, ""),
            model=labels.get(LABEL_MODEL, ""),
            instance=labels.get(LABEL_INSTANCE, ""),
            host_port=int(port) if port.isdigit() else None,
            running=container.status == "running",
            fingerprint=labels.get(LABEL_SPEC),
        )

    async def adopt(self, found: FoundInstance, spec: InstanceSpec) -> InstanceHandle:
        with self._api_errors("inspecting a container"):
            container = await self._container(found.ref)
        if container is None:
            raise RuntimeStartError(f"container {found.ref[:12]} is gone; it cannot be adopted")
        labels = {k: v for k, v in container.labels.items() if k.startswith(LABEL_PREFIX)}
        log.info("container_adopted", container=container.name, model=found.model)
        return InstanceHandle(spec=spec, ref=container.id, labels=labels)

    async def remove(self, found: FoundInstance) -> None:
        with self._api_errors("removing a container"):
            container = await self._container(found.ref)
            if container is None:
                return
            await self._force_remove(container)
        log.info("container_removed", container=container.name)

    async def _in_thread(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._closed:  # a retired supervisor's last request may still ask
            raise RuntimeStartError(f"the runtime for {self._where} is closed")
        if self._threads is None:
            self._threads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="docker")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, functools.partial(fn, *args, **kwargs))

    async def close(self) -> None:
        """Closing never waits behind calls stuck on a silent engine: the client's sessions
        are closed here, and the pool is told to go without waiting for its threads."""
        self._closed = True
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._threads is not None:
            self._threads.shutdown(wait=False, cancel_futures=True)
            self._threads = None
