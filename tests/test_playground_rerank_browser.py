"""The playground's Rerank tab in real headless Chromium, in front of a real gateway and a fake
TEI reranker (and a TEI embedding model, which the tab does not offer)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Page

from tests.browser_support import launch_chromium
from tests.conftest import run_gateway
from tests.fakes import serve_fake
from tests.fakes.scores import fake_score
from tests.fakes.tei import create_tei_app

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]

RERANKER = "BAAI/bge-reranker-v2-m3"
EMBEDDER = "intfloat/multilingual-e5-small"
QUERY = "Where do llamas live?"
DOCUMENTS = ["Llamas live in the Andes.", "Stocks fell sharply.", "Alpacas are camelids.",
             "오늘 서울은 맑습니다.", "The sea is deep."]
WAIT_MS = 20_000


@contextlib.asynccontextmanager
async def rerank_tab() -> AsyncIterator[Page]:
    async with contextlib.AsyncExitStack() as stack:
        reranker = await stack.enter_async_context(serve_fake(
            create_tei_app(RERANKER, max_client_batch_size=2, model_type="reranker")))
        embedder = await stack.enter_async_context(serve_fake(create_tei_app(EMBEDDER)))
        url = await stack.enter_async_context(run_gateway({"backends": {
            "rerankers": {"kind": "tei", "base_url": reranker, "models": {RERANKER: {}}},
            "embedders": {"kind": "tei", "base_url": embedder, "models": {EMBEDDER: {}}},
        }}))
        browser = await stack.enter_async_context(launch_chromium())
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(f"{url}/playground#rerank")
        await page.wait_for_selector("html[data-ready=true]")
        await page.wait_for_selector(f"#rerank-model option[value='{RERANKER}']",
                                     state="attached")
        yield page
        assert errors == []
        await context.close()


async def rows(page: Page) -> list[dict[str, str]]:
    return await page.eval_on_selector_all("[data-testid=rerank-row]", """rows => rows.map(r => ({
        index: r.dataset.index, returned: r.dataset.returned,
        text: r.children[2].textContent,
        score: r.querySelector('[data-testid=rerank-score]').textContent,
        bar: r.querySelector('[data-testid=rerank-bar] div').style.width}))""")


def expected() -> list[int]:
    return sorted(range(len(DOCUMENTS)), key=lambda i: -fake_score(RERANKER, QUERY, DOCUMENTS[i]))


async def test_the_rerank_tab_ranks_documents_with_score_bars() -> None:
    async with rerank_tab() as page:
        assert await page.is_visible("[data-testid=panel-rerank]")
        embed_options = await page.eval_on_selector_all(
            "#embed-model option", "options => options.map(o => o.value)")
        assert embed_options == [EMBEDDER]  # a reranker is not offered for embedding
        await page.fill("[data-testid=rerank-query]", QUERY)
        await page.fill("[data-testid=rerank-documents]", "\n".join(DOCUMENTS))
        await page.fill("[data-testid=rerank-top-n]", "3")
        await page.click("[data-testid=rerank-run]")
        await page.wait_for_selector("[data-testid=rerank-row]")
        shown = await rows(page)
        assert [int(r["index"]) for r in shown] == expected()[:3]
        for row in shown:
            score = fake_score(RERANKER, QUERY, DOCUMENTS[int(row["index"])])
            assert row["score"] == f"{score:.4f}"
            assert float(row["bar"].rstrip("%")) == pytest.approx(score * 100, abs=1e-3)
            assert row["returned"] == "true" and row["text"] == DOCUMENTS[int(row["index"])]
        assert await page.text_content("[data-testid=rerank-count]") == "5"

        await page.uncheck("[data-testid=rerank-return-documents]")
        await page.fill("[data-testid=rerank-top-n]", "")
        await page.click("[data-testid=rerank-run]")
        # selectors, not wait_for_function: that polls with eval, which the page's CSP refuses
        await page.wait_for_selector("[data-testid=rerank-row][data-returned=false]:nth-child(5)")
        shown = await rows(page)
        assert [int(r["index"]) for r in shown] == expected()
        assert {r["returned"] for r in shown} == {"false"}  # texts from the page's own list
        assert [r["text"] for r in shown] == [DOCUMENTS[i] for i in expected()]


async def test_the_rerank_tab_says_what_is_missing_and_shows_the_gateways_errors() -> None:
    async with rerank_tab() as page:
        await page.fill("[data-testid=rerank-query]", QUERY)
        await page.click("[data-testid=rerank-run]")
        assert "at least one document" in (await page.text_content("[data-testid=rerank-error]")
                                           or "")
        await page.fill("[data-testid=rerank-documents]", "one\ntwo")
        await page.evaluate("""() => {  // a model the gateway does not have: its 404 shows
            const option = document.createElement('option');
            option.value = 'no-such-model'; option.textContent = 'x';
            document.getElementById('rerank-model').append(option);
            document.getElementById('rerank-model').value = 'no-such-model'; }""")
        await page.click("[data-testid=rerank-run]")
        await page.wait_for_selector("[data-testid=rerank-error]:has-text('404:')")
        assert await page.is_hidden("[data-testid=rerank-result]")
