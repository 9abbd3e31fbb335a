"""The per-input cache in memory: partial hits in client order, one computation per input,
``Cache-Control``, ``cache: false``, the byte bound, and the fingerprint it is keyed by."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import aiohttp
import attrs
import numpy as np
import pytest

from embedding_gateway.backends import create_backend
from embedding_gateway.backends.base import ServedIdentity
from embedding_gateway.cache_keys import fingerprint, namespace
from embedding_gateway.config import parse_config
from embedding_gateway.http_client import HttpClient
from embedding_gateway.schemas import EmbeddingRequest
from tests.cache_support import DIMS, MODEL, expected, gateway_for, metric, sent, tei
from tests.conftest import run_gateway
from tests.fakes import serve_fake
from tests.fakes.ollama import create_ollama_app
from tests.fakes.tei import create_tei_app
from tests.fakes.vectors import cut, fake_vector, truncate_item
from tests.fakes.vllm import create_vllm_app


async def test_partial_hits_in_large_batches_keep_every_index_and_order() -> None:
    async with tei(batch=16) as (upstream, fake), gateway_for(upstream) as gateway:
        first = [f"first text {i}" for i in range(40)]
        answer = await gateway.embed(first)
        assert answer.status == 200 and answer.cached == 0
        rng = random.Random(7)
        pool = first[:30] + [f"new text {i}" for i in range(60)]
        mixed = [rng.choice(pool) for _ in range(300)]  # old and new, many twice or more
        fake.requests.clear()
        answer = await gateway.embed(mixed)
        assert answer.status == 200, answer.body
        for text, vector in zip(mixed, answer.vectors(), strict=True):
            np.testing.assert_allclose(vector, expected(fake, text), atol=1e-6)
        assert answer.cached == sum(text in first for text in mixed)
        new = [text for text in mixed if text not in first]
        assert Counter(sent(fake)) == Counter(set(new))  # each miss computed once
        # dimensions and the encoding apply after the cache: one entry serves every variant
        fake.requests.clear()
        answer = await gateway.embed(mixed, dimensions=8, encoding_format="base64")
        assert answer.status == 200 and answer.cached == len(mixed) and sent(fake) == []
        for text, vector in zip(mixed, answer.vectors(), strict=True):
            np.testing.assert_allclose(vector, cut(expected(fake, text), 8), atol=1e-6)
        assert answer.body["usage"]["prompt_tokens"] == 0  # nothing was computed for it


async def test_hits_and_misses_are_counted_per_model_and_tier() -> None:
    async with tei() as (upstream, _), gateway_for(upstream) as gateway:
        await gateway.embed(["a", "b", "c"])
        await gateway.embed(["a", "b", "d"])
        metrics = await gateway.get("/metrics")
        hits = metric(metrics, "embedding_gateway_cache_hits_total", model=MODEL,
                      tier="memory")
        misses = metric(metrics, "embedding_gateway_cache_misses_total", model=MODEL)
        assert (hits, misses) == (2, 4)
        assert metric(metrics, "embedding_gateway_cache_bytes", model=MODEL,
                      tier="memory") > 4 * DIMS * 4
        health = await gateway.get("/health")
        assert health["cache"]["memory"]["entries"] == 4


async def test_concurrent_identical_inputs_are_computed_once() -> None:
    async with tei() as (upstream, fake), gateway_for(upstream) as gateway:
        fake.delay = 0.3
        shared = ["shared one", "shared two", "shared three"]
        answers = await asyncio.gather(*(gateway.embed([*shared, f"own {i}"]) for i in range(6)))
        for i, answer in enumerate(answers):
            assert answer.status == 200, answer.body
            for text, vector in zip([*shared, f"own {i}"], answer.vectors(), strict=True):
                np.testing.assert_allclose(vector, expected(fake, text), atol=1e-6)
        assert Counter(sent(fake)) == Counter([*shared, *(f"own {i}" for i in range(6))])
        metrics = await gateway.get("/metrics")
        assert metric(metrics, "embedding_gateway_cache_shared_total", model=MODEL) > 0


async def test_a_waiter_computes_itself_when_the_request_it_waited_for_goes_away() -> None:
    async with tei() as (upstream, fake), gateway_for(upstream) as gateway:
        fake.delay = 0.5
        leaving = asyncio.create_task(gateway.embed(["wanted by two"]))
        await asyncio.sleep(0.15)  # its call is in flight
        staying = asyncio.create_task(gateway.embed(["wanted by two"]))
        await asyncio.sleep(0.1)
        leaving.cancel()  # its client hangs up: its call is cancelled
        answer = await staying
        assert answer.status == 200, answer.body
        np.testing.assert_allclose(answer.vectors()[0], expected(fake, "wanted by two"),
                                   atol=1e-6)


async def test_no_cache_recomputes_and_stores_and_no_store_neither_reads_nor_writes() -> None:
    async with tei() as (upstream, fake), gateway_for(upstream) as gateway:
        await gateway.embed(["a", "b"])
        fake.requests.clear()
        answer = await gateway.embed(["a", "b", "c"], headers={"Cache-Control": "no-cache"})
        assert answer.cached == 0 and sorted(sent(fake)) == ["a", "b", "c"]
        fake.requests.clear()
        answer = await gateway.embed(["c"])
        assert answer.cached == 1 and sent(fake) == []  # what no-cache computed was stored
        answer = await gateway.embed(["a", "d"], headers={"Cache-Control": "no-store"})
        assert answer.cached == 0 and sorted(sent(fake)) == ["a", "d"]
        fake.requests.clear()
        answer = await gateway.embed(["d"])
        assert answer.cached == 0 and sent(fake) == ["d"]  # what no-store computed was not
        for text, vector in zip(["d"], answer.vectors(), strict=True):
            np.testing.assert_allclose(vector, expected(fake, text), atol=1e-6)


async def test_a_model_with_cache_false_is_never_stored_or_answered_from_the_cache() -> None:
    async with tei() as (upstream, fake), gateway_for(upstream, model={"cache": False}) as gw:
        for _ in range(2):
            answer = await gw.embed(["private"])
            assert answer.status == 200 and answer.cached == 0
        assert sent(fake) == ["private", "private"]
        card = await gw.model_card()
        assert card["cache"]["enabled"] is False
        assert "cache: false" in card["cache"]["reason"]
        assert (await gw.get("/health"))["cache"]["memory"]["entries"] == 0


async def test_eviction_keeps_the_memory_tier_within_its_byte_bound() -> None:
    bound = 4000  # about ten entries of 32 floats, their text and bookkeeping
    async with tei() as (upstream, fake), \
            gateway_for(upstream, cache={"memory_bytes": bound}) as gateway:
        texts = [f"text {i:02d}" for i in range(30)]
        for text in texts:
            assert (await gateway.embed([text])).status == 200
        memory = (await gateway.get("/health"))["cache"]["memory"]
        assert 0 < memory["bytes"] <= bound and memory["max_bytes"] == bound
        kept = memory["entries"]
        assert 5 <= kept < 30
        metrics = await gateway.get("/metrics")
        assert metric(metrics, "embedding_gateway_cache_evictions_total", model=MODEL) == \
            30 - kept
        fake.requests.clear()
        recent = await gateway.embed(texts[-kept:])
        assert recent.cached == kept and sent(fake) == []  # the most recent stayed
        oldest = await gateway.embed(texts[:3])
        assert oldest.cached == 0 and sent(fake) == texts[:3]  # the oldest went


async def test_models_say_their_revision_and_an_unversioned_upstream_can_be_left_out() -> None:
    async with tei(sha="0f1e2d") as (upstream, _), gateway_for(upstream) as gateway:
        await gateway.embed("x")
        card = await gateway.model_card()
        assert card["revision"] == "0f1e2d" and card["cache"]["enabled"] is True
    async with tei(sha=None) as (upstream, fake), \
            gateway_for(upstream, cache={"unversioned": False}) as gateway:
        for _ in range(2):
            assert (await gateway.embed("x")).cached == 0
        assert sent(fake) == ["x", "x"]
        card = await gateway.model_card()
        assert card["revision"] is None and card["cache"]["enabled"] is False
        assert "no revision" in card["cache"]["reason"]
    async with tei(sha=None) as (upstream, fake), gateway_for(upstream) as gateway:
        await gateway.embed("x")
        assert (await gateway.embed("x")).cached == 1  # unversioned: true, the default
        card = await gateway.model_card()
        assert card["cache"]["enabled"] is True and "no revision" in card["cache"]["reason"]


@pytest.mark.parametrize("kind", ["ollama", "vllm"])
async def test_ollama_digests_and_vllm_roots_are_the_revision(kind: str) -> None:
    app = (create_ollama_app({"bge-m3": 16}) if kind == "ollama"
           else create_vllm_app("/models/bge-m3", dims=16, served_model_name="bge-m3"))
    async with serve_fake(app) as upstream:
        config = {"backends": {kind: {"kind": kind, "base_url": upstream,
                                      "models": {"bge-m3": {}}}}}
        async with run_gateway(config) as url, aiohttp.ClientSession() as session:
            async with session.post(f"{url}/v1/embeddings",
                                    json={"model": "bge-m3", "input": "x"}) as response:
                assert response.status == 200
            async with session.get(f"{url}/v1/models") as response:
                card = (await response.json())["data"][0]
            if kind == "ollama":
                async with session.get(f"{upstream}/api/tags") as response:
                    tags = (await response.json())["models"]
                digest = next(t["digest"] for t in tags if t["name"] == "bge-m3:latest")
                assert card["revision"] == digest
            else:
                assert card["revision"] == "/models/bge-m3"


async def test_the_key_leaves_out_only_what_is_applied_after_the_cache() -> None:
    config = parse_config({"backends": {"t": {"kind": "tei", "base_url": "http://127.0.0.1:1",
                                              "models": {"m": {}}}}}, env={})
    backend = create_backend("t", config.backends["t"], HttpClient())
    options = config.backends["t"].models["m"]
    identity = ServedIdentity("org/m", "sha-1")
    model = fingerprint(backend, "m", identity, options)
    assert model is not None
    base = EmbeddingRequest("m", ["x"], False, "float", None)
    same = [EmbeddingRequest("alias", ["y"], False, "base64", 8)]
    assert all(namespace(model, other) == namespace(model, base) for other in same)
    assert namespace(model, EmbeddingRequest("m", [[1]], True, "float", None)) != \
        namespace(model, base)  # token ids are read otherwise than text
    # options that reach the upstream key by themselves: the request's, and its calls'
    for other in (EmbeddingRequest("m", ["x"], False, "float", None, input_type="query"),
                  EmbeddingRequest("m", ["x"], False, "float", None, truncate=True)):
        assert namespace(model, other) != namespace(model, base)
    assert namespace(model, base, ("prompt_name", "query")) != namespace(model, base)
    for changed in (ServedIdentity("org/m", "sha-2"), ServedIdentity("org/other", "sha-1")):
        assert fingerprint(backend, "m", changed, options) != model
    assert fingerprint(backend, "m", identity, attrs.evolve(options, upstream_model="u")) \
        != model
    unchanged = attrs.evolve(options, aliases=["a"], max_batch=4, dimensions=384,
                             matryoshka=True, preload=True)
    assert fingerprint(backend, "m", identity, unchanged) == model


async def test_an_input_the_upstream_cut_is_never_answered_from_the_cache() -> None:
    """Its vector is of the cut text: each request that sends it learns that it was cut, and
    a request that refuses over-long inputs is refused, whatever was computed before."""
    app = create_tei_app(MODEL, dims=DIMS, max_input_length=8, max_client_batch_size=16)
    long = " ".join(f"word{i}" for i in range(20))
    texts = ["short one", long, "short two"]
    async with serve_fake(app) as upstream, gateway_for(upstream) as gateway:
        for round_ in range(2):
            answer = await gateway.embed(texts, truncate=True)
            assert answer.status == 200, answer.body
            assert answer.body["truncated_inputs"] == [1]
            assert answer.cached == (0 if round_ == 0 else 2)
            np.testing.assert_allclose(answer.vectors()[1], fake_vector(
                MODEL, str(truncate_item(long, 8)), DIMS), atol=1e-6)
        refused = await gateway.embed(texts)  # the model's default: refuse
        assert refused.status == 400, refused.body
        assert (await gateway.embed(["short one"])).cached == 0  # a key of its own
