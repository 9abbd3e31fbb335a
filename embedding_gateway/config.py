"""Typed config: YAML with ``${VAR}`` / ``${VAR:-default}`` interpolation, validated in one pass.

``load_config`` raises ``ConfigError`` whose ``problems`` name every error with its path
(``backends.tei.models.x.dimensions: …``), never only the first one.

The classes are frozen attrs classes that cattrs builds from the document. Scalars are
coerced (``_SCALARS``) because ``${VAR}`` always yields a string: ``port: "8000"`` is read as
an integer and ``playground: "no"`` as a boolean.
"""

from __future__ import annotations

import importlib.util
import math
import operator
import os
import re
from collections.abc import Callable, Iterator, Mapping, Set
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal, NewType, Union, get_args, get_origin
from urllib.parse import urlsplit

import attrs
import yaml
from attrs import field, frozen
from cattrs import Converter
from cattrs.cols import list_structure_factory
from cattrs.errors import (
    AttributeValidationNote,
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
)
from cattrs.gen import make_dict_structure_fn, override

from .errors import ConfigError

BackendKind = Literal["ollama", "tei", "vllm", "openai"]
Task = Literal["embed", "rerank"]
TokenIds = Literal["openai", "model", "refuse"]  # how a model reads token ids: token_input.py
HttpUrl = NewType("HttpUrl", str)  # http(s) with a host; kept without a trailing slash
DeviceId = NewType("DeviceId", str)  # ``gpus: [0, 1]`` and ``gpu: 0`` as YAML writes them
NonEmptyStr = NewType("NonEmptyStr", str)

_BOUNDS = {"gt": (operator.gt, ">"), "ge": (operator.ge, ">="), "le": (operator.le, "<=")}


def _bounds(**limits: float) -> Callable[[Any, Any, Any], None]:
    """An attrs validator: ``_bounds(ge=0, le=65535)``; ``None`` (an unset option) passes."""

    def check(_instance: Any, _attribute: Any, value: Any) -> None:
        for name, bound in limits.items():
            test, sign = _BOUNDS[name]
            if value is not None and not test(value, bound):
                raise ValueError(f"must be {sign} {bound}, got {value!r}")

    return check


def _api_prefix(value: str | None) -> None:
    if value and (not value.startswith("/") or value.endswith("/")):
        raise ValueError(f"must be empty or a path like /v1, got {value!r}")


def _redis_url(value: str) -> None:
    if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"must be a redis://, rediss:// or unix:// URL, got {value!r}")


def _non_empty(backends: Mapping[str, Any]) -> None:
    if not backends:
        raise ValueError("at least one backend is needed: with none, every model is a 404")


@frozen(kw_only=True)
class Limits:
    max_body_bytes: int = field(default=16 * 1024 * 1024, validator=_bounds(gt=0))
    max_inputs: int = field(default=4096, validator=_bounds(gt=0))
    # token ids one request may carry, all inputs together (a 413 above it)
    max_token_ids: int = field(default=1_048_576, validator=_bounds(gt=0))
    max_connections: int = field(default=1024, validator=_bounds(gt=0))  # open at once
    header_timeout: float = field(default=10, validator=_bounds(gt=0))  # s for a request's headers
    body_timeout: float = field(default=60, validator=_bounds(gt=0))  # s for its body
    keepalive_timeout: float = field(default=15, validator=_bounds(gt=0))  # idle between requests


