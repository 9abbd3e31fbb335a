"""The ``/playground`` page in real headless Chromium, in front of a real gateway and fake
upstreams on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from playwright.async_api import Browser, Page

from tests.browser_support import launch_chromium
from tests.conftest import GatewayFactory
from tests.fakes import FAKE_STATE, serve_fake
from tests.fakes.ollama import create_ollama_app
from tests.fakes.tei import create_tei_app
from tests.fakes.vllm import create_vllm_app
from tests.ports import free_port

pytestmark = pytest.mark.browser

XSS_NAME = "<img src=x onerror=window.__xss=1>"
E5 = "intfloat/multilingual-e5-small"
BROKEN = "BAAI/bge-small-en-v1.5"
BATCH = ["오늘 서울은 맑고 따뜻합니다.", "The weather in Seoul is clear and warm today.",
         "주식 시장이 큰 폭으로 하락했습니다."]
API_KEY = "sk-playground-test"
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "playground.png"
WAIT_MS = 20_000


@contextlib.asynccontextmanager
async def upstreams() -> AsyncIterator[dict[str, Any]]:
    """Ollama (bge-m3), TEI (e5-small), vLLM serving a hostile model name, and a TEI whose
    every embedding request fails."""
    broken = create_tei_app("BAAI/bge-small-en-v1.5", dims=384)
    broken[FAKE_STATE].fail = (424, "Backend error: Inference failed")
    async with contextlib.AsyncExitStack() as stack:
        urls = {
            "ollama": await stack.enter_async_context(
                serve_fake(create_ollama_app({"bge-m3": 1024}))),
            "tei": await stack.enter_async_context(serve_fake(create_tei_app(E5, dims=384))),
            "hostile": await stack.enter_async_context(
                serve_fake(create_vllm_app(XSS_NAME, dims=256))),
            "broken": await stack.enter_async_context(serve_fake(broken)),
        }
        yield urls


def gateway_config(urls: dict[str, str], api_keys: list[str] | None = None) -> dict[str, Any]:
    return {
        "server": {"host": "127.0.0.1", "port": 0, "playground": True,
                   "api_keys": api_keys or []},
        "backends": {
            "ollama": {"kind": "ollama", "base_url": urls["ollama"],
                       "models": {"bge-m3": {"dimensions": 1024}}},
            "tei": {"kind": "tei", "base_url": urls["tei"],
                    "models": {E5: {"aliases": ["e5-small"], "dimensions": 384}}},
            "hostile": {"kind": "vllm", "base_url": urls["hostile"],
                        "models": {XSS_NAME: {"dimensions": 256}}},
            "broken": {"kind": "tei", "base_url": urls["broken"],
                       "models": {"BAAI/bge-small-en-v1.5": {"aliases": ["broken"]}}},
        },
    }


@pytest.fixture
def playground_gateway(gateway: GatewayFactory) -> Callable[..., Any]:
    """``async with playground_gateway(api_keys=..., managed=...) as url``: a gateway in front of
    ``upstreams()``, plus any extra backends (managed or not) in ``managed``."""

    @contextlib.asynccontextmanager
    async def run(
        api_keys: list[str] | None = None, managed: dict[str, Any] | None = None
    ) -> AsyncIterator[str]:
        async with upstreams() as urls:
            config = gateway_config(urls, api_keys)
            config["backends"].update(managed or {})
            async with gateway(config) as base_url:
                yield base_url

    return run


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with launch_chromium() as chromium:
        yield chromium


@contextlib.asynccontextmanager
async def open_playground(browser: Browser, base_url: str,
                          width: int = 1280) -> AsyncIterator[Page]:
    """A page on /playground, ``width`` pixels wide; fails the test on any uncaught script
    error."""
    context = await browser.new_context(viewport={"width": width, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        response = await page.goto(f"{base_url}/playground")
        assert response is not None and response.status == 200
        await page.wait_for_selector("html[data-ready=true]")
        yield page
        assert errors == []
    finally:
        await context.close()


async def wait_for_models(page: Page) -> None:
    await page.wait_for_selector("#embed-model option", state="attached")


async def embed_batch(page: Page, model: str, texts: list[str]) -> None:
    await page.select_option("[data-testid=embed-model]", model)
    await page.fill("[data-testid=embed-text]", "\n".join(texts))
    await page.click("[data-testid=embed-run]")


async def choose_compare_models(page: Page, models: list[str]) -> None:
    """Open the Compare tab and tick exactly ``models``."""
    await page.click("[data-testid=tab-compare]")
    boxes = page.locator("[data-testid=compare-model]")
    for index in range(await boxes.count()):
        await boxes.nth(index).uncheck()
    for model in models:
        await page.check(f"[data-testid=compare-model][value='{model}']")


async def gateway_vectors(base_url: str, model: str, texts: list[str],
                          key: str | None = None) -> np.ndarray:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as session, session.post(
        f"{base_url}/v1/embeddings", json={"model": model, "input": texts}, headers=headers
    ) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    return np.array([item["embedding"] for item in body["data"]], dtype=np.float64)


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    units = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return units @ units.T


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    rank_a = np.argsort(np.argsort(a)).astype(float)
    rank_b = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(rank_a, rank_b)[0, 1])


async def heatmap_texts(page: Page, scope: str) -> list[list[str]]:
    """The cell texts of the heatmap under ``scope``, row by row."""
    return await page.eval_on_selector(scope, """(root) => {
        const rows = {};
        for (const cell of root.querySelectorAll('[data-testid=heatmap-cell]')) {
            (rows[cell.dataset.row] ||= [])[Number(cell.dataset.col)] = cell.textContent;
        }
        return Object.keys(rows).sort((a, b) => a - b).map((key) => rows[key]);
    }""")


async def test_embed_tab_shows_a_heatmap_with_the_gateways_cosines(
    browser: Browser, playground_gateway: Callable[..., Any], tmp_path: Path
) -> None:
    async with playground_gateway() as base_url, open_playground(browser, base_url) as page:
        await wait_for_models(page)
        groups = await page.eval_on_selector_all(
            "#embed-model optgroup", "(gs) => gs.map((g) => g.label)")
        assert [label.split(" ")[0] for label in groups] == ["ollama", "tei", "hostile", "broken"]
        await embed_batch(page, "bge-m3", BATCH)
        await page.wait_for_selector("[data-testid=embed-result]:not([hidden])")

        cells = await heatmap_texts(page, "#embed-heatmap")
        expected = cosine_matrix(await gateway_vectors(base_url, "bge-m3", BATCH))
        assert cells == [[f"{value:.2f}" for value in row] for row in expected]
        assert [cells[i][i] for i in range(3)] == ["1.00", "1.00", "1.00"]
        assert await page.text_content("[data-testid=stat-count]") == "3"
        assert await page.text_content("[data-testid=stat-dims]") == "1024"
        row_titles = await page.eval_on_selector_all(
            "#embed-heatmap [data-testid=heatmap-row]", "(hs) => hs.map((h) => h.title)")
        assert row_titles == BATCH
        nearest = await page.eval_on_selector_all(
            "[data-testid=nearest-neighbour]", "(li) => li.map((x) => Number(x.dataset.nearest))")
        off_diagonal = expected - np.eye(3) * 10
        assert nearest == [int(np.argmax(row)) for row in off_diagonal]
        assert await page.locator("[data-testid=vector-row]").count() == 3

        health = page.locator("[data-testid=health-badge]")
        await health.nth(3).wait_for()
        assert sorted(await health.evaluate_all("(bs) => bs.map((b) => b.dataset.backend)")) == [
            "broken", "hostile", "ollama", "tei"]

        async with page.expect_download() as download_info:
            await page.click("[data-testid=embed-download]")
        download = await download_info.value
        saved = tmp_path / download.suggested_filename
        await download.save_as(saved)
        document = json.loads(saved.read_text(encoding="utf-8"))
        assert document["inputs"] == BATCH and document["model"] == "bge-m3"
        assert np.allclose(document["similarity"], expected)

        await page.screenshot(path=tmp_path / "embed.png", full_page=True)
        if os.environ.get("EG_UPDATE_DOCS_SCREENSHOT") == "1":
            shutil.copyfile(tmp_path / "embed.png", DOCS_SCREENSHOT)


async def test_compare_tab_shows_matrices_and_rank_agreement(
    browser: Browser, playground_gateway: Callable[..., Any], tmp_path: Path
) -> None:
    texts = [*BATCH, "Stock markets fell sharply."]
    async with playground_gateway() as base_url, open_playground(browser, base_url) as page:
        await wait_for_models(page)
        await choose_compare_models(page, ["bge-m3", E5])
        await page.fill("[data-testid=compare-text]", "\n".join(texts))
        await page.click("[data-testid=compare-run]")
        await page.wait_for_selector("[data-testid=compare-progress][data-done=true]")

        assert await page.locator("[data-testid=compare-card]").count() == 2
        assert await page.locator("[data-testid=card-error]:visible").count() == 0
        dims = await page.locator("[data-testid=card-dims]").all_text_contents()
        assert dims == ["1024", "384"]
        assert await page.locator("[data-testid=compare-matrix]").count() == 2
        for model in ("bge-m3", E5):
            scope = f"[data-testid=compare-matrix][data-model='{model}']"
            assert len(await heatmap_texts(page, scope)) == 4

        sims = [cosine_matrix(await gateway_vectors(base_url, model, texts))
                for model in ("bge-m3", E5)]
        upper = np.triu_indices(4, k=1)
        rho = spearman(sims[0][upper], sims[1][upper])
        shown = await page.text_content("[data-testid=rank-agreement-value]")
        assert shown == f"{rho:.3f}"
        await page.screenshot(path=tmp_path / "compare.png", full_page=True)


async def test_hostile_model_name_and_text_are_shown_as_text(
    browser: Browser, playground_gateway: Callable[..., Any], tmp_path: Path
) -> None:
    hostile_texts = ["<script>window.__xss=2</script>", XSS_NAME, "plain"]
    async with playground_gateway() as base_url, open_playground(browser, base_url) as page:
        await wait_for_models(page)
        options = await page.eval_on_selector_all(
            "#embed-model option", "(os) => os.map((o) => o.value)")
        assert XSS_NAME in options
        await embed_batch(page, XSS_NAME, hostile_texts)
        await page.wait_for_selector("[data-testid=embed-result]:not([hidden])")
        assert await page.text_content("[data-testid=stat-model]") == XSS_NAME
        labels = await page.eval_on_selector_all(
            "#embed-heatmap [data-testid=heatmap-row]", "(hs) => hs.map((h) => h.title)")
        assert labels == hostile_texts

        await choose_compare_models(page, [XSS_NAME, "bge-m3"])
        await page.fill("[data-testid=compare-text]", "\n".join(hostile_texts))
        await page.click("[data-testid=compare-run]")
        await page.wait_for_selector("[data-testid=compare-progress][data-done=true]")
        card = page.locator(f"[data-testid=compare-card][data-model='{XSS_NAME}'] .title")
        assert await card.text_content() == XSS_NAME

        assert await page.evaluate("typeof window.__xss") == "undefined"
        assert await page.locator("img").count() == 0
        assert await page.locator("script").count() == 2
        await page.screenshot(path=tmp_path / "hostile.png", full_page=True)


async def test_failing_upstream_shows_its_error_and_the_page_stays_usable(
    browser: Browser, playground_gateway: Callable[..., Any], tmp_path: Path
) -> None:
    async with playground_gateway() as base_url, open_playground(browser, base_url) as page:
        await wait_for_models(page)
        await embed_batch(page, BROKEN, BATCH)
        error_box = page.locator("[data-testid=error-box]")
        await error_box.wait_for(state="visible")
        assert "Inference failed" in (await error_box.text_content() or "")

        await choose_compare_models(page, [BROKEN, E5])
        await page.fill("[data-testid=compare-text]", "\n".join(BATCH))
        await page.click("[data-testid=compare-run]")
        await page.wait_for_selector("[data-testid=compare-progress][data-done=true]")
        broken = page.locator(f"[data-testid=compare-card][data-model='{BROKEN}']")
        assert await broken.get_attribute("data-state") == "failed"
        card_error = broken.locator("[data-testid=card-error]")
        assert await card_error.is_visible()
        assert "Inference failed" in (await card_error.text_content() or "")
        working = page.locator(f"[data-testid=compare-card][data-model='{E5}']")
        assert await working.get_attribute("data-state") == "done"
        assert await page.locator("[data-testid=compare-matrix]").count() >= 1
        await page.screenshot(path=tmp_path / "compare-failure.png", full_page=True)

        await page.click("[data-testid=tab-embed]")
        await embed_batch(page, E5, BATCH)
        await page.wait_for_selector("[data-testid=embed-result]:not([hidden])")
        assert await error_box.is_hidden()
        assert len(await heatmap_texts(page, "#embed-heatmap")) == 3


async def test_api_key_field_makes_requests_work(
    browser: Browser, playground_gateway: Callable[..., Any], tmp_path: Path
) -> None:
    async with (
        playground_gateway(api_keys=[API_KEY]) as base_url,
        open_playground(browser, base_url) as page,
    ):
        key_box = page.locator("[data-testid=api-key-box]")
        assert await key_box.is_visible()
        page_error = page.locator("[data-testid=page-error]")
        await page_error.wait_for(state="visible")
        assert "API key" in (await page_error.text_content() or "")
        assert await page.locator("#embed-model option").count() == 0

        await page.fill("[data-testid=api-key]", "sk-wrong")
        await page.click("[data-testid=api-key-apply]")
        # a selector, not wait_for_function: that polls with eval, which the page's CSP refuses
        await page.wait_for_selector("[data-testid=page-error]:has-text('refused')")

        await page.fill("[data-testid=api-key]", API_KEY)
        await page.click("[data-testid=api-key-apply]")
        await wait_for_models(page)
        await page_error.wait_for(state="hidden")
        await embed_batch(page, E5, BATCH)
        await page.wait_for_selector("[data-testid=embed-result]:not([hidden])")
        assert len(await heatmap_texts(page, "#embed-heatmap")) == 3
        stored = await page.evaluate(
            "sessionStorage.getItem('embedding-gateway.api-key')")
        assert stored == API_KEY
        await page.screenshot(path=tmp_path / "api-key.png", full_page=True)


def managed_fake_tei() -> dict[str, Any]:
    """A managed backend whose two models are served one at a time by a fake TEI process."""
    command = [sys.executable, "-m", "tests.fakes.tei", "--port", "{port}", "--model-id", "{model}"]
    return {"local": {
        "kind": "tei", "base_url": f"http://127.0.0.1:{free_port()}",
        "managed": {"runtime": "process", "command": command, "start_timeout": 60,
                    "idle_timeout": 0},
        "models": {"fake/minilm": {"aliases": ["minilm"]},
                   "fake/bge-small": {"aliases": ["bge-small"]}},
    }}


async def test_compare_runs_models_of_one_managed_backend_one_after_another(
    browser: Browser, playground_gateway: Callable[..., Any], tmp_path: Path
) -> None:
    texts = BATCH
    async with (
        playground_gateway(managed=managed_fake_tei()) as base_url,
        open_playground(browser, base_url) as page,
    ):
        events: list[tuple[str, str]] = []

        def record(kind: str) -> Callable[[Any], None]:
            def on_request(request: Any) -> None:
                if request.url.endswith("/v1/embeddings"):
                    events.append((kind, request.post_data_json["model"]))
            return on_request

        page.on("request", record("start"))
        page.on("requestfinished", record("end"))
        page.on("requestfailed", record("end"))
        await wait_for_models(page)
        await choose_compare_models(page, ["bge-m3", "fake/minilm", "fake/bge-small"])
        serial = page.locator("[data-testid=compare-plan-serial]")
        assert await serial.count() == 1
        note = await serial.text_content() or ""
        assert "minilm" in note and "bge-small" in note and "one after another" in note
        await page.fill("[data-testid=compare-text]", "\n".join(texts))
        await page.click("[data-testid=compare-run]")
        await page.wait_for_selector("[data-testid=compare-progress][data-done=true]")

        states = await page.eval_on_selector_all(
            "[data-testid=compare-card]",
            "(cs) => cs.map((c) => [c.dataset.model, c.dataset.state])")
        assert sorted(states) == [["bge-m3", "done"], ["fake/bge-small", "done"],
                                  ["fake/minilm", "done"]]
        first, second = sorted(("fake/minilm", "fake/bge-small"),
                               key=lambda m: events.index(("start", m)))
        assert events.index(("end", first)) < events.index(("start", second))
        assert await page.locator("[data-testid=compare-matrix]").count() == 3
        values = await page.locator("[data-testid=rank-agreement-value]").all_text_contents()
        assert len(values) == 3 and all(-1 <= float(v) <= 1 for v in values)
        await page.screenshot(path=tmp_path / "compare-managed.png", full_page=True)


async def test_a_model_and_its_aliases_are_one_choice(
    browser: Browser, playground_gateway: Callable[..., Any]
) -> None:
    reranker = "BAAI/bge-reranker-base"
    async with (
        serve_fake(create_tei_app(reranker, model_type="reranker")) as rerank_url,
        playground_gateway(managed={"rerank": {
            "kind": "tei", "base_url": rerank_url,
            "models": {reranker: {"aliases": ["reranker"]}}}}) as base_url,
        open_playground(browser, base_url) as page,
    ):
        await wait_for_models(page)
        await page.wait_for_selector(f"#rerank-model option[value='{reranker}']",
                                     state="attached")
        rerankers = await page.eval_on_selector_all(
            "#rerank-model option", "(os) => os.map((o) => [o.value, o.textContent])")
        assert [value for value, _ in rerankers] == [reranker]
        assert "(reranker)" in rerankers[0][1]
        options = await page.eval_on_selector_all(
            "#embed-model option", "(os) => os.map((o) => [o.value, o.textContent])")
        assert sorted(value for value, _ in options) == sorted(
            ["bge-m3", E5, XSS_NAME, BROKEN])
        assert "(e5-small)" in dict(options)[E5]
        await page.select_option("[data-testid=embed-model]", "bge-m3")
        assert await page.locator("[data-testid=model-aliases]").count() == 0
        await page.select_option("[data-testid=embed-model]", E5)
        assert await page.text_content("[data-testid=model-aliases]") == "also e5-small"

        await page.click("[data-testid=tab-compare]")
        boxes = await page.eval_on_selector_all(
            "[data-testid=compare-model]", "(bs) => bs.map((b) => b.value)")
        assert sorted(boxes) == sorted(["bge-m3", E5, XSS_NAME, BROKEN])
        row = page.locator("label.model-row", has=page.locator(f"[value='{E5}']"))
        assert await row.locator("[data-testid=compare-model-aliases]").text_content() == (
            "also e5-small")


async def label_fits(page: Page, selector: str) -> list[bool]:
    """For each element: is its whole text shown (nothing cut off by its width)?"""
    return await page.eval_on_selector_all(
        selector, "(es) => es.map((e) => e.scrollWidth <= e.clientWidth)")


async def test_heatmap_labels_use_the_width_they_have_and_hold_the_full_text(
    browser: Browser, playground_gateway: Callable[..., Any]
) -> None:
    long_text = ("A sentence far too long for any label:" + " and it goes on" * 20)
    texts = [*BATCH, long_text]
    async with playground_gateway() as base_url, open_playground(browser, base_url) as page:
        await wait_for_models(page)
        await embed_batch(page, "bge-m3", texts)
        await page.wait_for_selector("[data-testid=embed-result]:not([hidden])")
        rows = "#embed-heatmap [data-testid=heatmap-row]"
        shown = await page.eval_on_selector_all(
            rows, "(hs) => hs.map((h) => [h.textContent, h.title])")
        flat = [" ".join(text.split()) for text in texts]
        assert shown == [[f"{i + 1}. {flat[i]}", texts[i]] for i in range(4)]
        assert await label_fits(page, rows) == [True, True, True, False]
        columns = await page.eval_on_selector_all(
            "#embed-heatmap [data-testid=heatmap-col]", "(hs) => hs.map((h) => h.title)")
        assert columns == texts
        widths = await page.eval_on_selector_all(
            "#embed-heatmap [data-testid=heatmap-col]", "(hs) => hs.map((h) => h.clientWidth)")
        assert min(widths) > 100  # room at 1280 px is used, not a fixed 8 characters


async def fits_in_viewport(page: Page) -> None:
    """No horizontal page overflow, and every heatmap shown whole inside its box."""
    assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE_WIDTH
    clipped = await page.eval_on_selector_all("[data-testid=heatmap]", """(ts) => ts.filter((t) => {
        const table = t.getBoundingClientRect(), wrap = t.parentElement.getBoundingClientRect();
        return table.right > Math.min(wrap.right, innerWidth) + 0.5 || table.left < wrap.left;
    }).length""")
    assert clipped == 0


PHONE_WIDTH = 375


async def test_the_page_is_usable_at_phone_width(
    browser: Browser, playground_gateway: Callable[..., Any], tmp_path: Path
) -> None:
    texts = [*BATCH, "Stock markets fell sharply today in a broad sell-off."]
    reranker = "BAAI/bge-reranker-base"
    async with (
        serve_fake(create_tei_app(reranker, model_type="reranker")) as rerank_url,
        playground_gateway(api_keys=[API_KEY], managed={"rerank": {
            "kind": "tei", "base_url": rerank_url, "models": {reranker: {}}}}) as base_url,
        open_playground(browser, base_url, width=PHONE_WIDTH) as page,
    ):
        await page.fill("[data-testid=api-key]", API_KEY)
        await page.click("[data-testid=api-key-apply]")
        await wait_for_models(page)
        await embed_batch(page, E5, texts)
        await page.wait_for_selector("[data-testid=embed-result]:not([hidden])")
        assert len(await heatmap_texts(page, "#embed-heatmap")) == 4
        await fits_in_viewport(page)
        await page.screenshot(path=tmp_path / "embed-phone.png", full_page=True)

        await choose_compare_models(page, ["bge-m3", E5])
        await page.fill("[data-testid=compare-text]", "\n".join(texts))
        await page.click("[data-testid=compare-run]")
        await page.wait_for_selector("[data-testid=compare-progress][data-done=true]")
        assert await page.locator("[data-testid=compare-matrix]").count() == 2
        await fits_in_viewport(page)
        await page.screenshot(path=tmp_path / "compare-phone.png", full_page=True)

        await page.click("[data-testid=tab-rerank]")
        await page.wait_for_selector(f"#rerank-model option[value='{reranker}']",
                                     state="attached")
        await page.fill("[data-testid=rerank-query]", "weather in Seoul")
        await page.fill("[data-testid=rerank-documents]", "\n".join(texts))
        await page.click("[data-testid=rerank-run]")
        await page.wait_for_selector("[data-testid=rerank-row]")
        await fits_in_viewport(page)
