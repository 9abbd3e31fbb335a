"""``embedding-gateway models``: every configured model and its state, asked of the running
gateway (``GET /v1/models``) when one answers at the configured address, else read from the
file alone (state ``not running``)."""

from __future__ import annotations

from typing import Any

import aiohttp

from ..config import GatewayConfig

ASK_TIMEOUT = 3.0
COLUMNS = ("model", "backend", "kind", "mode", "state", "healthy", "reason")


def gateway_url(config: GatewayConfig) -> str:
    """Where this config's gateway listens, as a client on this host reaches it."""
    host = config.server.host
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.server.port}"


async def ask_gateway(url: str, api_key: str | None) -> list[dict[str, Any]] | str:
    """The gateway's model list, or why it could not be had."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=ASK_TIMEOUT)
                                         ) as session, \
                session.get(url + "/v1/models", headers=headers) as response:
            if response.status != 200:
                return f"{url} answered {response.status}"
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return f"no gateway answers at {url} ({exc.__class__.__name__})"
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        return f"{url}/v1/models is not a gateway's model list"
    return [entry for entry in data if isinstance(entry, dict)]


async def answers(url: str) -> bool:
    """Whether any HTTP server answers at ``url`` (a gateway with keys answers 401)."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=ASK_TIMEOUT)
                                         ) as session, session.get(url + "/health"):
            return True
    except (aiohttp.ClientError, TimeoutError):
        return False


def from_file(config: GatewayConfig) -> list[dict[str, str]]:
    rows = []
    for backend_name, backend in config.backends.items():
        for model, options in backend.models.items():
            for name in (model, *options.aliases):
                rows.append({
                    "model": name if name == model else f"{name} -> {model}",
                    "backend": backend_name,
                    "kind": backend.kind,
                    "mode": "managed" if backend.managed else "remote",
                    "state": "not running",
                    "healthy": "-",
                    "reason": "",
                })
    return rows


def from_gateway(entries: list[dict[str, Any]]) -> list[dict[str, str]]:
    rows = []
    for entry in entries:
        alias_of = entry.get("alias_of")
        rows.append({
            "model": f"{entry.get('id')} -> {alias_of}" if alias_of else str(entry.get("id")),
            "backend": str(entry.get("backend", "")),
            "kind": str(entry.get("kind", "")),
            "mode": "managed" if entry.get("managed") else "remote",
            "state": str(entry.get("state", "")),
            "healthy": {True: "yes", False: "no"}.get(entry.get("healthy"), "-"),
            "reason": str(entry.get("reason") or ""),
        })
    return rows


def table(rows: list[dict[str, str]]) -> str:
    widths = {c: max([len(c), *(len(r[c]) for r in rows)]) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS).rstrip()]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in COLUMNS).rstrip() for r in rows]
    return "\n".join(lines)


async def list_models(config: GatewayConfig, url: str | None) -> tuple[str, int]:
    """The listing and the exit status: 0 when read from a gateway where every model is
    healthy or from the file alone, 1 when the gateway reports an unhealthy model."""
    url = (url or gateway_url(config)).rstrip("/")
    key = config.server.api_keys[0] if config.server.api_keys else None
    answer = await ask_gateway(url, key)
    if isinstance(answer, str):
        rows = from_file(config)
        return f"{table(rows)}\n({answer}: the state is not known, read from the file)", 0
    rows = from_gateway(answer)
    unhealthy = sum(r["healthy"] == "no" for r in rows)
    note = f"(from the gateway at {url}: {len(rows)} models and aliases, {unhealthy} unhealthy)"
    return f"{table(rows)}\n{note}", 1 if unhealthy else 0
