"""Token-id input read as each model's ``token_ids`` says, against TEI, Ollama and vLLM fakes;
cl100k_base read from the install, offline, and decoded exactly as tiktoken decodes."""

from __future__ import annotations

import numpy as np
import pytest
import tiktoken

from embedding_gateway import cl100k
from tests.fakes.vectors import which_model
from tests.test_api_embeddings import (
    ALL_MODELS,
    OLLAMA_DIMS,
    OLLAMA_MODEL,
    TEI_DIMS,
    TEI_MODEL,
    VLLM_DIMS,
    VLLM_MODEL,
    assert_envelope,
    sent_inputs,
    stack,
)

pytestmark = pytest.mark.usefixtures("offline_tiktoken")

BACKENDS = [("tei", TEI_MODEL, TEI_DIMS), ("ollama", OLLAMA_MODEL, OLLAMA_DIMS),
            ("vllm", VLLM_MODEL, VLLM_DIMS)]
TEXTS = ["hello world", "東京の天気はどうですか", "naïve café 🙂 <|endoftext|>"]


@pytest.fixture(scope="module")
def encoding(offline_tiktoken: None) -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base")


def test_cl100k_decodes_every_id_as_tiktoken_does(encoding: tiktoken.Encoding) -> None:
    vocabulary = cl100k.vocabulary()
    every_id = np.flatnonzero(vocabulary.known).astype(np.uint32)
    assert len(every_id) == encoding.n_vocab - 16  # 16 ids in its range stand for nothing
    assert vocabulary.decode_bytes(every_id) == encoding.decode_bytes(every_id.tolist())
    for n in every_id[::997].tolist():
        assert vocabulary.decode_bytes(np.array([n], np.uint32)) == encoding.decode_bytes([n])
    text = " ".join(TEXTS) * 50
    ids = encoding.encode(text, allowed_special="all")
    assert vocabulary.decode_bytes(np.array(ids, np.uint32)).decode() == text


@pytest.mark.parametrize(("backend", "model", "dims"), BACKENDS)
async def test_openai_token_ids_are_embedded_as_the_text_they_stand_for(
    encoding: tiktoken.Encoding, backend: str, model: str, dims: int
) -> None:
    """The default: LangChain's ids give the vectors of the text, on every backend."""
    ids = [encoding.encode(text, allowed_special="all") for text in TEXTS]
    async with stack() as s:
        status, body = await s.post({"model": model, "input": ids})
        assert_envelope(status, body, model, len(TEXTS))
        for text, item in zip(TEXTS, body["data"], strict=True):
            assert which_model(item["embedding"], text, ALL_MODELS, dims) == model
        status, body = await s.post({"model": model, "input": ids[1]})  # one array of ids
        assert_envelope(status, body, model, 1)
        assert which_model(body["data"][0]["embedding"], TEXTS[1], ALL_MODELS, dims) == model
        # the text went upstream once; the repeat was answered from the cache, keyed by it
        assert [sent_inputs(r) for r in s.embedding_requests(backend)] == [TEXTS]


async def test_an_id_outside_cl100k_is_a_400_naming_its_input_and_position() -> None:
    async with stack() as s:
        for ids, bad, where in (([[9906], [9906, 100256]], 100256, "'input[1]'"),
                                ([[9906, 1917, 300000]], 300000, "'input[0]'")):
            status, body = await s.post({"model": VLLM_MODEL, "input": ids})
            assert status == 400, body
            message = body["error"]["message"]
            assert body["error"]["param"] == "input"
            assert where in message and f"token id {bad} at position" in message, message
            assert "cl100k_base" in message
        status, body = await s.post({"model": VLLM_MODEL, "input": [[1, -2]]})
        assert status == 400 and "'input[0]'" in body["error"]["message"]
        status, body = await s.post({"model": VLLM_MODEL, "input": [[2**32]]})
        assert status == 400 and "past 32 bits" in body["error"]["message"]
        assert s.embedding_requests("vllm") == []


def split_inside_a_character(encoding: tiktoken.Encoding, text: str) -> tuple[list[int],
                                                                               list[int]]:
    """The ids of ``text`` cut where the cut falls inside a character, as a client that
    splits long texts by tokens can cut it."""
    ids = encoding.encode(text)
    for cut in range(1, len(ids)):
        try:
            encoding.decode_bytes(ids[:cut]).decode()
        except UnicodeDecodeError:
            return ids[:cut], ids[cut:]
    raise AssertionError(f"no id of {text!r} ends inside a character")


async def test_a_character_cut_between_two_inputs_is_left_out_of_both(
    encoding: tiktoken.Encoding,
) -> None:
    head, tail = split_inside_a_character(encoding, "天気 🙂🙃 tail")
    expected = [encoding.decode_bytes(part).decode("utf-8", "ignore") for part in (head, tail)]
    assert "".join(expected) != "天気 🙂🙃 tail"  # the cut character is in neither
    async with stack() as s:
        status, body = await s.post({"model": VLLM_MODEL, "input": [head, tail]})
        assert_envelope(status, body, VLLM_MODEL, 2)
        assert s.embedding_requests("vllm")[-1]["input"] == expected
        # inside one input, bytes that are not UTF-8 are not text: refused, not guessed at
        status, body = await s.post({"model": VLLM_MODEL, "input": [[*head, 1820, *tail]]})
        assert status == 400, body
        assert "'input[0]'" in body["error"]["message"]
        assert "not UTF-8" in body["error"]["message"]
        assert len(s.embedding_requests("vllm")) == 1


async def test_refuse_says_to_send_text_and_how_with_langchain() -> None:
    async with stack(token_ids="refuse") as s:
        status, body = await s.post({"model": TEI_MODEL, "input": [[9906, 1917]]})
        assert status == 400, body
        assert body["error"]["code"] == "unsupported_input"
        assert body["error"]["param"] == "input"
        assert "check_embedding_ctx_length=False" in body["error"]["message"]
        status, body = await s.post({"model": TEI_MODEL, "input": ["Hello world"]})
        assert_envelope(status, body, TEI_MODEL, 1)
        assert [sent_inputs(r) for r in s.embedding_requests("tei")] == [["Hello world"]]


@pytest.mark.parametrize("token_ids", ["openai", "model"])
async def test_token_ids_past_max_token_ids_are_a_413(token_ids: str) -> None:
    async with stack(token_ids=token_ids, limits={"max_token_ids": 5}) as s:
        status, body = await s.post({"model": VLLM_MODEL, "input": [[9906, 1917], [1, 2, 3, 4]]})
        assert status == 413, body
        assert body["error"]["param"] == "input"
        assert "6 token ids" in body["error"]["message"]
        assert "at most 5" in body["error"]["message"]
        status, body = await s.post({"model": VLLM_MODEL, "input": [[9906, 1917], [1, 2, 3]]})
        assert_envelope(status, body, VLLM_MODEL, 2)
        status, body = await s.post({"model": VLLM_MODEL, "input": ["a b c d e f g"]})
        assert_envelope(status, body, VLLM_MODEL, 1)  # text is not counted as token ids
