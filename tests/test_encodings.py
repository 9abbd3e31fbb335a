"""Compact ``encoding_format``s (Cohere's int8, uint8, binary, ubinary) through a real gateway,
against a reference computed here, one value and one bit at a time, from the float answer."""

from __future__ import annotations

from typing import Any

import aiohttp
import numpy as np
import pytest

from tests.conftest import run_gateway
from tests.fakes import serve_fake
from tests.fakes.vllm import create_vllm_app

MODEL = "intfloat/multilingual-e5-large"
DIMS = 64
TEXTS = ["the quick brown fox", "jumps over", "the lazy dog", "안녕하세요"]


def reference_scalar(vector: list[float], signed: bool) -> list[int]:
    """Each component of [-1, 1] mapped onto 0..255 (rounded half to even), minus 128 when
    signed."""
    out = []
    for value in vector:
        clipped = min(max(float(value), -1.0), 1.0)
        level = round((clipped + 1.0) / 2.0 * 255.0)  # Python rounds half to even
        out.append(level - 128 if signed else level)
    return out


def reference_bits(vector: list[float], signed: bool) -> list[int]:
    """One bit per component (1 where >= 0), eight to a byte, first component highest; the
    last byte padded with 0 bits; minus 128 when signed."""
    out = []
    for start in range(0, len(vector), 8):
        byte = 0
        for offset in range(8):
            index = start + offset
            bit = 1 if index < len(vector) and vector[index] >= 0 else 0
            byte |= bit << (7 - offset)
        out.append(byte - 128 if signed else byte)
    return out


REFERENCES = {
    "int8": lambda v: reference_scalar(v, True),
    "uint8": lambda v: reference_scalar(v, False),
    "binary": lambda v: reference_bits(v, True),
    "ubinary": lambda v: reference_bits(v, False),
}
RANGES = {"int8": (-128, 127), "uint8": (0, 255), "binary": (-128, 127), "ubinary": (0, 255)}


async def _post(session: aiohttp.ClientSession, url: str, **body: Any) -> dict[str, Any]:
    async with session.post(f"{url}/v1/embeddings", json={"model": MODEL, **body}) as resp:
        answer = await resp.json()
        assert resp.status == 200, answer
        return answer


@pytest.mark.parametrize("dimensions", [None, 20])
async def test_compact_formats_match_a_reference_computation(dimensions: int | None) -> None:
    app = create_vllm_app(MODEL, dims=DIMS, matryoshka=True)
    async with serve_fake(app) as vllm, run_gateway({"backends": {"v": {
        "kind": "vllm", "base_url": vllm, "models": {MODEL: {"matryoshka": True}},
    }}, "cache": {"memory_bytes": 0}}) as url, aiohttp.ClientSession() as session:
        # no cache: every answer is computed, so each reports the same usage
        extra = {} if dimensions is None else {"dimensions": dimensions}
        floats = await _post(session, url, input=TEXTS, **extra)
        size = dimensions or DIMS
        for encoding, reference in REFERENCES.items():
            answer = await _post(session, url, input=TEXTS, encoding_format=encoding, **extra)
            assert answer["usage"] == floats["usage"]
            for item, float_item in zip(answer["data"], floats["data"], strict=True):
                got, vector = item["embedding"], float_item["embedding"]
                assert all(type(value) is int for value in got)
                assert got == reference(vector), encoding
                low, high = RANGES[encoding]
                assert low <= min(got) and max(got) <= high
                wide = encoding in ("int8", "uint8")
                assert len(got) == (size if wide else -(-size // 8))


def test_scalar_levels_cover_the_range_and_keep_the_sign() -> None:
    from embedding_gateway.encodings import quantize

    vectors = np.array([[-1.0, -0.5, 0.0, 0.5, 1.0, 2.0, -3.0, 0.001]], dtype=np.float32)
    assert quantize(vectors, "uint8").tolist() == [reference_scalar(vectors[0].tolist(), False)]
    assert quantize(vectors, "int8").tolist()[0][:5] == [-128, -64, 0, 63, 127]
    assert quantize(vectors, "ubinary").tolist() == [[0b00111101]]
    assert quantize(vectors, "binary").tolist() == [[0b00111101 - 128]]
