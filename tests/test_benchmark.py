"""scripts/benchmark.py end to end, as a subprocess, against scripts/fast_upstream.py on loopback.

fast_upstream speaks the API the gateway serves (``--managed-backend`` even lists its models the
way the gateway lists managed ones), so it stands in for the gateway in most tests; the last
ones run the real gateway (``embedding-gateway serve``) in front of it. No timing assertions.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cache_support import metric
from tests.ports import free_port

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
STATS = {"p50", "p95", "p99", "mean", "min", "max"}
SIDE = {
    "requests",
    "ok",
    "inputs",
    "elapsed_s",
    "requests_per_s",
    "inputs_per_s",
    "latency_ms",
    "errors",
    "error_samples",
}


class Server:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPTS / "fast_upstream.py"), "--port", "0", *args],
            stdout=subprocess.PIPE,
            text=True,
        )
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        line = self.proc.stdout.readline() if ready else ""
        match = re.search(r"http://127\.0\.0\.1:\d+", line)
        if not match:
            self.stop()
            raise RuntimeError(f"fast_upstream did not start: {line!r}")
        self.url = match.group(0)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


@pytest.fixture
def upstream() -> Iterator[Server]:
    server = Server("--model", "fast-a,fast-b", "--dims", "256", "--managed-backend", "fake")
    yield server
    server.stop()


def bench(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str, str]:
    """Run the benchmark; return its JSON, its HTML and its stdout."""
    out_json, out_html = tmp_path / "out.json", tmp_path / "out.html"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "benchmark.py"),
            *args,
            "--json",
            str(out_json),
            "--html",
            str(out_html),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"PYTHONWARNINGS": "error"},
    )
    assert done.returncode == 0, done.stderr
    html = out_html.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert html.rstrip().endswith("</html>")
    assert "<svg" in html
    assert "<script" not in html
    assert not re.search(r"""(src|href)=["']?https?:""", html)
    report = json.loads(out_json.read_text())
    assert report["schema"] == "embedding-gateway-benchmark/1"
    assert {"mode", "started_at", "finished_at", "settings", "environment", "results"} <= set(
        report
    )
    return report, html, done.stdout


def test_help_lists_the_modes() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "benchmark.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0
    for mode in ("models", "load", "overhead"):
        assert mode in done.stdout


def test_models_mode_reports_each_model_and_the_swap(upstream: Server, tmp_path: Path) -> None:
    report, html, stdout = bench(
        tmp_path,
        "models",
        "--gateway",
        upstream.url,
        "--models",
        "fast-a,fast-b,missing",
        "--requests",
        "5",
        "--swaps",
        "2",
    )
    assert report["mode"] == "models"
    rows = {row["model"]: row for row in report["results"]["models"]}
    assert set(rows) == {"fast-a", "fast-b", "missing"}
    for name in ("fast-a", "fast-b"):
        row = rows[name]
        assert row["managed"] is True and row["backend"] == "fake"
        assert row["dims"] == 256
        assert row["prompt_tokens"] > 0
        assert row["cold_ms"] > 0
        assert row["warm_requests"] == 5
        assert set(row["warm_ms"]) == STATS
        assert row["errors"] == {}
    assert rows["missing"]["errors"] == {"404": 1}
    assert "does not exist" in rows["missing"]["error_samples"]["404"]
    [swap] = report["results"]["swaps"]
    assert swap["backend"] == "fake"
    assert swap["models"] == ["fast-a", "fast-b"]
    assert len(swap["times_ms"]) == 4
    assert "fast-a" in stdout and "Swaps" in stdout
    assert "Swap time per backend" in html


