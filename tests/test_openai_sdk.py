"""The official ``openai`` SDK against a running gateway, for every backend kind."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import numpy as np
import openai
import pytest

from tests.conftest import run_gateway
from tests.fakes import serve_fake
from tests.fakes.ollama import create_ollama_app
from tests.fakes.tei import create_tei_app
from tests.fakes.vectors import cut, fake_vector, which_model
from tests.fakes.vllm import create_vllm_app

DIMS = 48
MODELS = {
    "ollama": "nomic-embed-text",
    "tei": "BAAI/bge-base-en-v1.5",
    "vllm": "intfloat/multilingual-e5-large",
    "openai": "text-embedding-3-small",
}
CANDIDATES = list(MODELS.values())


@pytest.fixture
async def client() -> AsyncIterator[openai.AsyncOpenAI]:
    apps = {
        "ollama": create_ollama_app({MODELS["ollama"]: DIMS}),
        "tei": create_tei_app(MODELS["tei"], dims=DIMS),
        "vllm": create_vllm_app(MODELS["vllm"], dims=DIMS),
        "openai": create_vllm_app(MODELS["openai"], dims=DIMS, error_shape="nested",
                                  api_key="upstream-key"),
    }
    async with AsyncExitStack() as exits:
        backends = {}
        for kind, app in apps.items():
            base = await exits.enter_async_context(serve_fake(app))
            backends[kind] = {
                "kind": kind,
                "base_url": base + "/v1" if kind == "openai" else base,
                "models": {MODELS[kind]: {"aliases": [f"{kind}-alias"], "matryoshka": True}},
            }
        backends["openai"]["api_key"] = "upstream-key"
        url = await exits.enter_async_context(run_gateway({"backends": backends}))
        sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        exits.push_async_callback(sdk.close)
        yield sdk


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("encoding", [None, "float"])
async def test_sdk_embeds_through_every_backend_kind(
    client: openai.AsyncOpenAI, kind: str, encoding: str | None
) -> None:
    texts = ["the quick brown fox", "jumps over"]
    extra = {} if encoding is None else {"encoding_format": encoding}
    for model in (MODELS[kind], f"{kind}-alias"):
        result = await client.embeddings.create(model=model, input=texts, **extra)
        assert result.model == model
        assert [d.index for d in result.data] == [0, 1]
        for text, item in zip(texts, result.data, strict=True):
            assert len(item.embedding) == DIMS
            assert which_model(item.embedding, text, CANDIDATES, DIMS) == MODELS[kind]
            np.testing.assert_allclose(
                item.embedding, fake_vector(MODELS[kind], text, DIMS), atol=1e-6
            )
        tokens = 6 if model == MODELS[kind] else 0  # the alias is answered from the cache
        assert result.usage.prompt_tokens == tokens
        assert result.usage.total_tokens == tokens


@pytest.mark.parametrize("kind", list(MODELS))
async def test_sdk_dimensions(client: openai.AsyncOpenAI, kind: str) -> None:
    result = await client.embeddings.create(model=MODELS[kind], input="matryoshka", dimensions=12)
    vector = np.asarray(result.data[0].embedding, dtype=np.float32)
    assert vector.shape == (12,)
    np.testing.assert_allclose(vector, cut(fake_vector(MODELS[kind], "matryoshka", DIMS), 12),
                               atol=1e-6)


async def test_sdk_error_classes(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        await client.embeddings.create(model="no-such-model", input="x")
    assert not_found.value.status_code == 404
    assert "no-such-model" in not_found.value.message
    assert not_found.value.code == "model_not_found"

    with pytest.raises(openai.BadRequestError) as bad:
        await client.embeddings.create(model=MODELS["ollama"], input=[[100256]])  # no such id
    assert bad.value.status_code == 400
    assert bad.value.param == "input"

    with pytest.raises(openai.BadRequestError):
        await client.embeddings.create(model=MODELS["tei"], input=[])
