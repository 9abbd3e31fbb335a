"""vLLM: the OpenAI adapter, and ``/health`` as well as ``/v1/models`` in its check.

With ``VLLM_KEEP_ALIVE_ON_ENGINE_DEATH=1`` an API server whose engine died stays up: it still
lists its models, but ``/health`` answers 503 and every request fails. Only ``/health`` tells.

Rerankers: ``/v1/rerank`` (Jina's shape, ``entrypoints/pooling/score/api_router.py``); a
server that has only ``/v1/score`` (``text_1``, ``text_2`` → ``data: [{index, score}]``, as
vLLM had before ``/rerank`` existed) is asked there, once its ``/v1/rerank`` is a 404 of
FastAPI's own (``{"detail": "Not Found"}``, no such route), not vLLM's "model does not exist".
vLLM registers no task in ``/v1/models``: a reranker's ``task: rerank`` comes from the config.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from ..errors import UpstreamRejected
from ..prompts import CallOptions
from ..rerank_schemas import Scores
from .base import Probe, served_name
from .openai import OpenAIBackend


class VLLMBackend(OpenAIBackend):
    kind = "vllm"
    learns_tasks = False
    can_truncate = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._score_only: set[str] = set()  # base URLs whose server has /score, no /rerank
        self._max_model_len: dict[str, int] = {}  # served name -> its max_model_len

    def call_fields(self, options: CallOptions, truncate: bool) -> dict[str, Any]:
        """``truncate_prompt_tokens: -1`` cuts each input at the model's max_model_len, from
        the right as TEI and Ollama do (vLLM's default is the tokenizer's side; versions
        without ``truncation_side`` ignore it)."""
        fields = super().call_fields(options, truncate)
        if not truncate:
            return fields
        return {**fields, "truncate_prompt_tokens": -1, "truncation_side": "right"}

    def input_limit(self, name: str, model: ModelConfig) -> int | None:
        return model.max_input_tokens or self._max_model_len.get(served_name(name, model))

    async def probe(self, base_url: str, timeout: float) -> Probe:
        server = base_url.removesuffix("/v1")  # /health is beside /v1, not under it
        await self.request_json("GET", f"{server}/health", timeout=timeout)
        return await super().probe(base_url, timeout)

    async def rerank(self, base_url: str, name: str, model: ModelConfig, query: str,
                     documents: list[str]) -> Scores:
        if base_url not in self._score_only:
            try:
                return await super().rerank(base_url, name, model, query, documents)
            except UpstreamRejected as exc:
                if exc.status != 404 or exc.message != "Not Found":
                    raise
            self._score_only.add(base_url)
        body = await self.request_json(
            "POST", f"{self.api_root(base_url)}/score",
            {"model": served_name(name, model), "text_1": query, "text_2": documents})
        return self.read_ranking(body, name, model, len(documents))
    def read_cards(self, cards: list[Any]) -> None:
        self._max_model_len = {str(card["id"]): card["max_model_len"] for card in cards
                               if isinstance(card, dict)
                               and type(card.get("max_model_len")) is int}
