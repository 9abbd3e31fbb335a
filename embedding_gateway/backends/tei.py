"""Hugging Face text-embeddings-inference: ``/v1/embeddings`` with base64, ``/info``, ``/health``.

TEI serves one model per process. ``/info`` tells which (``model_id``, or the
``--served-model-name``) and the client batch limit; errors on ``/v1/embeddings`` are flat
``{"message","code","type"}`` and on native routes ``{"error","error_type"}``.
"""

from __future__ import annotations

from typing import Any

from ..config import ModelConfig
from ..errors import UpstreamFailed
from ..schemas import Embeddings, Inputs
from .base import Backend, Probe, decode_vectors, model_mismatch, served_name, upstream_name


class TEIBackend(Backend):
    kind = "tei"
    accepts_tokens = True
    default_batch = 32

    async def embed(
        self, base_url: str, name: str, model: ModelConfig, inputs: Inputs
    ) -> Embeddings:
        body = await self.request_json(
            "POST",
            f"{base_url}/v1/embeddings",
            {"model": upstream_name(name, model), "input": inputs, "encoding_format": "base64"},
        )
        if not isinstance(body, dict) or not isinstance(body.get("data"), list):
            raise UpstreamFailed(f"upstream {self.name!r} returned no 'data' list")
        expected = served_name(name, model)
        if body.get("model") not in (expected, upstream_name(name, model)):
            raise model_mismatch(self, expected, body.get("model"))
        items = sorted(body["data"], key=lambda d: d.get("index", 0))
        usage: Any = body.get("usage") or {}
        return Embeddings(
            decode_vectors([i.get("embedding") for i in items], len(inputs),
                           f"upstream {self.name!r}"),
            int(usage.get("prompt_tokens") or 0),
        )

    async def probe(self, base_url: str, timeout: float) -> Probe:
        await self.request_json("GET", f"{base_url}/health", timeout=timeout)
        info = await self.request_json("GET", f"{base_url}/info", timeout=timeout)
        if not isinstance(info, dict):
            raise UpstreamFailed(f"upstream {self.name!r} /info is not a JSON object")
        serving = {str(info.get("model_id"))}
        if info.get("served_model_name"):
            serving.add(str(info["served_model_name"]))
        limit = info.get("max_client_batch_size")
        probe = Probe(reachable=True, batch_limit=limit if isinstance(limit, int) else None)
        for name, model in self.config.models.items():
            expected = served_name(name, model)
            if expected in serving:
                probe.served.add(expected)
            else:
                probe.mismatch[name] = f"upstream serves {info.get('model_id')}, not {expected}"
        return probe
