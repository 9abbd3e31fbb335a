#!/usr/bin/env python3
"""Benchmark any OpenAI-compatible embeddings endpoint.

Modes:
  models    per model: first (cold) request, warm p50/p95, dims, tokens; swap time between two
            managed models of the same backend
  load      concurrency x batch-size sweep: requests/s, inputs/s, p50/p95/p99, errors by status
  overhead  the same requests to the gateway and straight to its upstream, in alternating
            slices: added latency per percentile, throughput ratio, gateway CPU and RSS
  rerank    concurrency x document-count sweep of POST /v1/rerank: requests/s, documents/s,
            p50/p95/p99; every answer checked to rank each document once, highest first

Examples:
  python scripts/benchmark.py models --gateway http://127.0.0.1:8000
  python scripts/benchmark.py load --gateway http://127.0.0.1:8000 --models bge-m3 --duration 10
  python scripts/benchmark.py rerank --gateway http://127.0.0.1:8000 --documents 1,16,64,256
  python scripts/benchmark.py overhead --gateway http://127.0.0.1:8000 --models fast-1024 \\
      --upstream http://127.0.0.1:18001 --gateway-pid $(pgrep -nf 'embedding-gateway serve')
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import itertools
import os
import platform
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_report import print_report, render_html
from simulated_accelerator import text_vector

SCHEMA = "embedding-gateway-benchmark/1"
WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there one all we their been has when who will more no if "
    "out so said what up its about into than them can only other new some could time these two "
    "may then do first any my now such like our over man me even most made after also did many "
    "embedding vector model query passage search retrieval semantic gateway latency batch token"
)


# -- measurement ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    status: int | str  # HTTP status, or the exception name when no response arrived
    ms: float
    body: bytes = b""

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass
class Recorder:
    """Latencies of successful requests, errors by status, and the time spent measuring."""

    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    error_samples: dict[str, str] = field(default_factory=dict)
    inputs: int = 0
    elapsed: float = 0.0
    rows_checked: int = 0
    in_flight_at_deadline: int = 0  # requests still unanswered when the time was up
    cut_off: int = 0  # of those, the ones still unanswered after the grace period

    def add(self, outcome: Outcome, inputs: int) -> None:
        if outcome.ok:
            self.latencies.append(outcome.ms)
            self.inputs += inputs
            return
        key = str(outcome.status)
        self.errors[key] += 1
        self.error_samples.setdefault(key, error_message(outcome.body))

    def summary(self) -> dict[str, Any]:
        ok = len(self.latencies)
        elapsed = self.elapsed or 1.0
        return {
            "requests": ok + sum(self.errors.values()),
            "ok": ok,
            "inputs": self.inputs,
            "elapsed_s": round(self.elapsed, 3),
            "requests_per_s": ok / elapsed if ok else 0.0,
            "inputs_per_s": self.inputs / elapsed if ok else 0.0,
            "latency_ms": latency_stats(self.latencies),
            "errors": dict(self.errors),
            "rows_checked": self.rows_checked,
            "in_flight_at_deadline": self.in_flight_at_deadline,
            "cut_off": self.cut_off,
            "error_samples": self.error_samples,
        }


def latency_stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return dict.fromkeys(("p50", "p95", "p99", "mean", "min", "max"))
    array = np.asarray(values)
    p50, p95, p99 = np.percentile(array, [50, 95, 99])
    return {
        "p50": float(p50),
        "p95": float(p95),
        "p99": float(p99),
        "mean": float(array.mean()),
        "min": float(array.min()),
        "max": float(array.max()),
    }


def error_message(body: bytes) -> str:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(payload, dict):
        error = payload.get("error", payload)
        if isinstance(error, dict):
            return str(error.get("message", error))[:200]
        return str(error)[:200]
    return str(payload)[:200]


def describe(body: bytes) -> dict[str, Any]:
    """Dims, item count and prompt tokens of a successful response."""
    payload = orjson.loads(body)
    data = payload.get("data") or []
    dims = None
    if data:
        embedding = data[0].get("embedding")
        dims = (
            len(base64.b64decode(embedding)) // 4 if isinstance(embedding, str) else len(embedding)
        )
    usage = payload.get("usage") or {}
    return {"items": len(data), "dims": dims, "prompt_tokens": usage.get("prompt_tokens")}


class Texts:
    """Inputs, cheap to produce: distinct ones (a counter prefix defeats response caches),
    and with ``repeat`` > 0 that fraction of them drawn from ``repeat_pool`` texts that recur
    (re-indexing, chunk overlap, repeated queries), sent once beforehand by ``warm_repeats``."""

    def __init__(self, words: int, seed: int, repeat: float = 0.0,
                 repeat_pool: int = 1024) -> None:
        rng = random.Random(seed)
        vocabulary = WORDS.split()
        self.pool = [" ".join(rng.choices(vocabulary, k=words)) for _ in range(1024)]
        self.counter = itertools.count()
        self.repeat = repeat
        self.repeated = [f"again {n} {self.pool[n % 1024]}" for n in range(repeat_pool)]
        self.rng = random.Random(seed + 1)

    def batch(self, size: int) -> list[str]:
        if not self.repeat:
            return [f"{n} {self.pool[n % 1024]}" for n in itertools.islice(self.counter, size)]
        return [self.rng.choice(self.repeated) if self.rng.random() < self.repeat
                else f"{n} {self.pool[n % 1024]}" for n in itertools.islice(self.counter, size)]


async def warm_repeats(send: Send, texts: Texts, chunk: int = 256) -> int:
    """Send every recurring text once, so that later they are repeats; returns the count."""
    if not texts.repeat:
        return 0
    for start in range(0, len(texts.repeated), chunk):
        await send(texts.repeated[start:start + chunk])
    return len(texts.repeated)


class Endpoint:
    """One OpenAI-compatible API base (``http://host:port`` or ``…/v1``) and a model on it."""

    def __init__(
        self, session: aiohttp.ClientSession, base: str, api_key: str | None, encoding: str,
        cache_control: str | None = None,
    ) -> None:
        base = base.rstrip("/")
        self.api = base if base.endswith("/v1") else base + "/v1"
        self.session = session
        self.encoding = encoding
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        if cache_control:
            self.headers["Cache-Control"] = cache_control

    async def models(self) -> list[dict[str, Any]]:
        try:
            async with self.session.get(self.api + "/models", headers=self.headers) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SystemExit(f"GET {self.api}/models: {exc or type(exc).__name__}") from None
        if status != 200:
            raise SystemExit(f"GET {self.api}/models: {status} {error_message(body)}")
        return [entry for entry in orjson.loads(body).get("data", []) if "id" in entry]

    async def _post(self, path: str, payload: dict[str, Any]) -> Outcome:
        data = orjson.dumps(payload)
        start = time.perf_counter()
        try:
            async with self.session.post(self.api + path, data=data,
                                         headers=self.headers) as resp:
                body = await resp.read()
                status: int | str = resp.status
        except TimeoutError:
            status, body = "timeout", b""
        except aiohttp.ClientError as exc:
            status, body = type(exc).__name__, str(exc).encode()
        return Outcome(status, (time.perf_counter() - start) * 1000, body)

    async def embed(self, model: str, inputs: list[str]) -> Outcome:
        return await self._post("/embeddings", {"model": model, "input": inputs,
                                                "encoding_format": self.encoding})

    async def rerank(self, model: str, documents: list[str]) -> Outcome:
        """One rerank of ``documents`` against a fixed query; an answer that does not rank
        every document exactly once, highest score first, is an error (``bad_ranking``)."""
        outcome = await self._post("/rerank", {"model": model, "query": RERANK_QUERY,
                                               "documents": documents})
        if outcome.ok and not is_ranking(outcome.body, len(documents)):
            outcome.status = "bad_ranking"
        return outcome


RERANK_QUERY = "which passage is about semantic search and retrieval latency"


def is_ranking(body: bytes, count: int) -> bool:
    try:
        results = orjson.loads(body)["results"]
        indices = [item["index"] for item in results]
        scores = [item["relevance_score"] for item in results]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return False
    return sorted(indices) == list(range(count)) and scores == sorted(scores, reverse=True)


Send = Callable[[list[str]], Awaitable[Outcome]]


def wrong_rows(body: bytes, inputs: list[str]) -> int:
    """Rows of a response that are not the vector of their own input, as the simulated
    accelerator (``fast_upstream.py --accelerator``) makes it: every row of every response
    is checked, so a row given to the wrong client, or out of order, is counted."""
    data = orjson.loads(body).get("data") or []
    if len(data) != len(inputs):
        return len(inputs)
    wrong = 0
    for item, text in zip(sorted(data, key=lambda d: d["index"]), inputs, strict=True):
        raw = item["embedding"]
        row = (np.frombuffer(base64.b64decode(raw), "<f4") if isinstance(raw, str)
               else np.asarray(raw, np.float32))
        if not np.allclose(row, text_vector(text, len(row)), atol=1e-5):
            wrong += 1
    return wrong


async def closed_loop(
    send: Send,
    texts: Texts,
    concurrency: int,
    batch: int,
    seconds: float,
    recorder: Recorder,
    *,
    grace: float,
    verify: bool = False,
) -> bytes | None:
    """``concurrency`` workers send back to back until ``seconds`` pass. Requests in flight
    then get ``grace`` seconds more to finish (and are measured); those still unanswered are
    cancelled and counted as ``cut_off``, so a cell never runs longer than both together.
    With ``verify``, every row of every answer is checked (``wrong_rows``).

    Returns the body of one successful response, for a shape check.
    """
    deadline = time.perf_counter() + seconds
    sample: list[bytes] = []

    async def worker() -> None:
        while time.perf_counter() < deadline:
            inputs = texts.batch(batch)
            outcome = await send(inputs)
            recorder.add(outcome, batch)
            if verify and outcome.ok:
                recorder.rows_checked += batch
                wrong = wrong_rows(outcome.body, inputs)
                if wrong:
                    recorder.errors["wrong_rows"] += wrong
            if outcome.ok and not sample:
                sample.append(outcome.body)

    start = time.perf_counter()
    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        _, late = await asyncio.wait(workers, timeout=max(0.0, deadline - time.perf_counter()))
        recorder.in_flight_at_deadline += len(late)
        if late:
            _, late = await asyncio.wait(late, timeout=grace)
        recorder.cut_off += len(late)
    finally:  # cut off, or the whole run interrupted
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        recorder.elapsed += time.perf_counter() - start
    for task in workers:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    return sample[0] if sample else None


# -- gateway process (Linux /proc) ----------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_text(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_text()
    except FileNotFoundError:
        raise SystemExit(f"gateway process {pid} is gone") from None


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (fields 14 and 15 of /proc/PID/stat)."""
    raw = proc_text(pid, "stat")
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    for line in proc_text(pid, "status").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssSampler:
    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = rss_mb(pid)

    async def run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mb(self.pid))
            await asyncio.sleep(self.interval)


# -- progress -------------------------------------------------------------------------------------


class Progress:
    """One redrawn line on a terminal; a line per finished stage otherwise."""

    width = 24

    def __init__(self, enabled: bool, stages: int) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.stages = stages
        self.index = 0
        self.label = ""
        self.total = 1.0
        self.done = 0.0
        self.started: float | None = None  # set for timed stages

    def start(self, label: str, total: float, *, timed: bool = False) -> None:
        self.index += 1
        self.label, self.total, self.done = label, max(total, 1e-9), 0.0
        self.started = time.perf_counter() if timed else None
        self.draw()

    def advance(self, amount: float = 1.0) -> None:
        self.done += amount
        self.draw()

    def end(self, summary: str) -> None:
        if not self.enabled:
            return
        line = f"[{self.index}/{self.stages}] {self.label}: {summary}"
        sys.stderr.write(("\r\x1b[2K" if self.tty else "") + line + "\n")
        sys.stderr.flush()

    def draw(self) -> None:
        if not (self.enabled and self.tty):
            return
        if self.started is not None:
            self.done = min(time.perf_counter() - self.started, self.total)
        filled = int(self.width * min(self.done / self.total, 1.0))
        bar = "#" * filled + "-" * (self.width - filled)
        timed = self.started is not None
        count = f"{self.done:.1f}/{self.total:g}s" if timed else f"{self.done:.0f}/{self.total:.0f}"
        sys.stderr.write(f"\r\x1b[2K[{self.index}/{self.stages}] {self.label} [{bar}] {count}")
        sys.stderr.flush()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(0.2)
            self.draw()


# -- modes ----------------------------------------------------------------------------------------


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


async def pick_models(gateway: Endpoint, wanted: list[str], all_models: bool,
                      task: str = "embed") -> list[dict]:
    listed = await gateway.models()
    if wanted:
        by_id = {entry["id"]: entry for entry in listed}
        return [by_id.get(name, {"id": name}) for name in wanted]
    listed = [entry for entry in listed if not entry.get("alias_of")  # one entry a model
              and (entry.get("task") or "embed") == task]
    if not listed:
        raise SystemExit(f"{gateway.api}/models lists no models; pass --models")
    return listed if all_models else listed[:1]


async def run_models(
    args: argparse.Namespace, gateway: Endpoint, texts: Texts, results: dict[str, Any]
) -> None:
    """Fills ``results`` as each model and swap pair is done (an interrupted run keeps them)."""
    entries = await pick_models(gateway, args.models, all_models=True)
    by_backend: dict[str, list[str]] = {}
    for entry in entries:
        if entry.get("managed") and entry.get("backend"):
            by_backend.setdefault(str(entry["backend"]), []).append(entry["id"])
    swap_pairs = {backend: names[:2] for backend, names in by_backend.items() if len(names) > 1}
    progress = Progress(args.progress, len(entries) + len(swap_pairs))
    ticker = asyncio.create_task(progress.run())
    rows: list[dict[str, Any]] = results.setdefault("models", [])
    swaps: list[dict[str, Any]] = results.setdefault("swaps", [])
    try:
        await models_and_swaps(args, gateway, texts, progress, entries, swap_pairs, rows, swaps)
    finally:
        ticker.cancel()


async def models_and_swaps(
    args: argparse.Namespace,
    gateway: Endpoint,
    texts: Texts,
    progress: Progress,
    entries: list[dict],
    swap_pairs: dict[str, list[str]],
    rows: list[dict[str, Any]],
    swaps: list[dict[str, Any]],
) -> None:
    for entry in entries:
        model = entry["id"]
        progress.start(model, 1 + args.requests)
        first_errors, warm = Recorder(), Recorder()
        first = await gateway.embed(model, texts.batch(1))
        first_errors.add(first, 1)
        row: dict[str, Any] = {
            "model": model,
            "backend": entry.get("backend"),
            "managed": bool(entry.get("managed", False)),
            "cold_ms": first.ms if first.ok else None,
            "dims": None,
            "prompt_tokens": None,
        }
        if first.ok:
            shape = describe(first.body)
            row["dims"], row["prompt_tokens"] = shape["dims"], shape["prompt_tokens"]
            deadline = time.perf_counter() + args.duration
            for _ in range(args.requests):
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:  # one request in flight at the deadline gets the grace period
                    outcome = await asyncio.wait_for(gateway.embed(model, texts.batch(1)),
                                                     left + args.grace)
                except TimeoutError:
                    warm.cut_off += 1
                    break
                warm.add(outcome, 1)
                progress.advance()
        row["warm_ms"] = latency_stats(warm.latencies)
        row["warm_requests"] = len(warm.latencies)
        row["warm_cut_off"] = warm.cut_off
        row["errors"] = dict(first_errors.errors + warm.errors)
        row["error_samples"] = first_errors.error_samples | warm.error_samples
        rows.append(row)
        progress.end(
            f"cold {fmt_ms(row['cold_ms'])}, warm p50 {fmt_ms(row['warm_ms']['p50'])}"
            + (f", errors {row['errors']}" if row["errors"] else "")
        )
    for backend, (first_model, second_model) in swap_pairs.items():
        progress.start(f"swap {backend}: {first_model} <-> {second_model}", 2 * args.swaps + 1)
        await gateway.embed(first_model, texts.batch(1))
        progress.advance()
        recorder = Recorder()
        for _ in range(args.swaps):
            for model in (second_model, first_model):
                recorder.add(await gateway.embed(model, texts.batch(1)), 1)
                progress.advance()
        stats = latency_stats(recorder.latencies)
        swaps.append(
            {
                "backend": backend,
                "models": [first_model, second_model],
                "times_ms": recorder.latencies,
                "p50_ms": stats["p50"],
                "max_ms": stats["max"],
                "errors": dict(recorder.errors),
                "error_samples": recorder.error_samples,
            }
        )
        progress.end(f"swap p50 {fmt_ms(stats['p50'])}, max {fmt_ms(stats['max'])}")


def check_shape(body: bytes | None, batch: int) -> int | None:
    """Dims of a sampled response; a response with the wrong number of vectors aborts the run."""
    if body is None:
        return None
    shape = describe(body)
    if shape["items"] != batch:
        raise SystemExit(f"asked for {batch} vectors, got {shape['items']}")
    return shape["dims"]


async def run_load(
    args: argparse.Namespace, gateway: Endpoint, texts: Texts, results: dict[str, Any]
) -> None:
    """Fills ``results`` cell by cell (an interrupted run keeps the finished cells); in
    ``rerank`` mode a cell's batch is its number of documents."""
    task = "rerank" if args.mode == "rerank" else "embed"
    entries = await pick_models(gateway, args.models, all_models=False, task=task)
    cells_plan = list(itertools.product(entries, args.concurrency, args.batch))
    progress = Progress(args.progress, len(cells_plan))
    ticker = asyncio.create_task(progress.run())
    try:
        await load_cells(args, gateway, texts, progress, entries, cells_plan, results)
    finally:
        ticker.cancel()


async def load_cells(
    args: argparse.Namespace,
    gateway: Endpoint,
    texts: Texts,
    progress: Progress,
    entries: list[dict],
    cells_plan: list[tuple[dict, int, int]],
    results: dict[str, Any],
) -> None:
    warmup: dict[str, Any] = results.setdefault("warmup", {})
    cells: list[dict[str, Any]] = results.setdefault("cells", [])
    send = gateway.rerank if args.mode == "rerank" else gateway.embed
    for entry in entries:
        outcome = await send(entry["id"], texts.batch(1))
        warmup[entry["id"]] = {"status": outcome.status, "ms": outcome.ms,
                               "repeats_sent": await warm_repeats(
                                   lambda inputs, m=entry["id"]: send(m, inputs), texts)}
    for entry, concurrency, batch in cells_plan:
        model = entry["id"]
        progress.start(f"{model} c={concurrency} b={batch}", args.duration, timed=True)
        recorder = Recorder()
        sample = await closed_loop(
            lambda inputs, m=model: send(m, inputs),
            texts,
            concurrency,
            batch,
            args.duration,
            recorder,
            grace=args.grace,
            verify=args.verify,
        )
        cell = {"model": model, "concurrency": concurrency, "batch": batch}
        cell |= recorder.summary()
        cell["dims"] = None if args.mode == "rerank" else check_shape(sample, batch)
        cells.append(cell)
        progress.end(
            f"{cell['requests_per_s']:.1f} req/s, {cell['inputs_per_s']:.0f} inputs/s, "
            f"p50 {fmt_ms(cell['latency_ms']['p50'])}"
            + (f", errors {cell['errors']}" if cell["errors"] else "")
            + (f", {cell['cut_off']} cut off at the deadline" if cell["cut_off"] else "")
        )


async def run_overhead(
    args: argparse.Namespace,
    gateway: Endpoint,
    upstream: Endpoint,
    texts: Texts,
    results: dict[str, Any],
) -> None:
    """Fills ``results`` cell by cell (an interrupted run keeps the finished cells)."""
    model = (await pick_models(gateway, args.models, all_models=False))[0]["id"]
    upstream_model = args.upstream_model or model
    sides: dict[str, Send] = {
        "gateway": lambda inputs: gateway.embed(model, inputs),
        "upstream": lambda inputs: upstream.embed(upstream_model, inputs),
    }
    plan = list(itertools.product(args.concurrency, args.batch))
    progress = Progress(args.progress, len(plan))
    ticker = asyncio.create_task(progress.run())
    sampler = RssSampler(args.gateway_pid) if args.gateway_pid else None
    sampling = asyncio.create_task(sampler.run()) if sampler else None
    cells: list[dict[str, Any]] = results.setdefault("cells", [])
    try:
        await overhead_cells(args, sides, texts, progress, sampler, plan, model,
                             upstream_model, cells)
    finally:
        ticker.cancel()
        if sampling:
            sampling.cancel()


async def overhead_cells(
    args: argparse.Namespace,
    sides: dict[str, Send],
    texts: Texts,
    progress: Progress,
    sampler: RssSampler | None,
    plan: list[tuple[int, int]],
    model: str,
    upstream_model: str,
    cells: list[dict[str, Any]],
) -> None:
    slices = max(1, round(args.duration / args.slice))
    for concurrency, batch in plan:
        progress.start(f"c={concurrency} b={batch}", 2 * slices * args.slice, timed=True)
        recorders = {name: Recorder() for name in sides}
        samples: dict[str, bytes | None] = {}
        for send in sides.values():
            await send(texts.batch(batch))
            await warm_repeats(send, texts)
        cpu = 0.0
        if sampler:
            rss_before = rss_mb(sampler.pid)
            sampler.peak = rss_before
        for round_index in range(slices):
            order = list(sides.items())
            for name, send in order if round_index % 2 == 0 else reversed(order):
                before = cpu_seconds(sampler.pid) if sampler else 0.0
                body = await closed_loop(
                    send, texts, concurrency, batch, args.slice, recorders[name],
                    grace=args.grace, verify=args.verify,
                )
                samples[name] = samples.get(name) or body
                if sampler and name == "gateway":
                    cpu += cpu_seconds(sampler.pid) - before
        gw, up = recorders["gateway"].summary(), recorders["upstream"].summary()
        for name in sides:
            check_shape(samples.get(name), batch)
        added = {
            q: (gw["latency_ms"][q] - up["latency_ms"][q])
            if gw["latency_ms"][q] is not None and up["latency_ms"][q] is not None
            else None
            for q in ("p50", "p95", "p99", "mean")
        }
        cell: dict[str, Any] = {
            "model": model,
            "upstream_model": upstream_model,
            "concurrency": concurrency,
            "batch": batch,
            "gateway": gw,
            "upstream": up,
            "added_ms": added,
            "throughput_ratio": gw["inputs_per_s"] / up["inputs_per_s"]
            if up["inputs_per_s"]
            else None,
            "gateway_process": None,
        }
        if sampler:
            cell["gateway_process"] = {
                "pid": sampler.pid,
                "cpu_s": cpu,
                "cpu_ms_per_request": 1000 * cpu / gw["ok"] if gw["ok"] else None,
                "rss_before_mb": rss_before,
                "rss_after_mb": rss_mb(sampler.pid),
                "rss_peak_mb": sampler.peak,
            }
        cells.append(cell)
        ratio = cell["throughput_ratio"]
        progress.end(
            f"added p50 {fmt_ms(added['p50'])}, p99 {fmt_ms(added['p99'])}, throughput x{ratio:.2f}"
            if ratio
            else "no successful upstream requests"
        )


# -- command line ---------------------------------------------------------------------------------


def int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def name_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--gateway",
        default="http://127.0.0.1:8000",
        help="base URL of an OpenAI-compatible API (with or without /v1)",
    )
    common.add_argument("--api-key", default=None, help="bearer key for --gateway")
    common.add_argument(
        "--models",
        type=name_list,
        default=[],
        help="comma-separated model names (default: from GET /v1/models)",
    )
    common.add_argument(
        "--duration",
        type=float,
        default=5.0,
        help="seconds per load/overhead cell; cap on warm requests in 'models'",
    )
    common.add_argument(
        "--grace",
        type=float,
        default=5.0,
        help="seconds requests in flight at a cell's end may still take; past it they are "
        "cancelled and reported as cut_off",
    )
    common.add_argument("--encoding-format", choices=("float", "base64"), default="float")
    common.add_argument("--input-words", type=int, default=32, help="words per input text")
    common.add_argument(
        "--repeat-fraction", type=float, default=0.0,
        help="fraction of inputs drawn from --repeat-pool recurring texts, each sent once "
        "before the measurement (default 0: every input distinct)",
    )
    common.add_argument("--repeat-pool", type=int, default=1024,
                        help="how many recurring texts (default 1024)")
    common.add_argument("--cache-control", default=None,
                        help="Cache-Control header for --gateway, e.g. no-store (uncached)")
    common.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--json", type=Path, help="write the results as JSON here")
    common.add_argument("--html", type=Path, help="write a self-contained HTML report here")
    common.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar on stderr"
    )

    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    modes = parser.add_subparsers(dest="mode", required=True)
    models = modes.add_parser("models", parents=[common], help="cold, warm and swap per model")
    models.add_argument("--requests", type=int, default=20, help="warm requests per model")
    models.add_argument("--swaps", type=int, default=2, help="round trips per swap pair")

    sweep = argparse.ArgumentParser(add_help=False)
    sweep.add_argument("--concurrency", type=int_list, default=[1, 8])
    sweep.add_argument("--batch", type=int_list, default=[1, 32])
    sweep.add_argument(
        "--verify",
        action="store_true",
        help="check every row against the simulated accelerator's vector of its own text "
        "(fast_upstream.py --accelerator); a wrong row counts as an error",
    )
    modes.add_parser("load", parents=[common, sweep], help="concurrency x batch sweep")
    rerank = modes.add_parser("rerank", parents=[common],
                              help="concurrency x document-count sweep of /v1/rerank")
    rerank.add_argument("--concurrency", type=int_list, default=[1, 8])
    rerank.add_argument("--documents", dest="batch", type=int_list, default=[1, 16, 64],
                        help="documents per request (comma-separated)")
    rerank.set_defaults(verify=False)
    overhead = modes.add_parser(
        "overhead", parents=[common, sweep], help="gateway vs direct upstream, interleaved"
    )
    overhead.add_argument("--upstream", required=True, help="base URL of the upstream itself")
    overhead.add_argument(
        "--upstream-model",
        default=None,
        help="model name at the upstream (default: the gateway's name)",
    )
    overhead.add_argument("--upstream-api-key", default=None)
    overhead.add_argument(
        "--gateway-pid",
        type=int,
        default=None,
        help="gateway process id: report its CPU time and RSS (Linux)",
    )
    overhead.add_argument(
        "--slice", type=float, default=1.0, help="seconds per alternating gateway/upstream slice"
    )
    return parser


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    skip = {"json", "html", "progress", "api_key", "upstream_api_key"}
    return {
        key: str(value) if isinstance(value, Path) else value
        for key, value in vars(args).items()
        if key not in skip
    }


