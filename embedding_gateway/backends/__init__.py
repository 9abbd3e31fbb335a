"""One adapter per upstream protocol."""

from __future__ import annotations

import aiohttp

from ..config import BackendConfig
from .base import Backend
from .ollama import OllamaBackend
from .openai import OpenAIBackend
from .tei import TEIBackend

ADAPTERS: dict[str, type[Backend]] = {
    "ollama": OllamaBackend,
    "tei": TEIBackend,
    "vllm": OpenAIBackend,
    "openai": OpenAIBackend,
}


def create_backend(name: str, config: BackendConfig, session: aiohttp.ClientSession) -> Backend:
    return ADAPTERS[config.kind](name, config, session)
