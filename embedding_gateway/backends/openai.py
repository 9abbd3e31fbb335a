"""vLLM and any OpenAI-compatible embeddings server: ``/v1/embeddings`` and ``/v1/models``.

vLLM answers errors in two shapes, ``{"object":"error","message",…}`` and
``{"error":{"message",…}}``; ``Backend.error_message`` reads both.
"""

from __future__ import annotations

from ..config import ModelConfig
from ..errors import UpstreamFailed
from ..schemas import Embeddings, Inputs
from .base import (
    Backend,
    Probe,
    decode_vectors,
    in_index_order,
    model_mismatch,
    reading,
    served_name,
    token_count,
)


def api_root(base_url: str) -> str:
    """``http://h:8000`` and ``http://h:8000/v1`` both name the same API."""
    return base_url if base_url.endswith("/v1") else f"{base_url}/v1"


class OpenAIBackend(Backend):
    kind = "openai"
    accepts_tokens = True
    default_batch = 256

    async def embed(
        self, base_url: str, name: str, model: ModelConfig, inputs: Inputs
    ) -> Embeddings:
        asked = served_name(name, model)  # vLLM accepts only its --served-model-name
        body = await self.request_json(
            "POST",
            f"{api_root(base_url)}/embeddings",
            {"model": asked, "input": inputs, "encoding_format": "base64"},
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

    async def probe(self, base_url: str, timeout: float) -> Probe:
        body = await self.request_json("GET", f"{api_root(base_url)}/models", timeout=timeout)
        with reading(f"upstream {self.name!r} /v1/models"):
            ids = {str(m["id"]) for m in body["data"]}
            by_root: dict[str, set[str]] = {}
            for card in body["data"]:  # vLLM: one card per served name, ``root`` the weights
                if isinstance(card, dict) and card.get("root"):
                    by_root.setdefault(str(card["root"]), set()).add(str(card["id"]))
        groups = [frozenset(names) for names in by_root.values()]
        return self.check_served(ids, ", ".join(sorted(ids)) or "no models", groups)