EMPTY_RESULTS: dict[str, Callable[[], dict[str, Any]]] = {
    "models": lambda: {"models": [], "swaps": []},
    "load": lambda: {"warmup": {}, "cells": []},
    "rerank": lambda: {"warmup": {}, "cells": []},
    "overhead": lambda: {"cells": []},
}


async def until_done_or_interrupted(work: Awaitable[None]) -> bool:
    """Run ``work``; Ctrl-C (SIGINT) cancels it, keeping what it has finished. True if so."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, task.cancel)
    try:
        await asyncio.wait({task})
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    if task.cancelled():
        return True
    task.result()  # a failure of the run itself (SystemExit with its message) goes on up
    return False


async def run(args: argparse.Namespace) -> dict[str, Any]:
    largest = max(getattr(args, "concurrency", [1]))
    connector = aiohttp.TCPConnector(limit=2 * largest + 4, limit_per_host=0)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    texts = Texts(args.input_words, args.seed, args.repeat_fraction, args.repeat_pool)
    started = dt.datetime.now(dt.UTC)
    results = EMPTY_RESULTS[args.mode]()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        gateway = Endpoint(session, args.gateway, args.api_key, args.encoding_format,
                           args.cache_control)
        if args.mode == "models":
            work = run_models(args, gateway, texts, results)
        elif args.mode in ("load", "rerank"):
            work = run_load(args, gateway, texts, results)
        else:
            upstream = Endpoint(session, args.upstream, args.upstream_api_key, args.encoding_format)
            work = run_overhead(args, gateway, upstream, texts, results)
        interrupted = await until_done_or_interrupted(work)
    return {
        "schema": SCHEMA,
        "mode": args.mode,
        "interrupted": interrupted,
        "started_at": started.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "settings": settings_of(args),
        "environment": {
            "python": platform.python_version(),
            "aiohttp": aiohttp.__version__,
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "results": results,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.repeat_fraction <= 1 or args.repeat_pool < 1:
        raise SystemExit("--repeat-fraction must be within 0..1 and --repeat-pool at least 1")
    if (
        args.mode == "overhead"
        and args.gateway_pid
        and not Path(f"/proc/{args.gateway_pid}").exists()
    ):
        raise SystemExit(f"--gateway-pid {args.gateway_pid}: no such process in /proc")
    if args.mode == "overhead" and args.gateway_pid:
        command = Path(f"/proc/{args.gateway_pid}/cmdline").read_bytes().split(b"\0")
        if not any(b"embedding_gateway" in part or b"embedding-gateway" in part
                   for part in command) or b"python" not in command[0]:
            print(f"warning: --gateway-pid {args.gateway_pid} runs "
                  f"{b' '.join(command).decode(errors='replace')!r}, which does not look like "
                  "the gateway's Python process (a wrapper or shim?): its CPU and RSS would "
                  "not be the gateway's", file=sys.stderr)
    report = asyncio.run(run(args))
    if report["interrupted"]:
        print("\ninterrupted: the results below are what finished", file=sys.stderr)
    print_report(report, sys.stdout)
    if args.json:
        args.json.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    if args.html:
        args.html.write_text(render_html(report), encoding="utf-8")
    return 130 if report["interrupted"] else 0


if __name__ == "__main__":
    sys.exit(main())
