"""``create_app``: routes, middlewares, the playground and resource lifetimes; starts nothing.

Resources live in ``cleanup_ctx``: the upstream HTTP client, then the gateway (upstreams,
their background probes and managed instances). They start when the app starts and are
released in reverse order when it stops.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from . import api
from .config import GatewayConfig
from .http_client import HttpClient
from .metrics import Metrics
from .middlewares import serve, stamp_request_id
from .pages import setup_pages, setup_templates
from .state import GATEWAY, Gateway, RuntimeFactory, default_runtime


def create_app(
    config: GatewayConfig, *, runtime_factory: RuntimeFactory | None = None
) -> web.Application:
    app = web.Application(
        middlewares=[serve],
        client_max_size=config.server.limits.max_body_bytes,
    )

    gateway = Gateway(
        config=config, metrics=Metrics(), runtime_factory=runtime_factory or default_runtime
    )
    app[GATEWAY] = gateway
    app.on_response_prepare.append(stamp_request_id)

    async def gateway_ctx(app: web.Application) -> AsyncIterator[None]:
        client = HttpClient()
        try:
            await gateway.start(client)
            try:
                yield
            finally:
                await gateway.close()
        finally:
            await client.close()

    app.cleanup_ctx.append(gateway_ctx)
    api.add_routes(app, debug=config.server.debug_endpoints)
    setup_templates(app)
    setup_pages(app)
    if config.server.playground:
        from .playground import PLAYGROUND_CONTEXT, setup_playground

        app[PLAYGROUND_CONTEXT] = {"auth_required": bool(config.server.api_keys)}
        setup_playground(app)
    return app