@frozen(kw_only=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = field(default=8000, validator=_bounds(ge=0, le=65535))
    # bearer keys; a blank one (an unset ${VAR:-}) would let requests without a key in
    api_keys: list[NonEmptyStr] = field(factory=list)
    playground: bool = True
    limits: Limits = field(factory=Limits)
    shutdown_timeout: float = field(default=30, validator=_bounds(ge=0))
    ready_after_preload: bool = False
    health_interval: float = field(default=10, validator=_bounds(gt=0))
    health_timeout: float = field(default=2, validator=_bounds(gt=0))
    debug_endpoints: bool = False  # test-only hooks (e.g. block the loop); never in production


@frozen(kw_only=True)
class MetricsConfig:
    public: bool = False


@frozen(kw_only=True)
class GpuConfig:
    memory_gb: float = field(validator=_bounds(gt=0))


INPUT_TYPES = ("query", "passage", "classification", "clustering")


def _input_type_keys(_instance: Any, _attribute: Any, value: Mapping[str, Any]) -> None:
    unknown = sorted(set(value) - set(INPUT_TYPES))
    if unknown:
        raise ValueError(f"keys must be input types ({', '.join(INPUT_TYPES)}), got {unknown}")


def _input_type(_instance: Any, _attribute: Any, value: str | None) -> None:
    if value is not None and value not in INPUT_TYPES:
        raise ValueError(f"must be one of {', '.join(INPUT_TYPES)}, got {value!r}")


@frozen(kw_only=True)
class ModelConfig:
    aliases: list[str] = field(factory=list)
    upstream_model: str | None = None  # what a managed upstream loads ({model}); default: key
    served_name: str | None = None  # the upstream's name for it: sent in requests and checked
    #                                 against what it serves; default: upstream_model
    dimensions: int | None = field(default=None, validator=_bounds(gt=0))  # native output dims
    matryoshka: bool = False
    max_batch: int | None = field(default=None, validator=_bounds(gt=0))
    memory_gb: float | None = field(default=None, validator=_bounds(gt=0))
    gpu: DeviceId | None = None  # device id whose memory budget this model uses
    preload: bool = False
    pinned: bool = False
    keep_alive: str | int | None = None  # Ollama only
    task: Task | None = None  # null: what the upstream reports (TEI, Infinity), else embed
    # an input longer than the model takes: refused (400 naming it) or cut by the upstream
    truncation: Literal["refuse", "truncate"] = "refuse"
    max_input_tokens: int | None = field(default=None, validator=_bounds(gt=0))
    # how input_type reaches the model: text put before each input, TEI prompt names, or
    # the field itself sent on (servers that apply prompts themselves); see prompts.py
    prompts: dict[str, str] = field(factory=dict, validator=_input_type_keys)
    prompt_names: dict[str, str] = field(factory=dict, validator=_input_type_keys)
    forward_input_type: bool = False
    default_input_type: str | None = field(default=None, validator=_input_type)
    token_ids: TokenIds = "openai"
    cache: bool = True  # false: this model's vectors are never stored or answered from a cache


def ssh_supported() -> bool:
    """Docker's SDK reaches ``ssh://`` engines through paramiko, an optional extra: it weighs
    about 14 MB of memory that gateways on a local or ``tcp://`` engine need not carry."""
    return importlib.util.find_spec("paramiko") is not None


DOCKER_ONLY = ("image", "args", "container_port", "gpus", "volumes", "docker_host", "init",
               "shm_size", "pull")


@frozen(kw_only=True)
class ManagedConfig:
    runtime: Literal["docker", "process"]
    # docker
    image: str | None = None
    args: list[str] = field(factory=list)
    container_port: int = field(default=80, validator=_bounds(gt=0, le=65535))
    gpus: list[DeviceId] | Literal["all", "none"] = "none"  # or a list of device ids
    volumes: list[str] = field(factory=list)
    env: dict[str, str] = field(factory=dict, repr=False)  # may hold secrets
    docker_host: str | None = None
    init: bool = True
    shm_size: str | None = None
    pull: bool = False
    # process
    command: list[str] = field(factory=list)
    # both
    ports: tuple[int, int] | None = None  # host port range when several instances run
    start_timeout: float = field(default=600, validator=_bounds(gt=0))
    idle_timeout: float = field(default=1800, validator=_bounds(ge=0))
    stop_timeout: float = field(default=10, validator=_bounds(ge=0))
    max_instances: int = field(default=1, validator=_bounds(ge=1))
    max_wait: float = field(default=30, validator=_bounds(ge=0))  # fairness bound for queues
    min_loaded: float = field(default=0, validator=_bounds(ge=0))
    queue_timeout: float = field(default=300, validator=_bounds(gt=0))
    max_queue: int = field(default=1024, validator=_bounds(ge=1))
    on_shutdown: Literal["stop", "keep"] = "stop"

    def _check(self, given: Set[str]) -> None:
        """Rules across fields, applied when a document is parsed; ``given``: its keys."""
        if self.runtime == "docker" and not self.image:
            raise ValueError("runtime docker needs 'image'")
        if self.runtime == "process" and not self.command:
            raise ValueError("runtime process needs 'command'")
        other = DOCKER_ONLY if self.runtime == "process" else ("command",)
        misplaced = sorted(given & set(other))
        if misplaced:
            raise ValueError(f"{', '.join(misplaced)}: not used by runtime {self.runtime}")
        if (self.docker_host or "").startswith("ssh://") and not ssh_supported():
            raise ValueError("docker_host ssh://… needs paramiko: "
                             "pip install 'embedding-gateway[ssh]'")
        if self.ports and not all(0 < port < 65536 for port in self.ports):
            raise ValueError(f"ports {list(self.ports)} must be between 1 and 65535")
        if self.ports and self.ports[0] > self.ports[1]:
            raise ValueError("ports must be [low, high]")
        if self.ports and self.ports[1] - self.ports[0] + 1 < self.max_instances:
            raise ValueError(f"ports {list(self.ports)} hold fewer than max_instances "
                             f"({self.max_instances}) ports")


@frozen(kw_only=True)
class BackendConfig:
    kind: BackendKind
    base_url: HttpUrl
    api_key: str | None = None  # bearer key the upstream expects
    timeout: float = field(default=60, validator=_bounds(gt=0))
    max_batch: int | None = field(default=None, validator=_bounds(gt=0))
    # calls in flight to one upstream address; unset = learnt from its latency under load
    max_concurrency: int | None = field(default=None, validator=_bounds(ge=1))
    # how concurrent requests share upstream calls (null: by kind; see config.example.yaml)
    merge: Literal["wait", "eager", "off"] | None = None
    max_calls_per_request: int = field(default=4, validator=_bounds(ge=1))
    max_queued_inputs: int = field(default=65536, validator=_bounds(ge=1))
    max_queue_wait: float = field(default=30, validator=_bounds(gt=0))  # seconds, then 503
    max_request_bytes: int | None = field(default=None, validator=_bounds(gt=0))  # per call
    # where an OpenAI-compatible API lives under base_url: "/v1", or "" (Infinity without
    # --url-prefix); null: "/v1", else found at the first check
    api_prefix: str | None = field(default=None, validator=lambda _i, _a, v: _api_prefix(v))
    keep_alive: str | int | None = None  # Ollama only
    discover: bool = False  # Ollama: add embedding models found in /api/tags
    managed: ManagedConfig | None = None
    models: dict[str, ModelConfig] = field(factory=dict)

    @property
    def merge_mode(self) -> Literal["wait", "eager", "off"]:
        """``merge``, or the kind's default: servers that batch concurrent requests by
        themselves (TEI, vLLM) get them at once; the others, merged."""
        if self.merge is not None:
            return self.merge
        return "eager" if self.kind in ("tei", "vllm") else "wait"

    def _check(self, given: Set[str]) -> None:
        """Rules across fields, applied when a document is parsed."""
        if self.managed and self.kind == "ollama":
            raise ValueError("ollama backends are never managed; remove 'managed'")
        if self.kind != "ollama" and (self.discover or self.keep_alive is not None):
            raise ValueError("discover and keep_alive are for ollama backends only")
        if not self.models and not self.discover:
            raise ValueError("a backend needs at least one model (or discover: true)")
        if self.api_key and urlsplit(self.base_url).username is not None:
            raise ValueError("credentials in base_url and api_key: give one of them")
        for name, model in self.models.items():
            self._check_inputs(name, model)

    def _check_inputs(self, name: str, model: ModelConfig) -> None:
        ways = [w for w in ("prompts", "prompt_names", "forward_input_type") if getattr(model, w)]
        if len(ways) > 1:
            raise ValueError(f"model {name!r}: {' and '.join(ways)}: give one of them")
        if model.prompt_names and self.kind != "tei":
            raise ValueError(f"model {name!r}: prompt_names is for tei backends only")
        if model.forward_input_type and self.kind != "openai":
            raise ValueError(f"model {name!r}: forward_input_type is for openai backends only")
        if model.truncation == "truncate" and self.kind == "openai":
            raise ValueError(f"model {name!r}: truncation: truncate needs an upstream the "
                             "gateway can ask to truncate (ollama, tei, vllm)")


@frozen(kw_only=True)
class RedisCacheConfig:
    url: str = field(validator=lambda _i, _a, v: _redis_url(v))
    ttl: float = field(default=7 * 24 * 3600, validator=_bounds(ge=0))  # seconds; 0 = none
    timeout: float = field(default=0.1, validator=_bounds(gt=0))  # s per call, then it is down
    retry_after: float = field(default=5, validator=_bounds(gt=0))  # s left alone once down
    prefix: str = "embedding-gateway:"


@frozen(kw_only=True)
class CacheConfig:
    memory_bytes: int = field(default=128 * 1024 * 1024, validator=_bounds(ge=0))  # 0 = off
    unversioned: bool = True  # cache models whose upstream reports no revision
    redis: RedisCacheConfig | None = None


@frozen(kw_only=True)
class GatewayConfig:
    server: ServerConfig = field(factory=ServerConfig)
    metrics: MetricsConfig = field(factory=MetricsConfig)
    cache: CacheConfig = field(factory=CacheConfig)
    gpus: dict[DeviceId, GpuConfig] = field(factory=dict)
    backends: dict[str, BackendConfig] = field(validator=lambda _i, _a, value: _non_empty(value))


class _Invalid(ValueError):
    """A value of the wrong kind; ``expected`` says what would have been taken."""

    def __init__(self, expected: str, value: Any) -> None:
        super().__init__(f"expected {expected}, got {value!r}")
        self.expected = expected


_INT_TEXT = re.compile(r"[+-]?[0-9]+(?:_[0-9]+)*(?:\.0+)?")
_BOOL_TEXT = {"1": True, "on": True, "t": True, "true": True, "y": True, "yes": True,
              "0": False, "off": False, "f": False, "false": False, "n": False, "no": False}


def _to_int(value: Any) -> int | None:
    if isinstance(value, bool):  # `port: true` is a mistake, not 1
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT_TEXT.fullmatch(text := value.strip()):
        return int(text.partition(".")[0])
    return None


def _to_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if not isinstance(value, int | float | str) or (isinstance(value, str) and not value.isascii()):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _to_bool(value: Any) -> bool | None:
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    return _BOOL_TEXT.get(value.lower()) if isinstance(value, str) else None


def _check_http_url(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http(s) URL with a host, got {value!r}")
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError as exc:
        raise ValueError(f"bad port in {value!r}") from exc
    return value.rstrip("/")


# each type: what it takes, and a coercion returning None for a value it does not take
_SCALARS: dict[Any, tuple[str, Callable[[Any], Any]]] = {
    str: ("a string", lambda v: v if isinstance(v, str) else None),
    NonEmptyStr: ("a non-empty string", lambda v: v if isinstance(v, str) and v else None),
    DeviceId: ("a device id", lambda v: str(v) if type(v) is int else v if isinstance(v, str)
               else None),
    HttpUrl: ("an http(s) URL", _check_http_url),
    int: ("an integer", _to_int),
    float: ("a number", _to_float),
    bool: ("a boolean (true/false, yes/no, on/off, 1/0)", _to_bool),
}
# container origin: (the Python types it is written as, what it takes)
_SHAPES: dict[Any, tuple[Any, str]] = {
    list: ((list, tuple), "a list"),
    tuple: ((list, tuple), "a list of {n} items"),
    dict: (dict, "a mapping"),
}

_converter = Converter(forbid_extra_keys=True, detailed_validation=True)


def _scalar(expected: str, coerce: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
    def structure(value: Any, _: Any) -> Any:
        result = coerce(value)
        if result is None:
            raise _Invalid(expected, value)
        return result

    return structure


def _literal(choices: Any) -> Callable[[Any, Any], Any]:
    options = get_args(choices)
    expected = " or ".join(map(repr, options))

    def structure(value: Any, _: Any) -> Any:
        if isinstance(value, str) and value in options:
            return value
        raise _Invalid(expected, value)

    return structure


def _union(union: Any) -> Callable[[Any, Any], Any]:
    """Each member in turn, as written; a value of the wrong kind for all names them all."""
    members = [(m, _converter.get_structure_hook(m)) for m in get_args(union) if m is not NoneType]
    nullable = NoneType in get_args(union)

    def structure(value: Any, _: Any) -> Any:
        if value is None and nullable:
            return None
        expected = []
        for member, hook in members:
            try:
                return hook(value, member)
            except _Invalid as exc:
                expected.append(exc.expected)
        raise _Invalid(" or ".join(expected + ["null"] * nullable), value)

    return structure


def _container(kind: Any) -> Callable[[Any, Any], Any]:
    """cattrs' own hook for lists, tuples and dicts, after a check that the value is one."""
    origin, args = get_origin(kind), get_args(kind)
    written_as, expected = _SHAPES[origin]
    expected = expected.format(n=len(args))
    hook: Callable[[Any, Any], Any]
    if origin is tuple:
        hook = _converter.gen_structure_hetero_tuple(kind)
    elif origin is list:
        hook = list_structure_factory(kind, _converter)
    else:
        hook = _converter.gen_structure_mapping(kind)

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, written_as) or (origin is tuple and len(value) != len(args)):
            raise _Invalid(expected, value)
        return hook(value, kind)

    return structure


def _validated(attribute: attrs.Attribute[Any]) -> Callable[[Any, Any], Any]:
    """Structure one field and apply its validator there, so each field reports its own error."""
    hook = _converter.get_structure_hook(attribute.type)

    def structure(value: Any, kind: Any) -> Any:
        result = hook(value, kind)
        attribute.validator(None, attribute, result)  # type: ignore[misc]
        return result

    return structure


def _config_class(cls: type) -> Callable[[Any, Any], Any]:
    attrs.resolve_types(cls)
    checked = {a.name: override(struct_hook=_validated(a)) for a in attrs.fields(cls)
               if a.validator}
    build: Callable[[Any, Any], Any] = make_dict_structure_fn(
        cls, _converter, **checked)  # type: ignore[arg-type]

    def structure(value: Any, _: Any) -> Any:
        if value is None and cls is ModelConfig:  # a bare ``model-name:`` takes the defaults
            value = {}
        if not isinstance(value, dict):
            raise _Invalid("a mapping", value)
        config = build(value, cls)
        if hasattr(config, "_check"):
            config._check(value.keys())
        return config

    return structure


for _kind, (_expected, _coerce) in _SCALARS.items():
    _converter.register_structure_hook(_kind, _scalar(_expected, _coerce))
_converter.register_structure_hook_factory(lambda t: get_origin(t) is Literal, _literal)
_converter.register_structure_hook_factory(
    lambda t: get_origin(t) in (Union, UnionType), _union)
_converter.register_structure_hook_factory(lambda t: get_origin(t) in _SHAPES, _container)
_converter.register_structure_hook_factory(attrs.has, _config_class)


def _problems(exc: BaseException, path: str) -> Iterator[str]:
    """cattrs' error tree as ``path: message`` lines, one per problem."""
    if isinstance(exc, ClassValidationError | IterableValidationError):
        in_list = get_origin(exc.cl) in (list, tuple)
        with_notes, without = exc.group_exceptions()
        for sub, note in with_notes:
            step = note.name if isinstance(note, AttributeValidationNote) else note.index
            yield from _problems(sub, f"{path}[{step}]" if in_list else _join(path, step))
        for sub in without:
            yield from _problems(sub, path)
    elif isinstance(exc, ForbiddenExtraKeysError):
        yield from (f"{_join(path, key)}: unknown key" for key in sorted(exc.extra_fields, key=str))
    elif isinstance(exc, KeyError):
        yield f"{path}: required but missing"
    else:
        yield f"{path or '(top level)'}: {exc}"


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


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
            places += [(alias, f"{where}.aliases")
                       for alias in (aliases if isinstance(aliases, list) else [])
                       if isinstance(alias, str)]
            for name, place in places:
                if name in seen:
                    problems.append(f"{place}: name {name!r} is also defined at {seen[name]}")
                else:
                    seen[name] = place
    return problems


Placed = tuple[str, str | None, ModelConfig]  # where, its backend's kind, the model


def _placed(backends: dict[str, BackendConfig]) -> list[Placed]:
    return [(f"backends.{backend_name}.models.{model_name}", backend.kind, opts)
            for backend_name, backend in backends.items()
            for model_name, opts in backend.models.items()]


def _cross_checks(gpus: dict[str, GpuConfig] | None, models: list[Placed]) -> list[str]:
    """Rules between sections; ``gpus`` is ``None`` when that section is itself invalid."""
    problems = []
    for where, kind, opts in models:
        if opts.gpu is not None and gpus is not None and opts.gpu not in gpus:
            problems.append(f"{where}.gpu: device {opts.gpu!r} is not declared under gpus")
        elif opts.gpu is not None and gpus is not None and \
                (opts.memory_gb or 0) > gpus[opts.gpu].memory_gb:
            problems.append(f"{where}.memory_gb: {opts.memory_gb:g} GB can never fit on "
                            f"device {opts.gpu!r} ({gpus[opts.gpu].memory_gb:g} GB)")
        if opts.keep_alive is not None and kind not in ("ollama", None):
            problems.append(f"{where}.keep_alive: only ollama backends take keep_alive")
        if opts.task == "rerank" and kind == "ollama":
            problems.append(f"{where}.task: Ollama has no rerank API")
        if opts.token_ids == "model" and kind == "ollama":
            problems.append(f"{where}.token_ids: ollama takes text only, not token ids; "
                            "use openai (ids decoded to text) or refuse")
    return problems


def _valid_parts(data: dict[str, Any]) -> tuple[dict[str, GpuConfig] | None, list[Placed]]:
    """The pieces of an invalid document that are valid by themselves (the gpus section, each
    model's options), so that the rules between them are checked too: every problem in one
    pass."""
    def part(kind: Any, value: Any) -> Any:
        try:
            return _converter.structure(value, kind)
        except Exception:  # its problems are reported already: skip the piece
            return None

    models = []
    for backend_name, backend in _as_dict(data.get("backends")).items():
        kind = _as_dict(backend).get("kind")
        for model_name, raw in _as_dict(_as_dict(backend).get("models")).items():
            opts = part(ModelConfig, raw)
            if opts is not None:
                models.append((f"backends.{backend_name}.models.{model_name}",
                               kind if kind in get_args(BackendKind) else None, opts))
    return part(dict[DeviceId, GpuConfig], data.get("gpus", {})), models


def parse_config(raw: Any, env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Validate an already-parsed YAML document; raise ``ConfigError`` with every problem."""
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError(["(top level): the config must be a mapping"])
    data = _interpolate(raw, os.environ if env is None else env, "", problems)
    problems += _duplicate_names(data)
    try:
        config = _converter.structure(data, GatewayConfig)
    except (ClassValidationError, ValueError) as exc:
        unset = {p.split(": ", 1)[0] for p in problems}  # a follow-on error adds nothing
        problems += [p for p in _problems(exc, "") if p.split(": ", 1)[0] not in unset]
        problems += _cross_checks(*_valid_parts(data))
        raise ConfigError(problems) from None
    problems += _cross_checks(config.gpus, _placed(config.backends))
    if problems:
        raise ConfigError(problems)
    return config


def load_config(path: str | Path, env: Mapping[str, str] | None = None) -> GatewayConfig:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: invalid YAML: {exc}"]) from None
    return parse_config(raw, env)
