"""Hugging Face text-embeddings-inference: ``/v1/embeddings`` with base64, ``/info``, ``/health``.

TEI's ``/v1/embeddings`` speaks the OpenAI shape (``model`` in the request is ignored, the
response names the served model), so embedding is the OpenAI adapter's; what differs is how
TEI says what it serves. It serves one model per process: ``/info`` tells which (``model_id``,
or the ``--served-model-name``) and its client batch limit. Errors on ``/v1/embeddings`` are
flat ``{"message","code","type"}``, on native routes ``{"error","error_type"}``.
"""

from __future__ import annotations

from .base import Probe, reading
from .openai import OpenAIBackend

TEI_LIMITS = ("max_client_batch_size", "max_input_length", "max_batch_tokens",
              "max_batch_requests", "max_concurrent_requests", "auto_truncate")


class TEIBackend(OpenAIBackend):
    kind = "tei"
    default_batch = 32  # TEI's default --max-client-batch-size, until /info says otherwise
    default_request_bytes = 2_000_000  # TEI's default --payload-limit (a 413 above it)

    async def probe(self, base_url: str, timeout: float) -> Probe:
        await self.request_json("GET", f"{base_url}/health", timeout=timeout)
        info = await self.request_json("GET", f"{base_url}/info", timeout=timeout)
        with reading(f"upstream {self.name!r} /info"):
            serving = {str(info["model_id"])}
            if info.get("served_model_name"):
                serving.add(str(info["served_model_name"]))
            limit = info.get("max_client_batch_size")
            self.limits = {key: info.get(key) for key in TEI_LIMITS}
        if isinstance(limit, int) and limit > 0:
            self.upstream_batch_limit = limit
        permits = info.get("max_concurrent_requests")  # one permit per input in flight
        if isinstance(permits, int) and permits > 0:
            self.inflight_input_ceiling = permits
        # /v1/embeddings answers with served_model_name: one model under either name
        return self.check_served(serving, str(info.get("model_id")), [frozenset(serving)])