def test_load_mode_sweeps_concurrency_and_batch(upstream: Server, tmp_path: Path) -> None:
    report, _, stdout = bench(
        tmp_path,
        "load",
        "--gateway",
        upstream.url + "/v1",
        "--concurrency",
        "1,4",
        "--batch",
        "1,8",
        "--duration",
        "0.5",
        "--encoding-format",
        "base64",
    )
    cells = report["results"]["cells"]
    assert [(c["concurrency"], c["batch"]) for c in cells] == [(1, 1), (1, 8), (4, 1), (4, 8)]
    for cell in cells:
        assert SIDE | {"model", "concurrency", "batch", "dims"} <= set(cell)
        assert cell["model"] == "fast-a"  # the first model of GET /v1/models
        assert cell["ok"] > 0 and cell["errors"] == {}
        assert cell["inputs"] == cell["ok"] * cell["batch"]
        assert cell["dims"] == 256
        assert set(cell["latency_ms"]) == STATS
    assert report["settings"]["encoding_format"] == "base64"
    assert "inputs/s" in stdout


def test_overhead_mode_compares_gateway_and_upstream(upstream: Server, tmp_path: Path) -> None:
    direct = Server("--model", "fast-a", "--dims", "256")
    try:
        report, html, _ = bench(
            tmp_path,
            "overhead",
            "--gateway",
            upstream.url,
            "--models",
            "fast-b",
            "--upstream",
            direct.url,
            "--upstream-model",
            "fast-a",
            "--concurrency",
            "2",
            "--batch",
            "1,4",
            "--duration",
            "0.5",
            "--slice",
            "0.25",
            "--gateway-pid",
            str(upstream.pid),
        )
    finally:
        direct.stop()
    cells = report["results"]["cells"]
    assert len(cells) == 2
    for cell in cells:
        assert (cell["model"], cell["upstream_model"]) == ("fast-b", "fast-a")
        for side in ("gateway", "upstream"):
            assert set(cell[side]) >= SIDE
            assert cell[side]["ok"] > 0 and cell[side]["errors"] == {}
        assert set(cell["added_ms"]) == {"p50", "p95", "p99", "mean"}
        assert cell["throughput_ratio"] > 0
        process = cell["gateway_process"]
        assert process["pid"] == upstream.pid
        assert process["cpu_s"] >= 0
        assert process["rss_peak_mb"] >= process["rss_before_mb"] > 0
    assert "Latency added by the gateway" in html


def test_unreachable_gateway_fails_with_a_message(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "benchmark.py"),
            "load",
            "--gateway",
            "http://127.0.0.1:9",
            "--duration",
            "0.2",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "127.0.0.1:9" in done.stderr


