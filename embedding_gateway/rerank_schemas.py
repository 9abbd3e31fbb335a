"""``/v1/rerank`` request parsing and response building: Cohere's and Jina's shape.

Request::

    {"model": str, "query": str, "documents": [str | {"text": str}, ...],
     "top_n": int >= 1 (optional), "return_documents": bool (default false)}

Response::

    {"object": "rerank", "model": <the name the client sent>,
     "results": [{"index": int, "relevance_score": float, "document"?: {"text": str}}, ...],
     "usage": {"prompt_tokens": int, "total_tokens": int}}

``results`` are sorted by ``relevance_score``, highest first (ties keep the client's order);
``index`` is the document's position in the client's list; ``top_n`` keeps the first n;
``document`` is there only when ``return_documents`` is true. Scores are what the model's
activation gives (a sigmoid of the logit, between 0 and 1) on every backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from .errors import InvalidRequest, PayloadTooLarge
from .schemas import request_object


@dataclass(frozen=True)
class RerankRequest:
    model: str
    query: str
    documents: list[str]
    top_n: int | None
    return_documents: bool


@dataclass
class Scores:
    """One relevance score per document, in the documents' order, and the tokens the
    upstream counted (0 where it reports none)."""

    scores: np.ndarray  # shape (n,), float64
    prompt_tokens: int


def _document_text(value: Any, index: int) -> str:
    if isinstance(value, dict):
        value = value.get("text")
        if not isinstance(value, str):
            raise InvalidRequest(f"'documents[{index}]' is an object without a 'text' string",
                                 param="documents")
    if not isinstance(value, str):
        raise InvalidRequest(f"'documents[{index}]' must be a string or an object with 'text'",
                             param="documents")
    if not value:
        raise InvalidRequest(f"'documents[{index}]' is an empty string", param="documents")
    return value


def parse_rerank_request(body: bytes, *, max_documents: int) -> RerankRequest:
    data, model = request_object(body)
    query = data.get("query")
    if not isinstance(query, str) or not query:
        raise InvalidRequest("'query' is required and must be a non-empty string", param="query")
    raw = data.get("documents")
    if not isinstance(raw, list):
        raise InvalidRequest("'documents' is required and must be an array of strings or of "
                             "objects with 'text'", param="documents")
    if not raw:
        raise InvalidRequest("'documents' must not be empty", param="documents")
    if len(raw) > max_documents:
        raise PayloadTooLarge(
            f"'documents' has {len(raw)} items; this gateway accepts at most {max_documents} "
            "per request", param="documents")
    documents = [_document_text(value, index) for index, value in enumerate(raw)]
    top_n = data.get("top_n")
    if top_n is not None and (type(top_n) is not int or top_n < 1):
        raise InvalidRequest("'top_n' must be a positive integer", param="top_n")
    return_documents = data.get("return_documents", False)
    if return_documents is None:
        return_documents = False
    if not isinstance(return_documents, bool):
        raise InvalidRequest("'return_documents' must be a boolean", param="return_documents")
    return RerankRequest(model, query, documents, top_n, return_documents)


def ranked(scores: np.ndarray, top_n: int | None) -> list[int]:
    """Document indices by score, highest first; equal scores keep their order."""
    order = np.argsort(-scores, kind="stable")
    return [int(i) for i in order[:top_n]]


def rerank_response_body(result: Scores, request: RerankRequest, *, model: str) -> bytes:
    results = []
    for index in ranked(result.scores, request.top_n):
        item: dict[str, Any] = {"index": index, "relevance_score": float(result.scores[index])}
        if request.return_documents:
            item["document"] = {"text": request.documents[index]}
        results.append(item)
    tokens = result.prompt_tokens
    return orjson.dumps({
        "object": "rerank",
        "model": model,
        "results": results,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })
