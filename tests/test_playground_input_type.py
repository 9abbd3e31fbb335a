"""The playground's input type in real headless Chromium: the chosen type is sent, and the
heatmap shows the cosines of the prompted vectors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import numpy as np
import pytest
from playwright.async_api import Browser

from tests.browser_support import launch_chromium
from tests.conftest import run_gateway
from tests.fakes import serve_fake
from tests.fakes.vllm import create_vllm_app
from tests.test_playground_browser import cosine_matrix, heatmap_texts, open_playground

pytestmark = pytest.mark.browser

E5 = "intfloat/multilingual-e5-small"
TEXTS = ["서울의 날씨는 맑습니다", "the stock market fell", "오늘 주가가 내렸다"]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with launch_chromium() as chromium:
        yield chromium


async def vectors(url: str, **body: Any) -> np.ndarray:
    async with aiohttp.ClientSession() as session, session.post(
            f"{url}/v1/embeddings", json={"model": E5, "input": TEXTS, **body}) as resp:
        answer = await resp.json()
        assert resp.status == 200, answer
    return np.array([item["embedding"] for item in answer["data"]], dtype=np.float64)


async def test_the_chosen_input_type_is_sent_and_its_vectors_are_shown(browser: Browser) -> None:
    prompts = {"query": "query: ", "passage": "passage: "}
    async with serve_fake(create_vllm_app(E5, dims=64)) as upstream, run_gateway({
        "server": {"playground": True},
        "backends": {"v": {"kind": "vllm", "base_url": upstream,
                           "models": {E5: {"prompts": prompts}}}},
    }) as url, open_playground(browser, url) as page:
        await page.wait_for_selector("#embed-model option", state="attached")
        await page.select_option("[data-testid=embed-model]", E5)
        await page.select_option("[data-testid=embed-input-type]", "passage")
        await page.fill("[data-testid=embed-text]", "\n".join(TEXTS))
        async with page.expect_request("**/v1/embeddings") as sent:
            await page.click("[data-testid=embed-run]")
        assert json.loads((await sent.value).post_data or "{}")["input_type"] == "passage"
        await page.wait_for_selector("[data-testid=embed-result]:not([hidden])")
        passage = cosine_matrix(await vectors(url, input_type="passage"))
        plain = cosine_matrix(await vectors(url))
        assert not np.allclose(passage, plain, atol=0.01)  # the prompt shows in the matrix
        cells = await heatmap_texts(page, "#embed-heatmap")
        assert cells == [[f"{value:.2f}" for value in row] for row in passage]
