"""What every upstream adapter shares: the HTTP call, error translation and served-model checks.

An adapter turns one chunk of inputs into a float32 matrix plus a token count, and tells what
model an upstream serves. Everything upstream-specific (paths, bodies, error shapes, limits)
stays inside its adapter; the router sees only ``Embeddings`` or a ``GatewayError``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from pybase64 import b64decode  # SIMD base64: the standard library's results, faster

from ..config import BackendConfig, ModelConfig, Task
from ..errors import (
    GatewayError,
    QueueFull,
    Unavailable,
    UnsupportedInput,
    UpstreamFailed,
    UpstreamRejected,
    UpstreamTimeout,
)
from ..http_client import HttpClient, HttpError, Reply
from ..prompts import NO_OPTIONS, CallOptions
from ..rerank_schemas import Scores
from ..schemas import Embeddings, Inputs
from ..truncation import too_long


@dataclass(frozen=True)
class ServedIdentity:
    """What an upstream says it serves under one name: the weights' own name (TEI
    ``model_id``, vLLM's ``root``, Ollama's tag) and their revision where it reports one (TEI
    ``model_sha``, Ollama's digest, vLLM's ``root``); ``None`` when it reports none."""

    model: str
    revision: str | None


@dataclass
class Probe:
    """One health check of an upstream: reachable, and which configured models it serves."""

    reachable: bool
    reason: str | None = None
    served: set[str] = field(default_factory=set)  # served names of configured models it serves
    mismatch: dict[str, str] = field(default_factory=dict)  # model -> why it is not served
    # models the upstream does not have at all (Ollama: not pulled); requests still go through
    # so that the upstream's own answer ("try pulling it first", 404) reaches the client
    absent: dict[str, str] = field(default_factory=dict)
    discovered: set[str] = field(default_factory=set)  # embedding models found, not configured
    # what it serves under each name (by ``Backend.identity_key``): the fingerprint that
    # cached vectors are keyed by
    identities: dict[str, ServedIdentity] = field(default_factory=dict)
    error: GatewayError | None = None  # why it is unreachable, to answer requests in kind


class reading:  # lower case: it reads as the guard it is, ``with reading(where):``
    """An upstream answer of an unexpected shape (a list where an object belongs, a string
    for a number) is the upstream's failure, a 502, never the gateway's 500."""

    __slots__ = ("where",)

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        if exc is not None and isinstance(exc, _SHAPE_ERRORS):
            raise UpstreamFailed(
                f"{self.where} returned an answer of an unexpected shape ({exc})",
                upstream_kind="bad_response",
            ) from exc


_SHAPE_ERRORS = (AttributeError, TypeError, ValueError, KeyError, IndexError)
ENVELOPE_BYTES = 512  # a call's JSON beside its inputs: model name, options, brackets


def in_index_order(items: list[Any], where: str) -> list[Any]:
    """OpenAI-shaped ``data`` items by their ``index``, which must be exactly 0..n-1."""
    if all(isinstance(item, dict) and "index" in item for item in items):
        ordered = sorted(items, key=lambda item: int(item["index"]))
        if [int(item["index"]) for item in ordered] != list(range(len(items))):
            raise UpstreamFailed(f"{where} returned indices other than 0..{len(items) - 1}",
                                 upstream_kind="bad_response")
        return ordered
    if any(isinstance(item, dict) and "index" in item for item in items):
        raise UpstreamFailed(f"{where} returned some items without an index",
                             upstream_kind="bad_response")
    return items


def scores_by_index(items: list[Any], expected: int, where: str) -> np.ndarray:
    """Rerank results (``{"index", "relevance_score"}`` or TEI's ``{"index", "score"}``, in
    any order) as one score per document, in the documents' order. Every index 0..n-1 exactly
    once and finite numbers, else the answer is the upstream's failure."""
    scores = np.full(expected, np.nan)
    for item in items:
        index = item["index"]
        score = item["relevance_score"] if "relevance_score" in item else item["score"]
        if type(index) is not int or not 0 <= index < expected or not np.isnan(scores[index]):
            raise UpstreamFailed(f"{where} returned indices other than 0..{expected - 1}",
                                 upstream_kind="bad_response")
        if type(score) not in (int, float):
            raise ValueError(f"a score must be a number, got {score!r:.40}")
        scores[index] = score
    if len(items) != expected or not np.isfinite(scores).all():
        raise UpstreamFailed(f"{where} returned {len(items)} scores for {expected} documents, "
                             "or scores that are not finite", upstream_kind="bad_response")
    return scores


