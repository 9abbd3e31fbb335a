"""``embedding-gateway pull``: every model of every Ollama backend, through Ollama's
``POST /api/pull`` (NDJSON progress lines, then ``{"status": "success"}``; a failure is an
``{"error": ...}`` line, or an error status with that body when nothing was streamed yet)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from ..backends.base import served_name
from ..config import GatewayConfig
from .progress import ProgressLine

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 600.0  # between two progress lines; a stalled registry download ends here


@dataclass(frozen=True)
class PullResult:
    backend: str
    model: str
    error: str | None  # None: pulled (or already present: Ollama then only verifies)


def pull_targets(config: GatewayConfig) -> list[tuple[str, str, str, str | None]]:
    """(backend, name Ollama knows, base_url, api_key) for every configured Ollama model."""
    return [(name, served_name(model, options), backend.base_url, backend.api_key)
            for name, backend in config.backends.items() if backend.kind == "ollama"
            for model, options in backend.models.items()]


def progress_text(model: str, line: dict[str, Any]) -> str:
    status = str(line.get("status", ""))
    total, completed = line.get("total"), line.get("completed") or 0
    if isinstance(total, int) and total > 0:
        return (f"{model}: {status} {100 * completed / total:5.1f}% "
                f"({completed / 1e6:,.0f}/{total / 1e6:,.0f} MB)")
    return f"{model}: {status}"


async def pull_one(session: aiohttp.ClientSession, base_url: str, api_key: str | None,
                   model: str, progress: ProgressLine) -> str | None:
    """Pull ``model``; the error message, or None once Ollama says success."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/api/pull"
    succeeded = False
    try:
        async with session.post(url, json={"model": model, "stream": True},
                                headers=headers) as response:
            if response.status != 200:
                return f"HTTP {response.status}: {error_of(await response.read())}"
            async for raw in response.content:
                if not raw.strip():
                    continue
                try:
                    line = json.loads(raw)
                except ValueError:
                    return f"not Ollama's progress stream: {raw[:200]!r}"
                if not isinstance(line, dict):
                    return f"not Ollama's progress stream: {raw[:200]!r}"
                if "error" in line:
                    return str(line["error"])
                if line.get("status") == "success":
                    succeeded = True  # Ollama ends the stream here; read it to its end
                    continue
                total = line.get("total")
                progress.show(progress_text(model, line), stage=f"{model} {line.get('status')}",
                              force=total is not None and line.get("completed") == total)
    except TimeoutError:
        return f"no progress from {base_url} for {READ_TIMEOUT:g} s"
    except aiohttp.ClientError as exc:
        return f"{base_url}: {exc or type(exc).__name__}"
    return None if succeeded else "the stream ended before Ollama reported success"


def error_of(body: bytes) -> str:
    try:
        payload = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(payload, dict) and "error" in payload:
        return str(payload["error"])
    return body[:200].decode("utf-8", "replace")


async def pull_all(config: GatewayConfig) -> list[PullResult]:
    progress = ProgressLine()
    results = []
    timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT,
                                    sock_read=READ_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for backend, model, base_url, api_key in pull_targets(config):
            progress.show(f"{model}: pulling from {base_url}", force=True)
            error = await pull_one(session, base_url, api_key, model, progress)
            progress.done(f"{model}: {'pulled' if error is None else 'failed: ' + error}")
            results.append(PullResult(backend, model, error))
    return results


def summary(results: list[PullResult]) -> tuple[str, int]:
    """The summary lines and the exit status: 0 when every model was pulled."""
    if not results:
        return "no Ollama backends are configured: nothing to pull", 0
    failed = [r for r in results if r.error is not None]
    lines = [f"{r.backend}  {r.model}  {'ok' if r.error is None else 'FAILED: ' + r.error}"
             for r in results]
    lines.append(f"{len(results) - len(failed)} pulled, {len(failed)} failed")
    return "\n".join(lines), 1 if failed else 0
