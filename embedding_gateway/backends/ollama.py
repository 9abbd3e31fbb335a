"""Ollama: ``/api/embed`` (normalised vectors, ``truncate``, ``keep_alive``) and ``/api/tags``.

Ollama loads models itself; ``keep_alive`` says how long, and an empty ``input`` only loads
(a preload). Model names carry tags: ``bge-m3`` is ``bge-m3:latest``. Errors are
``{"error": "..."}``. Token ids are not accepted.
"""

from __future__ import annotations

from typing import Any

import structlog

from ..config import ModelConfig
from ..errors import GatewayError, UpstreamFailed
from ..prompts import NO_OPTIONS, CallOptions
from ..schemas import Embeddings, Inputs
from .base import (
    Backend,
    Probe,
    ServedIdentity,
    decode_vectors,
    model_mismatch,
    reading,
    served_name,
    token_count,
)

log = structlog.get_logger("embedding_gateway.backends.ollama")


def with_tag(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def match_key(name: str) -> str:
    """How Ollama matches a model name: with its tag (``:latest`` by default), ignoring case."""
    return with_tag(name).lower()


def namespace(model_id: str) -> str:
    """The namespace of an Ollama name (``[host/][namespace/]model[:tag]``), ``library`` when
    it has none, as ``model.ParseName`` fills it."""
    path = model_id.split("/")
    return "library" if len(path) == 1 else path[0] if len(path) == 2 else path[1]


def is_ollama_listing(cards: Any) -> bool:
    """Ollama's ``/v1/models`` (``openai.ToListCompletion``): every id carries its tag and
    ``owned_by`` is that name's namespace (``library`` for ``bge-m3:latest``). vLLM's and
    Infinity's cards are owned by ``vllm`` and ``infinity``."""
    return bool(cards) and all(
        isinstance(card, dict) and ":" in str(card.get("id", "")).rsplit("/", 1)[-1]
        and card.get("owned_by") == namespace(str(card["id"]))
        for card in cards
    )


# Ollama answers 400 for every failure of /api/embed, its runner's crashes included
# (server/routes.go): only these messages are about the request itself
CLIENT_FAULTS = ("input length exceeds", "exceeds maximum context length", "invalid input",
                 "dimensions", "is required", "request body", "json", "unsupported type",
                 "cannot be empty")


class OllamaBackend(Backend):
    kind = "ollama"
    default_batch = 64

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._is_embedding: dict[str, bool] = {}  # tag -> has the "embedding" capability

    def translate_error(self, status: int, body: Any, raw: bytes) -> GatewayError:
        message = self.error_text(body, raw)
        if status == 400 and not any(fault in message.lower() for fault in CLIENT_FAULTS):
            return UpstreamFailed(f"upstream {self.name!r} failed to embed: {message}")
        return super().translate_error(status, body, raw)

    def canonical(self, name: str) -> str:
        return with_tag(name)

    def identity_key(self, served: str) -> str:
        return match_key(served)

    def _keep_alive(self, model: ModelConfig) -> dict[str, Any]:
        value = model.keep_alive if model.keep_alive is not None else self.config.keep_alive
        return {} if value is None else {"keep_alive": value}

    async def embed(
        self, base_url: str, name: str, model: ModelConfig, inputs: Inputs, *,
        options: CallOptions = NO_OPTIONS, truncate: bool = False,
    ) -> Embeddings:
        asked = served_name(name, model)
        body = await self.request_json(
            "POST",
            f"{base_url}/api/embed",
            {"model": asked, "input": inputs, "truncate": truncate, **self._keep_alive(model)},
        )
        where = f"upstream {self.name!r}"
        with reading(where):
            if not isinstance(body.get("embeddings"), list):
                raise UpstreamFailed(f"{where} returned no 'embeddings' list")
            got = body.get("model")
            if got is not None and match_key(str(got)) != match_key(asked):
                raise model_mismatch(self, asked, got)
            tokens = token_count(body.get("prompt_eval_count"), where)
        return Embeddings(decode_vectors(body["embeddings"], len(inputs), where), tokens)

    async def preload(self, base_url: str, name: str, model: ModelConfig) -> None:
        await self.request_json(
            "POST",
            f"{base_url}/api/embed",
            {"model": served_name(name, model), "input": [], **self._keep_alive(model)},
        )

    async def probe(self, base_url: str, timeout: float) -> Probe:
        body = await self.request_json("GET", f"{base_url}/api/tags", timeout=timeout)
        with reading(f"upstream {self.name!r} /api/tags"):
            listed = [(with_tag(str(m.get("name") or m["model"])), m.get("digest"))
                      for m in body["models"]]
        names = {name for name, _ in listed}
        tags = {match_key(name) for name in names}
        # the digest names the weights: a pull that updates a tag changes it
        probe = Probe(reachable=True, identities={
            match_key(name): ServedIdentity(name, str(digest) if digest else None)
            for name, digest in listed})
        for name, model in self.config.models.items():
            expected = served_name(name, model)
            if match_key(expected) in tags:
                probe.served.add(expected)
            else:
                probe.absent[name] = f"model {expected!r} is not pulled on this Ollama"
        if self.config.discover:
            configured = {match_key(served_name(n, m)) for n, m in self.config.models.items()}
            for tag in sorted(n for n in names if match_key(n) not in configured):
                if tag not in self._is_embedding:
                    try:
                        self._is_embedding[tag] = await self._has_embedding(
                            base_url, tag, timeout
                        )
                    except GatewayError as exc:  # one broken tag: skip it, ask again later
                        log.warning("discovery_skipped", backend=self.name, model=tag,
                                    reason=exc.message)
                        continue
                if self._is_embedding[tag]:
                    probe.discovered.add(tag)
        return probe

    async def _has_embedding(self, base_url: str, tag: str, timeout: float) -> bool:
        """``/api/show`` lists ``capabilities``; embedding models have ``"embedding"``."""
        body = await self.request_json(
            "POST", f"{base_url}/api/show", {"model": tag}, timeout=timeout
        )
        with reading(f"upstream {self.name!r} /api/show"):
            return "embedding" in (body.get("capabilities") or [])