@pytest.fixture
def gateway(upstream: Server, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """The real gateway, one ``kind: openai`` backend pointing at fast_upstream."""
    port = free_port()
    config = {
        "server": {"host": "127.0.0.1", "port": port, "playground": False},
        "backends": {
            "fast": {
                "kind": "openai",
                "base_url": upstream.url,
                "models": {"fast-a": {"dimensions": 256, "aliases": ["fast-alias"]}},
            }
        },
    }
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "embedding_gateway.cli", "serve", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url, proc.pid
    finally:
        stop(proc)


def wait_healthy(url: str, proc: subprocess.Popen[bytes]) -> None:
    """Until ``url``/health answers 200 (15 s at most); ``proc`` must not exit meanwhile."""
    deadline = time.monotonic() + 15
    while True:
        assert proc.poll() is None, f"{proc.args} exited"
        try:
            with urllib.request.urlopen(url + "/health", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_models_mode_through_the_gateway(gateway: tuple[str, int], tmp_path: Path) -> None:
    url, _ = gateway
    report, _, _ = bench(tmp_path, "models", "--gateway", url, "--requests", "3")
    [row] = report["results"]["models"]  # the alias is the same model: measured once
    assert (row["model"], row["backend"], row["managed"]) == ("fast-a", "fast", False)
    assert row["dims"] == 256
    assert row["errors"] == {}
    assert report["results"]["swaps"] == []


def test_overhead_of_the_gateway_over_its_upstream(
    gateway: tuple[str, int], upstream: Server, tmp_path: Path
) -> None:
    url, pid = gateway
    report, _, _ = bench(
        tmp_path,
        "overhead",
        "--gateway",
        url,
        "--upstream",
        upstream.url,
        "--concurrency",
        "2",
        "--batch",
        "1,16",
        "--duration",
        "0.5",
        "--slice",
        "0.25",
        "--encoding-format",
        "base64",
        "--gateway-pid",
        str(pid),
    )
    for cell in report["results"]["cells"]:
        assert cell["model"] == cell["upstream_model"] == "fast-a"
        assert cell["gateway"]["ok"] > 0 and cell["gateway"]["errors"] == {}
        assert cell["upstream"]["ok"] > 0 and cell["upstream"]["errors"] == {}
        assert cell["gateway_process"]["pid"] == pid
        assert cell["gateway_process"]["cpu_s"] > 0


def test_requests_in_flight_at_the_deadline_get_the_grace_period_then_are_cut_off(
    tmp_path: Path,
) -> None:
    slow = Server("--model", "slow", "--dims", "8", "--accelerator", "serial",
                  "--fixed-ms", "4000")
    try:
        report, _, stdout = bench(
            tmp_path, "load", "--gateway", slow.url, "--concurrency", "2", "--batch", "1",
            "--duration", "0.3", "--grace", "0.3", "--no-progress",
        )
    finally:
        slow.stop()
    [cell] = report["results"]["cells"]
    assert cell["in_flight_at_deadline"] == 2  # each worker's first request
    assert cell["cut_off"] == 2  # the device needs 4 s for one, far past the grace period
    assert cell["ok"] == 0 and cell["requests"] == 0
    assert report["settings"]["grace"] == 0.3
    assert report["interrupted"] is False
    assert stdout.splitlines()[-1].split()[-1] == "2"  # the table's "cut off" column


def test_a_warm_request_past_the_models_deadline_is_cut_off_after_the_grace_period(
    tmp_path: Path,
) -> None:
    slow = Server("--model", "slow", "--dims", "8", "--accelerator", "serial",
                  "--fixed-ms", "3000")
    try:
        report, _, _ = bench(tmp_path, "models", "--gateway", slow.url, "--requests", "5",
                             "--duration", "0.2", "--grace", "0.2", "--no-progress")
    finally:
        slow.stop()
    [row] = report["results"]["models"]
    assert row["cold_ms"] is not None  # the first request is a load: only --timeout bounds it
    assert (row["warm_requests"], row["warm_cut_off"]) == (0, 1)


def test_ctrl_c_writes_the_cells_that_finished(upstream: Server, tmp_path: Path) -> None:
    out_json = tmp_path / "out.json"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "benchmark.py"), "load", "--gateway", upstream.url,
         "--concurrency", "1,2,3,4", "--batch", "1", "--duration", "1", "--json", str(out_json)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        first = ""
        deadline = time.monotonic() + 30
        while "[1/4]" not in first:  # a line per finished cell off a terminal
            assert time.monotonic() < deadline and proc.poll() is None, first
            ready, _, _ = select.select([proc.stderr], [], [], 1)
            if ready:
                first += proc.stderr.readline()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted" in stderr
    report = json.loads(out_json.read_text())
    assert report["interrupted"] is True
    cells = report["results"]["cells"]
    assert 1 <= len(cells) < 4
    assert cells[0]["concurrency"] == 1 and cells[0]["ok"] > 0
    assert "inputs/s" in stdout


def test_repeated_texts_are_answered_from_the_gateways_cache_unless_told_not_to(
    gateway: tuple[str, int], tmp_path: Path
) -> None:
    url, _ = gateway

    def hits() -> float:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
            text = resp.read().decode()
        return metric(text, "embedding_gateway_cache_hits_total", model="fast-a", tier="memory")

    args = ["load", "--gateway", url, "--concurrency", "2", "--batch", "4", "--duration", "0.5",
            "--repeat-fraction", "1", "--repeat-pool", "16"]
    report, _, _ = bench(tmp_path, *args)
    [cell] = report["results"]["cells"]
    assert report["results"]["warmup"]["fast-a"]["repeats_sent"] == 16
    assert cell["ok"] > 0 and cell["errors"] == {}
    assert hits() >= cell["inputs"]  # every measured input was one sent before
    before = hits()
    report, _, _ = bench(tmp_path, *args, "--cache-control", "no-store")
    assert report["results"]["cells"][0]["ok"] > 0
    assert hits() == before
