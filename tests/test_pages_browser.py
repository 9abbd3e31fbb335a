"""``/`` and ``/docs`` in real headless Chromium, in front of a real gateway and a fake TEI on
loopback: the pages load nothing from anywhere else and run only their own script."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page

from tests.browser_support import launch_chromium
from tests.conftest import run_gateway
from tests.fakes import serve_fake
from tests.fakes.tei import create_tei_app

pytestmark = pytest.mark.browser

KEY = "sk-pages-test"
WAIT_MS = 20_000


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with launch_chromium() as chromium:
        yield chromium


@contextlib.asynccontextmanager
async def gateway(*, playground: bool) -> AsyncIterator[str]:
    async with serve_fake(create_tei_app("intfloat/multilingual-e5-small", dims=384)) as tei:
        config = {"server": {"api_keys": [KEY], "playground": playground},
                  "backends": {"tei": {"kind": "tei", "base_url": tei, "models": {
                      "intfloat/multilingual-e5-small": {"aliases": ["e5-small"]}}}}}
        async with run_gateway(config) as base_url:
            yield base_url


@contextlib.asynccontextmanager
async def open_page(browser: Browser, url: str, width: int = 1280) -> AsyncIterator[Page]:
    """A page at ``url``; fails the test on a script error, a console error (a refused
    script or style) or any request that leaves the gateway."""
    context = await browser.new_context(viewport={"width": width, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    problems: list[str] = []
    origin = url.split("/", 3)[:3]
    page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    page.on("console", lambda message: message.type == "error"
            and problems.append(f"console: {message.text}"))
    page.on("request", lambda request: request.url.split("/", 3)[:3] != origin
            and problems.append(f"left the gateway: {request.url}"))
    try:
        response = await page.goto(url)
        assert response is not None and response.status == 200
        yield page
        assert problems == []
    finally:
        await context.close()


async def document_operations(base_url: str) -> list[list[str]]:
    async with aiohttp.ClientSession() as session, session.get(
            f"{base_url}/openapi.json") as response:
        document: dict[str, Any] = await response.json()
    return [[method.upper(), path] for path, item in document["paths"].items() for method in item]


async def test_docs_page_shows_every_operation_of_the_document(browser: Browser) -> None:
    async with gateway(playground=True) as base_url, open_page(
            browser, f"{base_url}/docs") as page:
        await page.wait_for_selector("html[data-ready=true]")
        shown = await page.eval_on_selector_all(
            "[data-testid=operation]", "(os) => os.map((o) => [o.dataset.method, o.dataset.path])")
        assert shown == await document_operations(base_url)
        assert ["GET", "/v1/models/{model}"] in shown

        embeddings = page.locator("[data-testid=operation][data-path='/v1/embeddings']")
        assert await embeddings.locator("[data-testid=operation-auth]").text_content() == (
            "needs Authorization: Bearer <key>")
        statuses = await embeddings.locator("[data-testid=response]").evaluate_all(
            "(rs) => rs.map((r) => r.dataset.status)")
        assert {"200", "400", "401", "404", "413", "429", "502", "503", "504"} <= set(statuses)
        request = page.locator("[data-testid=schema][data-name=EmbeddingRequest]")
        for name in ("model", "input", "encoding_format", "dimensions"):
            assert await request.locator(f"[data-testid=property][data-name={name}]").count() == 1
        assert await request.locator("[data-testid=property][data-name=model] .req").count() == 1
        docs = page.locator("[data-testid=operation][data-path='/docs'] "
                            "[data-testid=operation-auth]")
        assert await docs.text_content() == "no key needed"

        await page.click("a[href='#schema-Error']")
        assert await page.locator("#schema-Error").is_visible()


async def test_index_links_what_the_gateway_serves(browser: Browser) -> None:
    async with gateway(playground=True) as base_url, open_page(browser, f"{base_url}/") as page:
        links = await page.eval_on_selector_all(
            "[data-testid=index-links] a", "(as) => as.map((a) => a.getAttribute('href'))")
        assert links == ["/playground", "/docs", "/openapi.json", "/health", "/metrics"]
        async with aiohttp.ClientSession() as session:
            for link in links:
                headers = {"Authorization": f"Bearer {KEY}"}
                async with session.get(base_url + link, headers=headers) as response:
                    assert response.status in (200, 503), link  # /health: 503 while degraded
        await page.click("[data-testid=link-docs]")
        await page.wait_for_selector("html[data-ready=true]")
        assert page.url == f"{base_url}/docs"

    async with gateway(playground=False) as base_url, open_page(browser, f"{base_url}/") as page:
        assert await page.locator("[data-testid=link-playground]").count() == 0
        assert await page.locator("[data-testid=link-docs]").count() == 1
