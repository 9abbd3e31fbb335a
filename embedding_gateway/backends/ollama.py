"""Ollama: ``/api/embed`` (normalised vectors, ``truncate``, ``keep_alive``) and ``/api/tags``.

Ollama loads models itself; ``keep_alive`` says how long, and an empty ``input`` only loads
(a preload). Model names carry tags: ``bge-m3`` is ``bge-m3:latest``. Errors are
``{"error": "..."}``. Token ids are not accepted.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from ..errors import UpstreamFailed
from ..schemas import Embeddings, Inputs
from .base import Backend, Probe, decode_vector, model_mismatch, served_name, stack, upstream_name


def with_tag(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


class OllamaBackend(Backend):
    kind = "ollama"
    accepts_tokens = False
    default_batch = 64

    def _keep_alive(self, model: ModelConfig) -> dict[str, Any]:
        value = model.keep_alive if model.keep_alive is not None else self.config.keep_alive
        return {} if value is None else {"keep_alive": value}

    async def embed(
        self, base_url: str, name: str, model: ModelConfig, inputs: Inputs
    ) -> Embeddings:
        asked = upstream_name(name, model)
        body = await self.request_json(
            "POST",
            f"{base_url}/api/embed",
            {"model": asked, "input": inputs, "truncate": True, **self._keep_alive(model)},
        )
        if not isinstance(body, dict) or not isinstance(body.get("embeddings"), list):
            raise UpstreamFailed(f"upstream {self.name!r} returned no 'embeddings' list")
        got = body.get("model")
        if got is not None and with_tag(str(got)) != with_tag(asked):
            raise model_mismatch(self, asked, got)
        vectors = [decode_vector(v) for v in body["embeddings"]]
        return Embeddings(
            stack(vectors, len(inputs), f"upstream {self.name!r}"),
            int(body.get("prompt_eval_count") or 0),
        )

    async def preload(self, base_url: str, name: str, model: ModelConfig) -> None:
        await self.request_json(
            "POST",
            f"{base_url}/api/embed",
            {"model": upstream_name(name, model), "input": [], **self._keep_alive(model)},
        )

    async def probe(self, base_url: str, timeout: float) -> Probe:
        body = await self.request_json("GET", f"{base_url}/api/tags", timeout=timeout)
        tags = {with_tag(str(m.get("name") or m.get("model")))
                for m in (body or {}).get("models", []) if isinstance(m, dict)}
        probe = Probe(reachable=True)
        for name, model in self.config.models.items():
            expected = served_name(name, model)
            if with_tag(expected) in tags:
                probe.served.add(expected)
            else:
                probe.absent[name] = f"model {expected!r} is not pulled on this Ollama"
        return probe
