"""vLLM: the OpenAI adapter, and ``/health`` as well as ``/v1/models`` in its check.

With ``VLLM_KEEP_ALIVE_ON_ENGINE_DEATH=1`` an API server whose engine died stays up: it still
lists its models, but ``/health`` answers 503 and every request fails. Only ``/health`` tells.
"""

from __future__ import annotations

from .base import Probe
from .openai import OpenAIBackend


class VLLMBackend(OpenAIBackend):
    kind = "vllm"

    async def probe(self, base_url: str, timeout: float) -> Probe:
        server = base_url.removesuffix("/v1")  # /health is beside /v1, not under it
        await self.request_json("GET", f"{server}/health", timeout=timeout)
        return await super().probe(base_url, timeout)
