"""deploy/: the GPU hosts' compose files are valid (``docker compose config``, or Debian's
``docker-compose config``) and publish what deploy/config.remote.yaml and the remote section
of config.example.yaml expect: the same ports, the same models."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from embedding_gateway.config import GatewayConfig, load_config

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
ENV = {"GATEWAY_API_KEY": "client-key"}


def compose_command() -> list[str]:
    """The compose plugin, else the standalone docker-compose; skips (fails with
    ``EG_REQUIRE_DOCKER=1``) when neither is installed."""
    if shutil.which("docker") and subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    message = "neither the docker compose plugin nor docker-compose is installed"
    if os.environ.get("EG_REQUIRE_DOCKER") == "1":
        pytest.fail(message)
    pytest.skip(message)


def resolved(name: str) -> dict[str, Any]:
    """The compose file as compose itself resolves it, with no variable set."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TEI_", "VLLM_", "OLLAMA_", "HF_"))}
    done = subprocess.run([*compose_command(), "-f", str(DEPLOY / name), "config"],
                          capture_output=True, text=True, env=env, cwd=DEPLOY, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def published(service: dict[str, Any]) -> int:
    [port] = service["ports"]
    if isinstance(port, str):  # short syntax: "8080:80"
        return int(port.split(":")[-2])
    return int(port["published"])


def model_arg(service: dict[str, Any], flag: str) -> str:
    command = service["command"]
    return command[command.index(flag) + 1]


def port_of(url: str) -> int:
    port = urlsplit(url).port
    assert port is not None
    return port


@pytest.fixture(scope="module")
def remote() -> GatewayConfig:
    return load_config(DEPLOY / "config.remote.yaml", env=ENV)


def test_the_gateway_side_config_is_valid_and_remote_only(remote: GatewayConfig) -> None:
    assert set(remote.backends) == {"ollama", "tei", "tei-rerank", "remote-vllm"}
    assert all(backend.managed is None for backend in remote.backends.values())


def test_it_matches_the_example_configs_remote_section(remote: GatewayConfig) -> None:
    example = load_config(REPO / "config.example.yaml",
                          env={"OLLAMA_BASE_URL": "http://127.0.0.1:11434"})
    ours, theirs = remote.backends["remote-vllm"], example.backends["remote-vllm"]
    assert (ours.kind, ours.base_url, ours.api_key) == (theirs.kind, theirs.base_url,
                                                        theirs.api_key)
    embedders = {name: opts for name, opts in theirs.models.items() if opts.task != "rerank"}
    assert ours.models == embedders


def test_the_tei_host_serves_the_embedder_the_gateway_expects(remote: GatewayConfig) -> None:
    services = resolved("tei.compose.yaml")["services"]
    assert set(services) == {"tei-embed", "tei-rerank"}
    tei = remote.backends["tei"]
    assert published(services["tei-embed"]) == port_of(tei.base_url)
    assert model_arg(services["tei-embed"], "--model-id") in tei.models
    reranker = remote.backends["tei-rerank"]
    assert published(services["tei-rerank"]) == port_of(reranker.base_url)
    assert model_arg(services["tei-rerank"], "--model-id") in reranker.models
    for service in services.values():
        assert "/data" in " ".join(map(str, service["volumes"]))  # TEI's weight cache


def test_the_vllm_host_serves_the_model_the_gateway_expects(remote: GatewayConfig) -> None:
    [vllm] = resolved("vllm.compose.yaml")["services"].values()
    backend = remote.backends["remote-vllm"]
    assert published(vllm) == port_of(backend.base_url)
    assert model_arg(vllm, "--model") in backend.models
    assert model_arg(vllm, "--runner") == "pooling"
    assert "VLLM_API_KEY" in vllm["environment"]


def test_the_ollama_host_listens_where_the_gateway_expects(remote: GatewayConfig) -> None:
    [ollama] = resolved("ollama.compose.yaml")["services"].values()
    assert published(ollama) == port_of(remote.backends["ollama"].base_url)
    assert ollama["environment"]["OLLAMA_HOST"] == "0.0.0.0:11434"


@pytest.mark.parametrize("name", ["tei.compose.yaml", "vllm.compose.yaml", "ollama.compose.yaml"])
def test_every_gpu_service_reserves_the_gpus(name: str) -> None:
    for service in resolved(name)["services"].values():
        [device] = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
