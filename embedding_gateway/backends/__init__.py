"""One adapter per upstream protocol."""

from __future__ import annotations

from ..config import BackendConfig
from ..http_client import HttpClient
from .base import Backend
from .ollama import OllamaBackend
from .openai import OpenAIBackend
from .tei import TEIBackend
from .vllm import VLLMBackend

ADAPTERS: dict[str, type[Backend]] = {
    "ollama": OllamaBackend,
    "tei": TEIBackend,
    "vllm": VLLMBackend,
    "openai": OpenAIBackend,
}


def create_backend(name: str, config: BackendConfig, client: HttpClient) -> Backend:
    return ADAPTERS[config.kind](name, config, client)
