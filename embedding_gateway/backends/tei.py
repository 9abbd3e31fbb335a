"""Hugging Face text-embeddings-inference: ``/v1/embeddings`` with base64, ``/info``, ``/health``;
rerankers at ``/rerank``.

TEI's ``/v1/embeddings`` speaks the OpenAI shape (``model`` in the request is ignored, the
response names the served model), so embedding is the OpenAI adapter's; what differs is how
TEI says what it serves. It serves one model per process: ``/info`` tells which (``model_id``,
or the ``--served-model-name``), what it does (``model_type``: ``embedding``, ``reranker`` or
``classifier``) and its client batch limit. Errors on ``/v1/embeddings`` are flat
``{"message","code","type"}``, on native routes ``{"error","error_type"}``.

``/v1/embeddings`` truncates as the server's ``--auto-truncate`` says and takes no prompt name;
a call that needs otherwise goes to the native ``/embed`` (``truncate``, ``prompt_name``),
which answers float lists, counts tokens in its ``x-compute-tokens`` header and names no
model: its answers are verified by ``/info`` afterwards, as ``/rerank``'s are.

``/rerank`` (``router/src/http/server.rs``) takes ``{"query", "texts", "raw_scores",
"return_text", "truncate"}`` and answers ``[{"index", "score", "text"?}]`` sorted by score,
naming no model: the adapter reads ``/info`` after each answer, and its scores are used only
when that names the model asked for (a process serves one model for life, so an answer that
came before ``/info`` named the model came from it). ``raw_scores: false`` asks for the
sigmoid, as vLLM and Infinity give by default. ``truncate`` is left to TEI's
``--auto-truncate``, as for embeddings.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig, Task
from ..errors import GatewayError, TaskMismatch, UpstreamFailed
from ..prompts import NO_OPTIONS, CallOptions
from ..rerank_schemas import Scores
from ..schemas import Embeddings, Inputs
from .base import (
    Probe,
    ServedIdentity,
    decode_vectors,
    model_mismatch,
    reading,
    scores_by_index,
    served_name,
)
from .openai import OpenAIBackend

TEI_LIMITS = ("max_client_batch_size", "max_input_length", "max_batch_tokens",
              "max_batch_requests", "max_concurrent_requests", "auto_truncate")


class TEIBackend(OpenAIBackend):
    kind = "tei"
    default_batch = 32  # TEI's default --max-client-batch-size, until /info says otherwise
    default_request_bytes = 2_000_000  # TEI's default --payload-limit (a 413 above it)
    can_truncate = True
    takes_prompt_name = True

    def input_limit(self, name: str, model: ModelConfig) -> int | None:
        learnt = self.limits.get("max_input_length")
        return model.max_input_tokens or (learnt if type(learnt) is int else None)

    async def embed(
        self, base_url: str, name: str, model: ModelConfig, inputs: Inputs, *,
        options: CallOptions = NO_OPTIONS, truncate: bool = False,
    ) -> Embeddings:
        if options.prompt_name is None and self.limits.get("auto_truncate") is truncate:
            return await super().embed(base_url, name, model, inputs, options=options,
                                       truncate=truncate)
        payload = {"inputs": inputs, "truncate": truncate, "normalize": True}
        if options.prompt_name is not None:
            payload["prompt_name"] = options.prompt_name
        body, reply = await self.request_reply("POST", f"{base_url}/embed", payload)
        where = f"upstream {self.name!r} /embed"
        if not isinstance(body, list):
            raise UpstreamFailed(f"{where} returned no list of vectors",
                                 upstream_kind="bad_response")
        vectors = decode_vectors(body, len(inputs), where)
        await self._still_serving(base_url, name, model, "vectors")
        return Embeddings(vectors, reply.compute_tokens or 0)

    async def _still_serving(self, base_url: str, name: str, model: ModelConfig,
                             what: str) -> None:
        """An answer that names no model came from ``model`` if ``/info``, read after it,
        still names it (a TEI process serves one model for life)."""
        serving = self._read_info(await self.request_json("GET", f"{base_url}/info"))
        asked = served_name(name, model)
        if not serving & self.answers_as(asked, model, name):
            raise model_mismatch(self, asked, ", ".join(sorted(serving)), what)

    async def probe(self, base_url: str, timeout: float) -> Probe:
        await self.request_json("GET", f"{base_url}/health", timeout=timeout)
        info = await self.request_json("GET", f"{base_url}/info", timeout=timeout)
        serving = self._read_info(info)
        with reading(f"upstream {self.name!r} /info"):
            sha = info.get("model_sha")
            identity = ServedIdentity(str(info["model_id"]), str(sha) if sha else None)
            limit = info.get("max_client_batch_size")
            self.limits = {key: info.get(key) for key in TEI_LIMITS}
        if isinstance(limit, int) and limit > 0:
            self.upstream_batch_limit = limit
        permits = info.get("max_concurrent_requests")  # one permit per input in flight
        if isinstance(permits, int) and permits > 0:
            self.inflight_input_ceiling = permits
        # /v1/embeddings answers with served_model_name: one model under either name
        probe = self.check_served(serving, str(info.get("model_id")), [frozenset(serving)])
        probe.identities = dict.fromkeys(serving, identity)
        return probe

    def _read_info(self, info: Any) -> set[str]:
        """The names ``/info`` reports the model by; what it does is noted under each."""
        with reading(f"upstream {self.name!r} /info"):
            serving = {str(info["model_id"])}
            if info.get("served_model_name"):
                serving.add(str(info["served_model_name"]))
            model_type = info.get("model_type")
        task: Task | None = None
        if isinstance(model_type, dict):
            task = "rerank" if "reranker" in model_type else (
                "embed" if "embedding" in model_type else None)
        for name in serving:
            self.tasks[name] = task
        return serving

    async def rerank(self, base_url: str, name: str, model: ModelConfig, query: str,
                     documents: list[str]) -> Scores:
        body, reply = await self.request_reply(
            "POST", f"{base_url}/rerank",
            {"query": query, "texts": documents, "raw_scores": False, "return_text": False})
        where = f"upstream {self.name!r}"
        with reading(where):
            if not isinstance(body, list):
                raise TypeError(f"expected a list of ranks, got {type(body).__name__}")
            scores = scores_by_index(body, len(documents), where)
        await self._still_serving(base_url, name, model, "scores")
        return Scores(scores, reply.compute_tokens or 0)  # TEI counts them in a header

    def translate_error(self, status: int, body: Any, raw: bytes) -> GatewayError:
        text = self.error_text(body, raw)
        if status == 424 and ("not a re-ranker" in text or "not an embedding" in text):
            return TaskMismatch(f"upstream {self.name!r}: {text}", param="model")
        return super().translate_error(status, body, raw)
