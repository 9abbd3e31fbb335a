"""vLLM and any OpenAI-compatible embeddings server: ``/v1/embeddings`` and ``/v1/models``;
rerankers at ``/v1/rerank`` in Cohere's and Jina's shape (vLLM, Infinity, Jina-compatible
servers), asked without ``top_n`` and ``return_documents`` so that every score comes back.

vLLM answers errors in two shapes, ``{"object":"error","message",…}`` and
``{"error":{"message",…}}``; ``Backend.error_message`` reads both. Infinity's ``/models``
cards list ``capabilities`` (``embed``, ``rerank``): the task is learnt from them.
"""

from __future__ import annotations

from typing import Any

import structlog

from ..config import ModelConfig, Task
from ..errors import UpstreamFailed, UpstreamRejected
from ..prompts import NO_OPTIONS, CallOptions
from ..rerank_schemas import Scores
from ..schemas import Embeddings, Inputs
from .base import (
    Backend,
    Probe,
    ServedIdentity,
    decode_vectors,
    in_index_order,
    model_mismatch,
    reading,
    scores_by_index,
    served_name,
    token_count,
)
from .ollama import is_ollama_listing, match_key

log = structlog.get_logger("embedding_gateway.backends.openai")


class OpenAIBackend(Backend):
    kind = "openai"
    learns_tasks = True
    default_batch = 256
    can_truncate = False  # OpenAI's API has no such field; vLLM's adapter adds its own

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._found_prefix: dict[str, str] = {}  # base URL -> prefix found by probe()

    def api_root(self, base_url: str) -> str:
        """``http://h:8000`` and ``http://h:8000/v1`` both name the same API; a server
        without ``/v1`` (Infinity's default) is found at the first check, or configured."""
        if base_url.endswith("/v1"):
            return base_url
        prefix = self.config.api_prefix
        if prefix is None:
            prefix = self._found_prefix.get(base_url, "/v1")
        return base_url + prefix

    async def _models(self, base_url: str, timeout: float) -> Any:
        """``/models`` under the API's prefix; with none configured, a 404 under ``/v1`` is
        tried once more without it (and remembered when it answers)."""
        try:
            return await self.request_json("GET", f"{self.api_root(base_url)}/models",
                                           timeout=timeout)
        except UpstreamRejected as exc:
            guessing = self.config.api_prefix is None and not base_url.endswith("/v1")
            if exc.status != 404 or not guessing or self.api_root(base_url) == base_url:
                raise
        body = await self.request_json("GET", f"{base_url}/models", timeout=timeout)
        self._found_prefix[base_url] = ""
        log.info("api_prefix_found", backend=self.name, base_url=base_url, prefix="")
        return body

    def call_fields(self, options: CallOptions, truncate: bool) -> dict[str, Any]:
        """Fields beyond OpenAI's that a call carries: ``input_type`` for servers that
        apply their own prompts."""
        return {} if options.input_type is None else {"input_type": options.input_type}

    async def embed(
        self, base_url: str, name: str, model: ModelConfig, inputs: Inputs, *,
        options: CallOptions = NO_OPTIONS, truncate: bool = False,
    ) -> Embeddings:
        asked = served_name(name, model)  # vLLM accepts only its --served-model-name
        body = await self.request_json(
            "POST",
            f"{self.api_root(base_url)}/embeddings",
            {"model": asked, "input": inputs, "encoding_format": "base64",
             **self.call_fields(options, truncate)},
        )
        where = f"upstream {self.name!r}"
        with reading(where):
            if not isinstance(body.get("data"), list):
                raise UpstreamFailed(f"{where} returned no 'data' list")
            got = body.get("model")
            if got not in self.answers_as(asked, model, name):
                raise model_mismatch(self, asked, got)
            items = in_index_order(body["data"], where)
            vectors = [item["embedding"] for item in items]
            tokens = token_count((body.get("usage") or {}).get("prompt_tokens"), where)
        return Embeddings(decode_vectors(vectors, len(inputs), where), tokens)

    async def rerank(self, base_url: str, name: str, model: ModelConfig, query: str,
                     documents: list[str]) -> Scores:
        body = await self.request_json(
            "POST", f"{self.api_root(base_url)}/rerank",
            {"model": served_name(name, model), "query": query, "documents": documents,
             "return_documents": False})
        return self.read_ranking(body, name, model, len(documents))

    def read_ranking(self, body: Any, name: str, model: ModelConfig, expected: int) -> Scores:
        """A ranking (``results``) or a score list (vLLM's ``/score``: ``data``), verified to
        name the model asked for."""
        asked = served_name(name, model)
        where = f"upstream {self.name!r}"
        with reading(where):
            items = body["results"] if "results" in body else body["data"]
            if not isinstance(items, list):
                raise UpstreamFailed(f"{where} returned no 'results' list")
            got = body.get("model")
            if got not in self.answers_as(asked, model, name):
                raise model_mismatch(self, asked, got, "scores")
            usage = body.get("usage") or {}
            tokens = token_count(usage.get("prompt_tokens", usage.get("total_tokens")), where)
            return Scores(scores_by_index(items, expected, where), tokens)
    def read_cards(self, cards: list[Any]) -> None:
        """What else a ``/models`` answer says of its models (vLLM: ``max_model_len``)."""

    async def probe(self, base_url: str, timeout: float) -> Probe:
        body = await self._models(base_url, timeout)
        with reading(f"upstream {self.name!r} /v1/models"):
            ids = {str(m["id"]) for m in body["data"]}
            for card in body["data"]:  # Ollama's ids carry their tag: bge-m3:latest
                for name in {str(card["id"]), str(card["id"]).removesuffix(":latest")}:
                    self.tasks[name] = _task(card)
            self.read_cards(body["data"])
            by_root: dict[str, set[str]] = {}
            identities: dict[str, ServedIdentity] = {}
            for card in body["data"]:  # vLLM: one card per served name, ``root`` the weights
                root = card.get("root") if isinstance(card, dict) else None
                if root:
                    by_root.setdefault(str(root), set()).add(str(card["id"]))
                identities[str(card["id"])] = ServedIdentity(str(root or card["id"]),
                                                             str(root) if root else None)
            if is_ollama_listing(body["data"]):
                return self._check_ollama_served(ids)
        groups = [frozenset(names) for names in by_root.values()]
        probe = self.check_served(ids, ", ".join(sorted(ids)) or "no models", groups)
        probe.identities = identities
        return probe

    def _check_ollama_served(self, ids: set[str]) -> Probe:
        """Ollama names a model as it matches one: ``bge-m3`` is ``bge-m3:latest``, in any
        case. Its answer is named by what was asked, so the name sent is the configured one."""
        listed = {match_key(i): i for i in ids}
        serving: set[str] = set()
        groups = []
        identities = {}
        for name, model in self.config.models.items():
            expected = served_name(name, model)
            found = listed.get(match_key(expected))
            if found is not None:
                serving.add(expected)
                groups.append(frozenset({expected, found}))
                identities[expected] = ServedIdentity(found, None)  # no digest on /v1
        probe = self.check_served(serving, ", ".join(sorted(ids)), groups)
        probe.identities = identities
        return probe


def _task(card: Any) -> Task | None:
    """Infinity's ``capabilities`` say what a model does; other servers say nothing."""
    capabilities = card.get("capabilities") if isinstance(card, dict) else None
    if not isinstance(capabilities, list):
        return None
    return "rerank" if "rerank" in capabilities else "embed" if "embed" in capabilities else None
