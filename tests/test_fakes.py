"""The fake upstreams speak each upstream's wire format, errors included."""

from __future__ import annotations

import asyncio
import base64
import signal
import sys
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from tests.fakes import FAKE_STATE, serve_fake
from tests.fakes.ollama import OLLAMA_STATE, create_ollama_app
from tests.fakes.tei import TEI_STATE, create_tei_app
from tests.fakes.vectors import count_tokens, cut, fake_vector, fake_vectors, which_model
from tests.fakes.vllm import create_vllm_app

REPO = Path(__file__).resolve().parent.parent


def decode(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


def test_vectors_identify_their_model_even_after_a_cut() -> None:
    a = fake_vector("model-a", "hello world", 64)
    assert a.dtype == np.float32
    assert np.linalg.norm(a) == pytest.approx(1.0, abs=1e-6)
    assert np.array_equal(a, fake_vector("model-a", "hello world", 64))
    assert np.array_equal(fake_vectors("model-a", ["hello world"], 64)[0], a)
    candidates = ["model-b", "model-a"]
    assert which_model(a, "hello world", candidates, 64) == "model-a"
    assert which_model(cut(a, 16), "hello world", candidates, 64) == "model-a"
    assert which_model(a * 3.0, "hello world", candidates, 64) == "model-a"
    assert which_model(a, "another text", candidates, 64) is None
    assert (
        which_model(fake_vector("model-c", "hello world", 64), "hello world", candidates, 64)
        is None
    )
    ids = [101, 7592, 102]
    assert which_model(fake_vector("model-b", ids, 64), ids, candidates, 64) == "model-b"
    assert (count_tokens("  "), count_tokens("a b  c"), count_tokens(ids)) == (1, 3, 3)


async def test_tei_speaks_tei() -> None:
    app = create_tei_app("BAAI/bge-m3", dims=32, max_client_batch_size=4, max_input_length=8)
    state = app[FAKE_STATE]
    async with aiohttp.ClientSession() as http, serve_fake(app) as url:
        info = await (await http.get(f"{url}/info")).json()
        assert info["model_id"] == "BAAI/bge-m3"
        assert info["max_client_batch_size"] == 4
        assert info["auto_truncate"] is True
        assert info["version"].startswith("1.9.")
        health = await http.get(f"{url}/health")
        assert (health.status, await health.read()) == (200, b"")

        native = await (await http.post(f"{url}/embed", json={"inputs": ["one", [5, 6]]})).json()
        assert which_model(native[0], "one", ["x", "BAAI/bge-m3"], 32) == "BAAI/bge-m3"
        assert which_model(native[1], [5, 6], ["BAAI/bge-m3"], 32) == "BAAI/bge-m3"

        body = {"input": ["one", "two"], "model": "ignored", "dimensions": 8}
        floats = await (await http.post(f"{url}/v1/embeddings", json=body)).json()
        packed = await (
            await http.post(f"{url}/v1/embeddings", json={**body, "encoding_format": "base64"})
        ).json()
        assert floats["model"] == "BAAI/bge-m3" and floats["object"] == "list"
        assert [d["index"] for d in floats["data"]] == [0, 1]
        assert floats["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
        for f, b in zip(floats["data"], packed["data"], strict=True):
            assert np.array_equal(
                np.asarray(f["embedding"], dtype=np.float32), decode(b["embedding"])
            )
        assert which_model(floats["data"][1]["embedding"], "two", ["BAAI/bge-m3"], 32)
        assert state.requests[-1] == ("/v1/embeddings", {**body, "encoding_format": "base64"})

        too_many = await http.post(f"{url}/embed", json={"inputs": ["a"] * 5})
        assert too_many.status == 422
        assert await too_many.json() == {
            "error": "batch size 5 > maximum allowed batch size 4",
            "error_type": "Validation",
        }
        flat = await http.post(f"{url}/v1/embeddings", json={"input": ["a"] * 5})
        assert (await flat.json())["type"] == "Validation" and (await flat.json())["code"] == 422
        long = " ".join(["w"] * 12)
        refused = await http.post(f"{url}/embed", json={"inputs": long, "truncate": False})
        assert (refused.status, (await refused.json())["error"]) == (
            422,
            "Input validation error: `inputs` must have less than 8 tokens. Given: 12",
        )
        assert (await http.post(f"{url}/embed", json={"inputs": long})).status == 200
        empty = await http.post(f"{url}/embed", json={"inputs": []})
        assert (empty.status, (await empty.json())["error_type"]) == (400, "Empty")
        big = await http.post(f"{url}/embed", json={"inputs": "x" * 2_100_000})
        assert big.status == 413

        state.fail = (429, None)
        for _ in range(2):
            busy = await http.post(f"{url}/v1/embeddings", json={"input": "a"})
            assert busy.status == 429
            assert await busy.json() == {
                "message": "Model is overloaded",
                "code": 429,
                "type": "Overloaded",
            }
        state.fail = (424, "Backend error: Inference failed")
        broken = await http.post(f"{url}/embed", json={"inputs": "a"})
        assert (broken.status, (await broken.json())["error_type"]) == (424, "Backend")
        state.fail = None

        state.healthy = False
        sick = await http.get(f"{url}/health")
        assert sick.status == 503
        assert await sick.json() == {"error": "unhealthy", "error_type": "Unhealthy"}


async def test_tei_refuses_a_single_input_when_its_permits_are_used_up() -> None:
    app = create_tei_app("m", dims=8, max_concurrent_requests=1)
    state = app[TEI_STATE]
    state.delay = 0.3
    async with aiohttp.ClientSession() as http, serve_fake(app) as url:
        first = asyncio.ensure_future(http.post(f"{url}/embed", json={"inputs": "a"}))
        async with state.slots:
            await state.slots.wait_for(lambda: state.in_flight == 1)
        for inputs in ("b", ["b", "c"]):  # a batch is refused at once too, as TEI does
            second = await http.post(f"{url}/embed", json={"inputs": inputs})
            assert (second.status, await second.json()) == (
                429,
                {"error": "Model is overloaded", "error_type": "Overloaded"},
            )
        assert (await first).status == 200


async def test_a_hung_fake_answers_nothing_and_still_stops() -> None:
    app = create_tei_app("m", dims=8)
    async with aiohttp.ClientSession() as http:
        async with serve_fake(app) as url:
            app[FAKE_STATE].hang = True
            stuck = asyncio.ensure_future(http.post(f"{url}/embed", json={"inputs": "a"}))
            await asyncio.sleep(0.1)
            assert not stuck.done()
            app[FAKE_STATE].hang = False
            assert (await stuck).status == 200
            app[FAKE_STATE].hang = True
            stuck = asyncio.ensure_future(http.get(f"{url}/health"))
            await asyncio.sleep(0.1)
        with pytest.raises(aiohttp.ClientConnectionError):
            await stuck


async def test_ollama_speaks_ollama() -> None:
    app = create_ollama_app({"bge-m3": 16, "qwen3-embedding:0.6b": 8}, context_length=4)
    state = app[OLLAMA_STATE]
    async with aiohttp.ClientSession() as http, serve_fake(app) as url:
        assert await (await http.get(f"{url}/")).text() == "Ollama is running"
        assert "version" in await (await http.get(f"{url}/api/version")).json()
        names = [m["name"] for m in (await (await http.get(f"{url}/api/tags")).json())["models"]]
        assert names == ["bge-m3:latest", "qwen3-embedding:0.6b", "llama3.2:3b"]
        for name, capability in (("bge-m3", "embedding"), ("llama3.2:3b", "completion")):
            shown = await (await http.post(f"{url}/api/show", json={"model": name})).json()
            assert shown["capabilities"] == [capability]

        preload = await http.post(f"{url}/api/embed", json={"model": "bge-m3", "input": []})
        assert await preload.json() == {"model": "bge-m3", "embeddings": []}
        body = {"model": "bge-m3:latest", "input": ["a b", "c"], "keep_alive": "10m"}
        answer = await (await http.post(f"{url}/api/embed", json=body)).json()
        assert answer["model"] == "bge-m3:latest" and answer["prompt_eval_count"] == 3
        assert {"total_duration", "load_duration"} <= answer.keys()
        assert which_model(answer["embeddings"][1], "c", ["qwen3-embedding:0.6b", "bge-m3"], 16)
        assert state.keep_alives == [("bge-m3:latest", "10m")]
        loaded = (await (await http.get(f"{url}/api/ps")).json())["models"]
        assert [m["name"] for m in loaded] == ["bge-m3:latest"] and loaded[0]["expires_at"]

        cut_body = {"model": "qwen3-embedding:0.6b", "input": "x y", "dimensions": 4}
        short = (await (await http.post(f"{url}/api/embed", json=cut_body)).json())["embeddings"]
        assert len(short[0]) == 4
        assert which_model(short[0], "x y", ["bge-m3", "qwen3-embedding:0.6b"], 8)

        legacy = await http.post(f"{url}/api/embeddings", json={"model": "bge-m3", "prompt": "hi"})
        vector = (await legacy.json())["embedding"]
        assert np.linalg.norm(vector) == pytest.approx(3.0, rel=1e-5)
        assert which_model(vector, "hi", ["bge-m3"], 16) == "bge-m3"

        errors = [
            ({"model": "nope", "input": "x"}, 404, 'model "nope" not found, try pulling it first'),
            ({"model": "bge-m3", "input": [[1, 2]]}, 400, "invalid input type"),
            (
                {"model": "bge-m3", "input": "a b c d e", "truncate": False},
                400,
                "the input length exceeds the context length",
            ),
        ]
        for request, status, message in errors:
            refused = await http.post(f"{url}/api/embed", json=request)
            assert (refused.status, await refused.json()) == (status, {"error": message})
        ok = await http.post(f"{url}/api/embed", json={"model": "bge-m3", "input": "a b c d e"})
        assert ok.status == 200
        state.fail = (500, None)
        assert (await http.post(f"{url}/api/embed", json={"model": "bge-m3"})).status == 500


async def test_ollama_embeds_with_any_embedding_head_and_refuses_a_chat_model_as_it_does() -> None:
    """/api/embed asks for no capability: a chat model loads, then its runner answers 501."""
    app = create_ollama_app({"bge-m3": 8, "jmorganca/e5:v2": 8}, chat_models=["llama3.2:3b"])
    async with aiohttp.ClientSession() as http, serve_fake(app) as url:
        chat = {"model": "llama3.2:3b", "input": []}
        loaded = await http.post(f"{url}/api/embed", json=chat)
        assert (loaded.status, await loaded.json()) == (200, {"model": "llama3.2:3b",
                                                              "embeddings": []})
        refused = await http.post(f"{url}/api/embed", json={**chat, "input": "x"})
        assert (refused.status, await refused.json()) == (
            501, {"error": "this model does not support embeddings"})
        legacy = await http.post(f"{url}/api/embeddings",
                                 json={"model": "llama3.2:3b", "prompt": "x"})
        assert (legacy.status, await legacy.json()) == (
            500, {"error": "this model does not support embeddings"})

        cards = (await (await http.get(f"{url}/v1/models")).json())["data"]
        assert {(c["id"], c["owned_by"]) for c in cards} == {
            ("bge-m3:latest", "library"), ("jmorganca/e5:v2", "jmorganca"),
            ("llama3.2:3b", "library")}
        cases = [
            ({"model": "llama3.2:3b", "input": "x"}, 501, "api_error",
             "this model does not support embeddings"),
            ({"model": "nope", "input": "x"}, 404, "not_found_error",
             'model "nope" not found, try pulling it first'),
            ({"model": "bge-m3", "input": []}, 400, "invalid_request_error", "invalid input"),
            ({"model": "bge-m3", "input": [[1, 2]]}, 400, "invalid_request_error",
             "invalid input type"),
        ]
        for request, status, kind, message in cases:
            answer = await http.post(f"{url}/v1/embeddings", json=request)
            assert (answer.status, await answer.json()) == (status, {"error": {
                "message": message, "type": kind, "param": None, "code": None}})
        body = {"model": "BGE-M3", "input": "x", "encoding_format": "base64"}
        answer = await (await http.post(f"{url}/v1/embeddings", json=body)).json()
        assert answer["model"] == "BGE-M3"  # the name asked, not the one listed
        assert which_model(decode(answer["data"][0]["embedding"]).tolist(), "x",
                           ["bge-m3", "jmorganca/e5:v2"], 8) == "bge-m3"


async def test_vllm_answers_errors_nested_by_default() -> None:
    """Since 0.10.1 vLLM's errors are ``{"error": {...}}`` only."""
    async with aiohttp.ClientSession() as http, serve_fake(create_vllm_app("m", dims=4)) as url:
        answer = await http.post(f"{url}/v1/embeddings", json={"model": "other", "input": "a"})
        assert answer.status == 404
        assert set(await answer.json()) == {"error"}


@pytest.mark.parametrize("shape", ["object", "nested"])
async def test_vllm_speaks_vllm(shape: str) -> None:
    app = create_vllm_app("intfloat/e5-small", dims=16, max_model_len=6, error_shape=shape)
    async with aiohttp.ClientSession() as http, serve_fake(app) as url:
        models = await (await http.get(f"{url}/v1/models")).json()
        assert models["object"] == "list"
        assert models["data"][0]["id"] == "intfloat/e5-small"
        assert models["data"][0]["owned_by"] == "vllm" and models["data"][0]["max_model_len"] == 6
        health = await http.get(f"{url}/health")
        assert (health.status, await health.read()) == (200, b"")

        body = {"model": "intfloat/e5-small", "input": [[1, 2], [3]]}
        floats = await (await http.post(f"{url}/v1/embeddings", json=body)).json()
        packed = await (
            await http.post(f"{url}/v1/embeddings", json={**body, "encoding_format": "base64"})
        ).json()
        assert floats["id"].startswith("embd-") and floats["object"] == "list"
        assert floats["usage"] == {
            "prompt_tokens": 3,
            "total_tokens": 3,
            "completion_tokens": 0,
            "prompt_tokens_details": None,
        }
        for f, b in zip(floats["data"], packed["data"], strict=True):
            assert f["object"] == "embedding"
            assert np.array_equal(
                np.asarray(f["embedding"], dtype=np.float32), decode(b["embedding"])
            )
        assert which_model(floats["data"][0]["embedding"], [1, 2], ["intfloat/e5-small"], 16)

        def envelope(payload: dict) -> dict:
            return payload if shape == "object" else payload["error"]

        cases = [
            (
                {"model": "other", "input": "a"},
                404,
                "NotFoundError",
                "The model `other` does not exist. Valid aliases: intfloat/e5-small.",
            ),
            (
                {"input": "a", "dimensions": 8},
                400,
                "BadRequestError",
                'Model "intfloat/e5-small" does not support matryoshka representation, '
                "changing output dimensions will lead to poor results.",
            ),
            (
                {"input": "a b c d e f g"},
                400,
                "BadRequestError",
                "This model's maximum context length is 6 tokens. However, you requested 7 "
                "tokens in the input for embedding generation. Please reduce the length of the "
                "input.",
            ),
        ]
        for request, status, kind, message in cases:
            refused = await http.post(f"{url}/v1/embeddings", json=request)
            error = envelope(await refused.json())
            assert refused.status == status
            assert (error["type"], error["message"], error["code"], error["param"]) == (
                kind,
                message,
                status,
                None,
            )
            assert (error.get("object") == "error") == (shape == "object")

        app[FAKE_STATE].healthy = False
        assert (await http.get(f"{url}/health")).status == 503


async def test_vllm_matryoshka_cuts() -> None:
    app = create_vllm_app("m", dims=16, matryoshka=True)
    async with aiohttp.ClientSession() as http, serve_fake(app) as url:
        answer = await http.post(f"{url}/v1/embeddings", json={"input": "a", "dimensions": 4})
        vector = (await answer.json())["data"][0]["embedding"]
        assert len(vector) == 4 and which_model(vector, "a", ["m"], 16) == "m"


async def test_tei_runs_as_a_process() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.tei",
        "--model-id",
        "BAAI/bge-m3",
        "--port",
        "0",
        "--startup-delay",
        "0.2",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = b""
        while b"listening on " not in line:
            line = await asyncio.wait_for(process.stdout.readline(), 10)
            assert line, "the fake exited before listening"
        url = line.decode().split("listening on ", 1)[1].strip()
        async with aiohttp.ClientSession() as http:
            assert (await http.get(f"{url}/health")).status == 200
            info = await (await http.get(f"{url}/info")).json()
            assert info["model_id"] == "BAAI/bge-m3"
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_fake_can_die_at_start() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakes.vllm",
        "--model",
        "m",
        "--exit-after-start",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 1 and output.strip()
