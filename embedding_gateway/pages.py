"""The gateway's own pages and its API description: ``/`` (an index of what it serves),
``/docs`` (the API documentation) and ``/openapi.json``.

Every page is one self-contained template (inline CSS and JS, no CDN), rendered with a fresh
script nonce and a Content-Security-Policy that lets only that script run.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
import orjson
from aiohttp import web

from .api import expect_continue
from .openapi import build_document, package_version
from .state import GATEWAY

# a link to the repository's top-level templates/, copied into the package when it is built
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


def render_page(request: web.Request, template: str, context: dict[str, Any]) -> web.Response:
    """``template`` with ``context`` and a ``nonce`` for its one script, under a CSP that
    refuses any other script: an injected handler would not run even if some text ever
    reached the DOM as markup."""
    nonce = secrets.token_urlsafe(16)
    response = aiohttp_jinja2.render_template(template, request, {**context, "nonce": nonce})
    response.headers["Content-Security-Policy"] = "; ".join([
        "default-src 'none'",
        f"script-src 'nonce-{nonce}'",
        "style-src 'unsafe-inline'",
        "connect-src 'self'",
        "img-src 'self' data: blob:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ])
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


async def index(request: web.Request) -> web.Response:
    server = request.app[GATEWAY].config.server
    return render_page(request, "index.html", {
        "version": package_version(),
        "base_url": f"{request.scheme}://{request.host}",
        "playground": server.playground,
        "auth_required": bool(server.api_keys),
    })


def document(request: web.Request) -> dict[str, Any]:
    """Built for each request: keys and limits can change with a reload, routes cannot."""
    served = {route.resource.canonical for route in request.app.router.routes()
              if route.resource is not None}
    return build_document(request.app[GATEWAY].config, served)


async def docs(request: web.Request) -> web.Response:
    return render_page(request, "docs.html", {"document": document(request)})


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps(document(request)), content_type="application/json")


def setup_templates(app: web.Application) -> None:
    env = aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
                               autoescape=True)
    env.policies["json.dumps_kwargs"] = {"sort_keys": False}  # the document reads in its order


def setup_pages(app: web.Application) -> None:
    add_get = app.router.add_get
    add_get("/", index, expect_handler=expect_continue)
    add_get("/docs", docs, expect_handler=expect_continue)
    add_get("/openapi.json", openapi_json, expect_handler=expect_continue)
