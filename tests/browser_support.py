"""Real headless Chromium (Debian's ``/usr/bin/chromium``) driven by Playwright's async API.

No browser is ever downloaded: without ``/usr/bin/chromium`` the browser tests skip, unless
``EG_REQUIRE_BROWSER=1`` makes that a failure (CI sets it where chromium is installed).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_chromium() -> None:
    """Skip the calling test when chromium is missing (fail instead with EG_REQUIRE_BROWSER=1)."""
    if CHROMIUM.exists():
        return
    message = f"{CHROMIUM} is not installed (apt-get install chromium)"
    if os.environ.get("EG_REQUIRE_BROWSER") == "1":
        pytest.fail(message)
    pytest.skip(message)


@contextlib.asynccontextmanager
async def launch_chromium() -> AsyncIterator[Browser]:
    """Yield a Playwright ``Browser`` on Debian's chromium; closes it and the driver after."""
    require_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()
