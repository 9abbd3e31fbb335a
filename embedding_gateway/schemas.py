"""``/v1/embeddings`` request parsing and response building, OpenAI's contract exactly.

Vectors arrive here as one float32 matrix; ``dimensions`` is a slice plus a row-wise L2
renormalisation, and the response is encoded once: base64 straight from each row's bytes,
float JSON by orjson from the array itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson
from pybase64 import b64encode  # SIMD base64: the standard library's results, faster

from .encodings import COMPACT_FORMATS, CompactFormat, quantize
from .errors import InvalidRequest, PayloadTooLarge
from .prompts import parse_input_type, parse_prompt_name
from .truncation import parse_truncate

EncodingFormat = Literal["float", "base64"] | CompactFormat
ENCODING_FORMATS = ("float", "base64", *COMPACT_FORMATS)
Inputs = list[str] | list[np.ndarray]  # texts, or token ids as uint32 arrays


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    inputs: Inputs
    tokens: bool  # True when inputs are token id lists
    encoding_format: EncodingFormat
    dimensions: int | None
    input_type: str | None = None  # one of config.INPUT_TYPES (prompts.py)
    truncate: bool | None = None  # None: the model's ``truncation`` applies (truncation.py)
    prompt_name: str | None = None  # TEI's own field, for TEI models only


@dataclass
class Embeddings:
    """Vectors for a list of inputs, in input order, and the tokens the upstream counted."""

    vectors: np.ndarray  # shape (n, dims), float32
    prompt_tokens: int
    truncated: list[int] | None = None  # inputs the upstream cut; None: truncation was off
    cached: int = 0  # how many of the inputs were answered from the cache


def _is_token_list(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    )


def as_ids(value: list[int], index: int) -> np.ndarray:
    """A JSON array of token ids as a compact array: 4 bytes an id, where the list held a
    pointer and a Python int (about 40 bytes) each."""
    try:
        ids = np.array(value, dtype=np.int64)
    except OverflowError:
        ids = None
    if ids is None or int(ids.min()) < 0 or int(ids.max()) > 0xFFFFFFFF:
        raise InvalidRequest(f"'input[{index}]' has a token id that is negative or past 32 "
                             "bits", param="input")
    return ids.astype(np.uint32)


def _parse_input(value: Any, max_inputs: int, max_token_ids: int) -> tuple[Inputs, bool]:
    if isinstance(value, str):
        inputs: Inputs = [value]
        tokens = False
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        inputs, tokens = value, False
    elif isinstance(value, list) and value and _is_token_list(value):
        inputs, tokens = [value], True
    elif isinstance(value, list) and value and all(_is_token_list(v) for v in value):
        inputs, tokens = value, True
    elif isinstance(value, list) and not value:
        raise InvalidRequest("'input' must not be empty", param="input")
    else:
        raise InvalidRequest(
            "'input' must be a string, an array of strings, an array of token ids "
            "or an array of arrays of token ids",
            param="input",
        )
    if len(inputs) > max_inputs:
        raise PayloadTooLarge(
            f"'input' has {len(inputs)} items; this gateway accepts at most {max_inputs} "
            "per request",
            param="input",
        )
    for i, item in enumerate(inputs):
        if len(item) == 0:
            what = "string" if not tokens else "token array"
            raise InvalidRequest(f"'input[{i}]' is an empty {what}", param="input")
    if tokens:
        count = sum(len(item) for item in inputs)
        if count > max_token_ids:
            raise PayloadTooLarge(
                f"'input' has {count} token ids; this gateway accepts at most "
                f"{max_token_ids} per request",
                param="input",
            )
        for i, item in enumerate(inputs):  # in place: each list is freed once converted
            inputs[i] = as_ids(item, i)  # type: ignore[arg-type]
    return inputs, tokens


def request_object(body: bytes) -> tuple[dict[str, Any], str]:
    """A request body's JSON object and its ``model``: what every endpoint's body starts with."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the request body must be a JSON object")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a non-empty string", param="model")
    return data, model


def parse_embedding_request(
    body: bytes, *, max_inputs: int, max_token_ids: int
) -> EmbeddingRequest:
    data, model = request_object(body)
    if "input" not in data:
        raise InvalidRequest("'input' is required", param="input")
    inputs, tokens = _parse_input(data.pop("input"), max_inputs, max_token_ids)

    encoding_format = data.get("encoding_format")
    if encoding_format is None:
        encoding_format = "float"
    if encoding_format not in ENCODING_FORMATS:
        raise InvalidRequest(
            f"'encoding_format' must be one of {', '.join(ENCODING_FORMATS)}, "
            f"got {encoding_format!r}",
            param="encoding_format",
        )
    dimensions = data.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
    ):
        raise InvalidRequest("'dimensions' must be a positive integer", param="dimensions")
    user = data.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("'user' must be a string", param="user")
    return EmbeddingRequest(model, inputs, tokens, encoding_format, dimensions,
                            parse_input_type(data.get("input_type")),
                            parse_truncate(data.get("truncate")),
                            parse_prompt_name(data.get("prompt_name")))


def cut_dimensions(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """Matryoshka: keep the first ``dimensions`` values of each row, then L2-renormalise."""
    cut = vectors[:, :dimensions]
    norms = np.linalg.norm(cut, axis=1, keepdims=True)
    np.maximum(norms, np.float32(1e-12), out=norms)
    return np.ascontiguousarray(cut / norms, dtype=np.float32)


def _rows(vectors: np.ndarray, encoding_format: EncodingFormat) -> Iterator[bytes]:
    if encoding_format == "base64":
        little = np.ascontiguousarray(vectors, dtype="<f4")
        for i, row in enumerate(little):
            yield (b'{"object":"embedding","index":%d,"embedding":"' % i
                   + b64encode(row) + b'"}')
    else:
        if encoding_format != "float":
            vectors = quantize(vectors, encoding_format)
        for i, row in enumerate(vectors):
            yield (b'{"object":"embedding","index":%d,"embedding":' % i
                   + orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"}")


def _tail(result: Embeddings, model: str) -> bytes:
    tokens = result.prompt_tokens
    usage = orjson.dumps({"prompt_tokens": tokens, "total_tokens": tokens})
    tail = b'],"model":' + orjson.dumps(model) + b',"usage":' + usage
    if result.truncated is not None:
        tail += b',"truncated_inputs":' + orjson.dumps(result.truncated)
    return tail + b"}"


_HEAD = b'{"object":"list","data":['


def response_body(result: Embeddings, *, model: str, encoding_format: EncodingFormat) -> bytes:
    """The whole response body, joined once."""
    rows = b",".join(_rows(result.vectors, encoding_format))
    return b"".join((_HEAD, rows, _tail(result, model)))


def response_chunks(
    result: Embeddings, *, model: str, encoding_format: EncodingFormat, rows_per_chunk: int = 32
) -> Iterator[bytes]:
    """The response body in pieces of ``rows_per_chunk`` vectors, for streaming out."""
    yield _HEAD
    batch: list[bytes] = []
    for n, row in enumerate(_rows(result.vectors, encoding_format)):
        batch.append(row if n == 0 else b"," + row)
        if len(batch) == rows_per_chunk:
            yield b"".join(batch)
            batch = []
    yield b"".join(batch) + _tail(result, model)