def served_name(name: str, model: ModelConfig) -> str:
    """The name the upstream knows a configured model by: sent in requests, and checked
    against what it reports serving."""
    return model.served_name or model.upstream_model or name


def upstream_name(name: str, model: ModelConfig) -> str:
    """What a managed upstream is started with (fills ``{model}``)."""
    return model.upstream_model or name


def numbers(value: Any) -> np.ndarray:
    """JSON arrays of numbers as a float32 array; booleans and numeric strings are not
    numbers (numpy would read ``true`` and ``"0.5"`` as 1.0 and 0.5)."""
    array = np.asarray(value)
    if array.dtype.kind not in "fiu":
        raise ValueError(f"not numbers (read as {array.dtype})")
    return array.astype(np.float32, copy=False)


def decode_vector(value: Any) -> np.ndarray:
    """One upstream vector (float list or base64 float32 LE) as a float32 array."""
    if isinstance(value, str):
        return np.frombuffer(b64decode(value), dtype="<f4")
    vector = numbers(value)
    if vector.ndim != 1:
        raise ValueError(f"a vector must be one-dimensional, got {vector.ndim} dimensions")
    return vector


TOKEN_COUNT_LIMIT = 2**40  # far beyond any request; a count past it is not a count


def token_count(value: Any, where: str) -> int:
    """An upstream's token count: absent is 0; anything but a plausible count is its fault."""
    if value is None:
        return 0
    if type(value) is not int or not 0 <= value < TOKEN_COUNT_LIMIT:
        raise UpstreamFailed(f"{where} reported an impossible token count ({value!r:.40})",
                             upstream_kind="bad_response")
    return value


def stack(vectors: list[np.ndarray], expected: int, where: str) -> np.ndarray:
    if len(vectors) != expected:
        raise UpstreamFailed(f"{where} returned {len(vectors)} vectors for {expected} inputs")
    if not vectors:
        raise UpstreamFailed(f"{where} returned no vectors")
    dims = {v.shape[0] for v in vectors}
    if len(dims) != 1 or 0 in dims:
        raise UpstreamFailed(f"{where} returned vectors of differing or zero length")
    return np.vstack(vectors).astype(np.float32, copy=False)


def decode_vectors(values: list[Any], expected: int, where: str) -> np.ndarray:
    """Upstream vectors as one float32 matrix.

    Base64 rows of one length are decoded into a single buffer that becomes the matrix without
    another copy, float lists of one length into one array in one call; anything else (ragged
    or broken rows) goes through ``stack``, which names the problem.
    """
    try:
        matrix = _decode(values, expected, where)
    except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError
        raise UpstreamFailed(
            f"{where} returned a vector that is neither a list of numbers nor base64",
            upstream_kind="bad_response",
        ) from exc
    if not np.isfinite(matrix).all():
        raise UpstreamFailed(f"{where} returned a vector with NaN or infinite values",
                             upstream_kind="bad_response")
    return matrix


