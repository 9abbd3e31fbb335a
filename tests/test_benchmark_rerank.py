"""scripts/benchmark.py's rerank mode end to end: the benchmark and the real gateway
(``embedding-gateway serve``) as subprocesses, in front of the fake TEI reranker as a process.
No timing assertions."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.ports import free_port
from tests.test_benchmark import SIDE, STATS, bench, stop, wait_healthy

RERANKER = "BAAI/bge-reranker-v2-m3"


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[str]:
    """The real gateway with one TEI backend: the fake reranker (8 documents a call)."""
    tei_port, port = free_port(), free_port()
    tei = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.tei", "--model-id", RERANKER, "--model-type",
         "reranker", "--port", str(tei_port), "--max-client-batch-size", "8"],
        stdout=subprocess.DEVNULL)
    config = {"server": {"host": "127.0.0.1", "port": port, "playground": False},
              "backends": {"tei": {"kind": "tei", "base_url": f"http://127.0.0.1:{tei_port}",
                                   "models": {RERANKER: {}}}}}
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "embedding_gateway.cli", "serve", "--config", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(f"http://127.0.0.1:{tei_port}", tei)
        wait_healthy(url, proc)
        yield url
    finally:
        stop(proc)
        stop(tei)


def test_rerank_mode_sweeps_concurrency_and_document_count(gateway: str,
                                                           tmp_path: Path) -> None:
    report, html, stdout = bench(tmp_path, "rerank", "--gateway", gateway, "--concurrency",
                                 "1,2", "--documents", "1,20", "--duration", "0.5")
    assert report["mode"] == "rerank"
    cells = report["results"]["cells"]
    assert [(c["concurrency"], c["batch"]) for c in cells] == [(1, 1), (1, 20), (2, 1), (2, 20)]
    for cell in cells:
        assert set(cell) >= SIDE
        assert cell["model"] == RERANKER  # the first reranker of GET /v1/models
        assert cell["ok"] > 0 and cell["errors"] == {}  # every answer a full ranking
        assert cell["inputs"] == cell["ok"] * cell["batch"]
        assert set(cell["latency_ms"]) == STATS
    assert "docs/s" in stdout and "docs/s by concurrency" in html
