"""Typed config: YAML with ``${VAR}`` / ``${VAR:-default}`` interpolation, validated in one pass.

``load_config`` raises ``ConfigError`` whose ``problems`` name every error with its path
(``backends.tei.models.x.dimensions: …``), never only the first one.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError

BackendKind = Literal["ollama", "tei", "vllm", "openai"]


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http(s) URL with a host, got {value!r}")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        raise ValueError(f"bad port in {value!r}") from exc
    return value.rstrip("/")


HttpUrl = Annotated[str, AfterValidator(_check_http_url)]
# ``gpus: [0, 1]`` and ``gpu: 0`` as YAML writes them: device ids are kept as strings
DeviceId = Annotated[str, BeforeValidator(lambda v: str(v) if type(v) is int else v)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Limits(_Strict):
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    max_inputs: int = Field(default=4096, gt=0)


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    # bearer keys; a blank one (an unset ${VAR:-}) would let requests without a key in
    api_keys: list[Annotated[str, Field(min_length=1)]] = []
    playground: bool = True
    limits: Limits = Limits()
    shutdown_timeout: float = Field(default=30, ge=0)
    ready_after_preload: bool = False
    health_interval: float = Field(default=10, gt=0)
    health_timeout: float = Field(default=2, gt=0)
    debug_endpoints: bool = False  # test-only hooks (e.g. block the loop); never in production


class MetricsConfig(_Strict):
    public: bool = False


class GpuConfig(_Strict):
    memory_gb: float = Field(gt=0)


class ModelConfig(_Strict):
    aliases: list[str] = []
    upstream_model: str | None = None  # what a managed upstream loads ({model}); default: key
    served_name: str | None = None  # the upstream's name for it: sent in requests and checked
    #                                 against what it serves; default: upstream_model
    dimensions: int | None = Field(default=None, gt=0)  # native output dims, when known
    matryoshka: bool = False
    max_batch: int | None = Field(default=None, gt=0)
    memory_gb: float | None = Field(default=None, gt=0)
    gpu: DeviceId | None = None  # device id whose memory budget this model uses
    preload: bool = False
    pinned: bool = False
    keep_alive: str | int | None = None  # Ollama only


DOCKER_ONLY = ("image", "args", "container_port", "gpus", "volumes", "docker_host", "init",
               "shm_size", "pull")


class ManagedConfig(_Strict):
    runtime: Literal["docker", "process"]
    # docker
    image: str | None = None
    args: list[str] = []
    container_port: int = Field(default=80, gt=0, le=65535)
    gpus: list[DeviceId] | Literal["all", "none"] = "none"  # or a list of device ids
    volumes: list[str] = []
    env: dict[str, str] = Field(default={}, repr=False)  # may hold secrets
    docker_host: str | None = None
    init: bool = True
    shm_size: str | None = None
    pull: bool = False
    # process
    command: list[str] = []
    # both
    ports: tuple[int, int] | None = None  # host port range when several instances run
    start_timeout: float = Field(default=600, gt=0)
    idle_timeout: float = Field(default=1800, ge=0)
    stop_timeout: float = Field(default=10, ge=0)
    max_instances: int = Field(default=1, ge=1)
    max_wait: float = Field(default=30, ge=0)  # fairness bound for queued models
    min_loaded: float = Field(default=0, ge=0)
    queue_timeout: float = Field(default=300, gt=0)
    max_queue: int = Field(default=1024, ge=1)
    on_shutdown: Literal["stop", "keep"] = "stop"

    @model_validator(mode="after")
    def _runtime_fields(self) -> ManagedConfig:
        if self.runtime == "docker" and not self.image:
            raise ValueError("runtime docker needs 'image'")
        if self.runtime == "process" and not self.command:
            raise ValueError("runtime process needs 'command'")
        other = DOCKER_ONLY if self.runtime == "process" else ("command",)
        misplaced = sorted(self.model_fields_set & set(other))
        if misplaced:
            raise ValueError(f"{', '.join(misplaced)}: not used by runtime {self.runtime}")
        if self.ports and self.ports[0] > self.ports[1]:
            raise ValueError("ports must be [low, high]")
        if self.ports and self.ports[1] - self.ports[0] + 1 < self.max_instances:
            raise ValueError(f"ports {list(self.ports)} hold fewer than max_instances "
                             f"({self.max_instances}) ports")
        return self


class BackendConfig(_Strict):
    kind: BackendKind
    base_url: HttpUrl
    api_key: str | None = None  # bearer key the upstream expects
    timeout: float = Field(default=60, gt=0)
    max_batch: int | None = Field(default=None, gt=0)
    max_concurrency: int = Field(default=4, ge=1)
    keep_alive: str | int | None = None  # Ollama only
    discover: bool = False  # Ollama: add embedding models found in /api/tags
    managed: ManagedConfig | None = None
    models: dict[str, ModelConfig] = {}

    @field_validator("models", mode="before")
    @classmethod
    def _empty_models(cls, value: Any) -> Any:
        """``model-name: {}`` and a bare ``model-name:`` both mean default options."""
        if isinstance(value, dict):
            return {name: {} if opts is None else opts for name, opts in value.items()}
        return value

    @model_validator(mode="after")
    def _kind_rules(self) -> BackendConfig:
        if self.managed and self.kind == "ollama":
            raise ValueError("ollama backends are never managed; remove 'managed'")
        if self.kind != "ollama" and (self.discover or self.keep_alive is not None):
            raise ValueError("discover and keep_alive are for ollama backends only")
        if not self.models and not self.discover:
            raise ValueError("a backend needs at least one model (or discover: true)")
        return self


class GatewayConfig(_Strict):
    server: ServerConfig = ServerConfig()
    metrics: MetricsConfig = MetricsConfig()
    gpus: dict[DeviceId, GpuConfig] = {}
    backends: dict[str, BackendConfig]


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _interpolate(node: Any, env: Mapping[str, str], path: str, problems: list[str]) -> Any:
    if isinstance(node, dict):
        return {k: _interpolate(v, env, f"{path}.{k}" if path else str(k), problems)
                for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, env, f"{path}[{i}]", problems) for i, v in enumerate(node)]
    if not isinstance(node, str) or "${" not in node:
        return node

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in env and (env[name] != "" or default is None):
            return env[name]
        if default is not None:
            return default
        problems.append(f"{path}: environment variable {name} is not set")
        return ""

    return _VAR.sub(substitute, node)


def _loc(loc: tuple[Any, ...]) -> str:
    """``("backends", "tei", "args", 0)`` → ``backends.tei.args[0]``; union tags are dropped."""
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif "[" not in str(item):
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def _as_dict(value: Any) -> dict[Any, Any]:
    return value if isinstance(value, dict) else {}


def _duplicate_names(data: dict[str, Any]) -> list[str]:
    """Names and aliases unique across backends; read from the raw document so that this
    check reports alongside type errors elsewhere."""
    seen: dict[str, str] = {}
    problems = []
    for backend_name, backend in _as_dict(data.get("backends")).items():
        for model_name, opts in _as_dict(_as_dict(backend).get("models")).items():
            where = f"backends.{backend_name}.models.{model_name}"
            aliases = _as_dict(opts).get("aliases")
            places = [(str(model_name), where)]
            places += [(alias, f"{where}.aliases") for alias in aliases or []
                       if isinstance(alias, str)]
            for name, place in places:
                if name in seen:
                    problems.append(f"{place}: name {name!r} is also defined at {seen[name]}")
                else:
                    seen[name] = place
    return problems


def _cross_checks(config: GatewayConfig) -> list[str]:
    problems = []
    for backend_name, backend in config.backends.items():
        for model_name, opts in backend.models.items():
            where = f"backends.{backend_name}.models.{model_name}"
            if opts.gpu is not None and opts.gpu not in config.gpus:
                problems.append(f"{where}.gpu: device {opts.gpu!r} is not declared under gpus")
            elif opts.gpu is not None and (opts.memory_gb or 0) > config.gpus[opts.gpu].memory_gb:
                problems.append(f"{where}.memory_gb: {opts.memory_gb:g} GB can never fit on "
                                f"device {opts.gpu!r} ({config.gpus[opts.gpu].memory_gb:g} GB)")
            if opts.keep_alive is not None and backend.kind != "ollama":
                problems.append(f"{where}.keep_alive: only ollama backends take keep_alive")
    return problems


def parse_config(raw: Any, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Validate an already-parsed YAML document; raise ``ConfigError`` with every problem."""
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError(["(top level): the config must be a mapping"])
    data = _interpolate(raw, os.environ if env is None else env, "", problems)
    problems += _duplicate_names(data)
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        unset = {p.split(": ", 1)[0] for p in problems}  # a follow-on error adds nothing
        problems += [f"{_loc(err['loc'])}: {err['msg']}" for err in exc.errors()
                     if _loc(err["loc"]) not in unset]
        raise ConfigError(problems) from None
    problems += _cross_checks(config)
    if problems:
        raise ConfigError(problems)
    return config


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: invalid YAML: {exc}"]) from None
    return parse_config(raw, env)