def _decode(values: list[Any], expected: int, where: str) -> np.ndarray:
    if len(values) == expected and values:
        if all(type(v) is str for v in values):
            rows = [b64decode(v) for v in values]
            size = len(rows[0])
            if size and size % 4 == 0 and all(len(r) == size for r in rows):
                return np.frombuffer(b"".join(rows), dtype="<f4").reshape(expected, size // 4)
        elif all(type(v) is list for v in values):
            try:
                matrix = numbers(values)
            except (ValueError, TypeError):
                matrix = None  # ragged or not numbers: stack names the problem
            if matrix is not None and matrix.ndim == 2 and matrix.shape[1] > 0:
                return matrix
    return stack([decode_vector(v) for v in values], expected, where)


class Backend(ABC):
    """One configured backend: its adapter and its limits."""

    kind: str
    learns_tasks: bool = False  # does its check report what each model does?
    can_truncate: bool = True  # can be asked to cut an over-long input at the model's limit
    takes_prompt_name: bool = False  # TEI: a request may name one of the model's own prompts
    default_batch: int = 32
    default_request_bytes: int | None = None  # the upstream's default body limit, if any

    def __init__(self, name: str, config: BackendConfig, client: HttpClient) -> None:
        self.name = name
        self.config = config
        self.client = client
        self.upstream_batch_limit: int | None = None  # the upstream's own, learnt by probe()
        # served name -> every name the upstream reports for the same weights (vLLM's
        # several --served-model-names, TEI's model_id and served_model_name): an answer
        # named by any of them comes from the model asked for. Learnt by probe().
        self.same_weights: dict[str, frozenset[str]] = {}
        # inputs it takes in flight at once, where it says (TEI: max_concurrent_requests)
        self.inflight_input_ceiling: int | None = None
        self.limits: dict[str, Any] = {}  # what the upstream says of its limits, for /health
        # served name -> what the upstream reports the model does (None: it reports the
        # model, not its task). Learnt by probe(), where the upstream says (learns_tasks).
        self.tasks: dict[str, Task | None] = {}
        headers = b"Accept: application/json\r\n"
        if config.api_key:
            headers += f"Authorization: Bearer {config.api_key}\r\n".encode()
        self._headers = headers

    def batch_limit(self, model: ModelConfig) -> int:
        limits = [model.max_batch, self.config.max_batch, self.upstream_batch_limit]
        return min([x for x in limits if x] or [self.default_batch])

    @property
    def request_byte_limit(self) -> int | None:
        """Bytes of inputs one call may carry (the request's envelope aside)."""
        limit = self.config.max_request_bytes or self.default_request_bytes
        return None if limit is None else max(limit - ENVELOPE_BYTES, 1)

    @abstractmethod
    async def embed(
        self, base_url: str, name: str, model: ModelConfig, inputs: Inputs, *,
        options: CallOptions = NO_OPTIONS, truncate: bool = False,
    ) -> Embeddings:
        """Vectors for one chunk (within ``batch_limit``), verified to come from ``model``.
        With ``truncate`` false an over-long input fails the call with ``InputTooLong``."""

    def input_limit(self, name: str, model: ModelConfig) -> int | None:
        """The model's input limit in tokens: configured, else as the upstream reports it."""
        return model.max_input_tokens

    async def rerank(self, base_url: str, name: str, model: ModelConfig, query: str,
                     documents: list[str]) -> Scores:
        """Scores for one chunk of documents (within ``batch_limit``), verified to come from
        ``model``."""
        raise UnsupportedInput(f"backend {self.name!r} ({self.config.kind}) has no rerank API",
                               param="model")

    def task(self, name: str, model: ModelConfig) -> Task | None:
        """What a model does: what the upstream reports, else what the config declares, else
        embed; None while an upstream that would report it has not been asked yet."""
        served = served_name(name, model)
        if served in self.tasks:
            return self.tasks[served] or model.task or "embed"
        return model.task or (None if self.learns_tasks else "embed")

    @abstractmethod
    async def probe(self, base_url: str, timeout: float) -> Probe:
        """Is the upstream up, and which configured models does it serve?"""

    def answers_as(self, asked: str, model: ModelConfig, name: str) -> frozenset[str]:
        """The model names an answer for ``asked`` may carry."""
        return self.same_weights.get(asked, frozenset()) | {asked, upstream_name(name, model)}

    def check_served(self, serving: set[str], serves: str,
                     groups: list[frozenset[str]] | None = None) -> Probe:
        """A reachable upstream's check: each configured model is among ``serving``, or is a
        mismatch that names what the upstream ``serves`` instead. ``groups``: the names that
        the upstream reports for one set of weights each."""
        self.same_weights = {name: group for group in groups or () for name in group}
        probe = Probe(reachable=True)
        for name, model in self.config.models.items():
            expected = served_name(name, model)
            if expected in serving:
                probe.served.add(expected)
            else:
                probe.mismatch[name] = f"upstream serves {serves}, not {expected}"
        return probe

    def identity_key(self, served: str) -> str:
        """How ``Probe.identities`` is keyed: the served name as the upstream matches it."""
        return served

    def canonical(self, name: str) -> str:
        """The upstream's own spelling of a model name (Ollama adds ``:latest``)."""
        return name

    async def preload(self, base_url: str, name: str, model: ModelConfig) -> None:  # noqa: B027
        """Ask the upstream to load ``model`` ahead of requests (Ollama only)."""

    def error_message(self, body: Any) -> str | None:
        """The upstream's own error text from a parsed error body: OpenAI's and vLLM's
        ``{"error": {"message"}}``, Ollama's ``{"error": "…"}``, TEI's flat ``message``, and
        FastAPI's ``{"detail": "…" | [{"loc", "msg"}, …]}`` (Infinity's 422s)."""
        if not isinstance(body, dict):
            return None
        err = body.get("error")
        if isinstance(err, dict):
            return str(err.get("message") or err)
        if isinstance(err, str):
            return err
        if "message" in body:
            return str(body["message"])
        detail = body.get("detail")
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list) and detail:
            return "; ".join(_validation_item(item) for item in detail)
        return None

    async def request_json(
        self, method: str, url: str, payload: Any | None = None, *, timeout: float | None = None
    ) -> Any:
        """One upstream call; every failure becomes the right ``GatewayError``."""
        body, _ = await self.request_reply(method, url, payload, timeout=timeout)
        return body

    async def request_reply(
        self, method: str, url: str, payload: Any | None = None, *, timeout: float | None = None
    ) -> tuple[Any, Reply]:
        """``request_json``, and the reply it was read from."""
        where = f"upstream {self.name!r}"
        timeout = timeout or self.config.timeout
        headers = self._headers
        data = None
        if payload is not None:
            data = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)  # token ids
            headers += b"Content-Type: application/json\r\n"
        try:
            reply = await self.client.request(
                method, url, data, headers=headers, timeout=timeout
            )
        except TimeoutError:
            raise UpstreamTimeout(
                f"{where} did not answer within {timeout:g} s", upstream_kind="timeout"
            ) from None
        except HttpError as exc:
            raise UpstreamFailed(
                f"{where} could not be reached: {exc}", upstream_kind="refused"
            ) from exc
        raw, status = reply.body, reply.status
        if 300 <= status < 400:
            raise UpstreamFailed(
                f"{where} answered with a redirect (HTTP {status}); its base_url must be the "
                "address it serves from", upstream_kind="bad_response",
            )
        body: Any = None
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = None
        if status < 400:
            if body is None and raw:
                raise UpstreamFailed(f"{where} returned a body that is not JSON",
                                     upstream_kind="bad_response")
            return body, reply
        error = self.translate_error(status, body, raw)
        error.upstream_kind = "status_4xx" if status < 500 else "status_5xx"
        raise error

    def error_text(self, body: Any, raw: bytes) -> str:
        """The upstream's error text: from its JSON shape, else the start of the raw body."""
        return self.error_message(body) or raw[:200].decode("utf-8", "replace").strip()

    def translate_error(self, status: int, body: Any, raw: bytes) -> GatewayError:
        where = f"upstream {self.name!r}"
        text = self.error_text(body, raw) or f"HTTP {status}"
        if status == 429:
            return QueueFull(f"{where} is overloaded: {text}", retry_after=1, code="upstream_busy")
        if status == 503:
            return Unavailable(f"{where} is unavailable: {text}", retry_after=5)
        if status in (401, 403):
            return UpstreamFailed(f"{where} rejected the gateway's credentials ({status})")
        if 400 <= status < 500 and status != 424:
            return too_long(status, text) or UpstreamRejected(text, status=status)
        return UpstreamFailed(f"{where} failed with HTTP {status}: {text}")


def _validation_item(item: Any) -> str:
    """One FastAPI validation error: ``body.input.0: Input should be a valid string``."""
    if not isinstance(item, dict):
        return str(item)
    where = ".".join(str(part) for part in item.get("loc") or ())
    message = str(item.get("msg") or item)
    return f"{where}: {message}" if where else message


def model_mismatch(backend: Backend, expected: str, got: Any, what: str = "vectors"
                   ) -> UpstreamFailed:
    return UpstreamFailed(
        f"upstream {backend.name!r} answered with model {got!r}, not {expected!r}; "
        f"its {what} were discarded",
        code="model_mismatch",
        upstream_kind="mismatch",
    )

