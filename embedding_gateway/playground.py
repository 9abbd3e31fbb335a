"""The ``/playground`` page: one self-contained template (inline CSS and JS, no CDN).

The page only renders static context here; models, states and health it fetches itself from
``/v1/models`` and ``/health``, so what it shows is always what the API answers.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web

from .api import expect_continue

# a link to the repository's top-level templates/, copied into the package when it is built
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
DEFAULT_TITLE = "Embedding Gateway"

PLAYGROUND_CONTEXT = web.AppKey("playground_context", dict)
"""``{"auth_required": bool, "title"?: str}``, set by the app factory."""


async def playground(request: web.Request) -> web.Response:
    context: dict[str, Any] = request.app.get(PLAYGROUND_CONTEXT, {})
    page = {
        "title": str(context.get("title") or DEFAULT_TITLE),
        "auth_required": bool(context.get("auth_required", False)),
    }
    nonce = secrets.token_urlsafe(16)
    response = aiohttp_jinja2.render_template(
        "playground.html", request, {"page": page, "nonce": nonce}
    )
    response.headers["Content-Security-Policy"] = _csp(nonce)
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _csp(nonce: str) -> str:
    """Only the page's own nonce-tagged script runs: an injected handler would be refused even
    if some text ever reached the DOM as markup."""
    return "; ".join([
        "default-src 'none'",
        f"script-src 'nonce-{nonce}'",
        "style-src 'unsafe-inline'",
        "connect-src 'self'",
        "img-src 'self' data: blob:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ])


def setup_playground(app: web.Application) -> None:
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True)
    app.router.add_get("/playground", playground, name="playground",
                       expect_handler=expect_continue)
