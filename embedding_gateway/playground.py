"""The ``/playground`` page: one self-contained template (inline CSS and JS, no CDN).

The page only renders static context here; models, states and health it fetches itself from
``/v1/models`` and ``/health``, so what it shows is always what the API answers.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .api import expect_continue
from .pages import render_page

DEFAULT_TITLE = "Embedding Gateway"

PLAYGROUND_CONTEXT = web.AppKey("playground_context", dict)
"""``{"auth_required": bool, "title"?: str}``, set by the app factory."""


async def playground(request: web.Request) -> web.Response:
    context: dict[str, Any] = request.app.get(PLAYGROUND_CONTEXT, {})
    page = {
        "title": str(context.get("title") or DEFAULT_TITLE),
        "auth_required": bool(context.get("auth_required", False)),
    }
    return render_page(request, "playground.html", {"page": page})


def setup_playground(app: web.Application) -> None:
    app.router.add_get("/playground", playground, name="playground",
                       expect_handler=expect_continue)
