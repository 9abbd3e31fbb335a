"""The command line beyond ``serve``: ``--version``, ``serve --host/--port``, where the config
is found, and ``models``, ``pull`` (against the fake Ollama's /api/pull) and ``prefetch``
(starting real processes and real containers), each as a real subprocess."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import docker
import pytest
import yaml

from embedding_gateway.runtimes.docker import LABEL_BACKEND
from tests.conftest import run_gateway
from tests.docker_support import (
    PYTHON,
    clean_containers,  # noqa: F401
    docker_available,  # noqa: F401
    python_volumes,
    test_image,  # noqa: F401
    unique_name,
)
from tests.fakes import serve_fake
from tests.fakes.ollama import create_ollama_app
from tests.fakes.ollama_pull import install_pull
from tests.fakes.tei import create_tei_app
from tests.ports import free_port
from tests.test_cli import START_BOUND, command, read_until

RUN_BOUND = 60.0  # seconds for one command to finish; a liveness bound
FAKE_TEI = [sys.executable, "-m", "tests.fakes.tei", "--port", "{port}", "--model-id",
            "{model}"]


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NOTIFY_") and k != "EMBEDDING_GATEWAY_CONFIG"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    return env | extra


async def cli(*args: str, cwd: Path | None = None, **env: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *command(), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=cwd, env=child_env(**env))
    try:
        async with asyncio.timeout(RUN_BOUND):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def write(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def tei_config(port: int, url: str) -> dict[str, Any]:
    return {"server": {"port": port, "playground": False},
            "backends": {"tei": {"kind": "tei", "base_url": url, "models": {"org/a": {}}}}}


# -- version, address, where the config is --------------------------------------------


async def test_version_is_the_installed_packages() -> None:
    status, out, _ = await cli("--version")
    assert status == 0
    assert out.strip() == f"embedding-gateway {importlib.metadata.version('embedding-gateway')}"


async def test_serve_host_and_port_override_the_file(tmp_path: Path) -> None:
    async with serve_fake(create_tei_app("org/a")) as upstream:
        file_port, flag_port = free_port(), free_port()
        path = write(tmp_path / "c.yaml", tei_config(file_port, upstream))
        proc = await asyncio.create_subprocess_exec(
            *command(), "serve", "--config", str(path), "--host", "127.0.0.1",
            "--port", str(flag_port), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, env=child_env())
        assert proc.stdout is not None
        lines: list[str] = []
        try:
            async with asyncio.timeout(START_BOUND):
                await read_until(proc.stdout, lines, "listening")
            assert f'"port":{flag_port}' in lines[-1]
            async with aiohttp.ClientSession() as session, \
                    session.get(f"http://127.0.0.1:{flag_port}/health") as response:
                assert "backends" in await response.json()  # up, checks maybe not yet done
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", file_port)
                writer.close()
                raise AssertionError("the gateway listens on the file's port too")
            except OSError:
                pass
        finally:
            proc.terminate()
            await proc.wait()


async def test_a_bad_port_flag_is_a_usage_error(tmp_path: Path) -> None:
    status, _, err = await cli("serve", "--port", "70000")
    assert status == 2 and "outside 0-65535" in err


async def test_the_config_is_found_in_the_variable_then_the_working_directory(
    tmp_path: Path,
) -> None:
    named = write(tmp_path / "named.yaml", tei_config(8000, "http://127.0.0.1:1"))
    status, out, _ = await cli("check-config", cwd=tmp_path,
                               EMBEDDING_GATEWAY_CONFIG=str(named))
    assert status == 0 and out.startswith(f"{named}: ok")
    write(tmp_path / "config.yaml", tei_config(8000, "http://127.0.0.1:1"))
    status, out, _ = await cli("check-config", cwd=tmp_path)
    assert status == 0 and out.startswith("config.yaml: ok")
    status, out, _ = await cli("check-config", "--config", str(named), cwd=tmp_path)
    assert status == 0 and out.startswith(f"{named}: ok")


async def test_no_config_anywhere_names_every_place_looked(tmp_path: Path) -> None:
    status, _, err = await cli("check-config", cwd=tmp_path)
    assert status == 1
    for place in ("EMBEDDING_GATEWAY_CONFIG", "/etc/embedding-gateway/config.yaml",
                  "./config.yaml"):
        assert place in err
    _, help_text, _ = await cli("serve", "--help")
    assert "EMBEDDING_GATEWAY_CONFIG" in help_text and "/etc/embedding-gateway" in help_text


# -- models -----------------------------------------------------------------------------


async def test_models_reads_the_file_when_no_gateway_answers(tmp_path: Path) -> None:
    config = tei_config(free_port(), "http://127.0.0.1:1")
    config["backends"]["tei"]["models"] = {"org/a": {"aliases": ["a"]}}
    path = write(tmp_path / "c.yaml", config)
    status, out, _ = await cli("models", "--config", str(path))
    assert status == 0
    rows = out.splitlines()
    assert rows[0].split()[:5] == ["model", "backend", "kind", "mode", "state"]
    assert "org/a" in rows[1] and "remote" in rows[1] and "not running" in rows[1]
    assert rows[2].split()[:3] == ["a", "->", "org/a"]
    assert "no gateway answers" in rows[-1]


async def test_models_asks_the_running_gateway(tmp_path: Path) -> None:
    async with serve_fake(create_tei_app("org/a")) as upstream:
        config = {"server": {"playground": False, "api_keys": ["k-1"]},
                  "backends": {"tei": {"kind": "tei", "base_url": upstream,
                                       "models": {"org/a": {}}},
                               "down": {"kind": "tei", "base_url": "http://127.0.0.1:9",
                                        "models": {"org/b": {}}}}}
        async with run_gateway(config) as url:
            port = int(url.rsplit(":", 1)[1])
            config["server"]["port"] = port
            path = write(tmp_path / "c.yaml", config)
            status, out, _ = await cli("models", "--config", str(path))
    assert status == 1  # org/b is down
    by_model = {line.split()[0]: line for line in out.splitlines()[1:-1]}
    assert "remote" in by_model["org/a"] and " yes" in by_model["org/a"]
    assert " no" in by_model["org/b"]
    assert f"from the gateway at http://127.0.0.1:{port}" in out


# -- pull -------------------------------------------------------------------------------


def ollama_config(url: str, models: list[str]) -> dict[str, Any]:
    return {"backends": {"ollama": {"kind": "ollama", "base_url": url,
                                    "models": {m: {} for m in models}}}}


async def test_pull_fetches_every_configured_model_with_progress(tmp_path: Path) -> None:
    app = create_ollama_app({"all-minilm": 384})
    install_pull(app, {"bge-m3": 1024, "nomic-embed-text:v1.5": 768})
    async with serve_fake(app) as url:
        path = write(tmp_path / "c.yaml", ollama_config(url, ["bge-m3", "nomic-embed-text:v1.5"]))
        status, out, err = await cli("pull", "--config", str(path))
        async with aiohttp.ClientSession() as session, session.get(url + "/api/tags") as r:
            listed = {m["name"] for m in (await r.json())["models"]}
    assert status == 0, err
    assert {"bge-m3:latest", "nomic-embed-text:v1.5"} <= listed
    assert "bge-m3: pulling manifest" in err
    assert "100.0%" in err
    assert "bge-m3: pulled" in err
    assert out.splitlines()[-1] == "2 pulled, 0 failed"


async def test_pull_reports_each_failure_and_exits_non_zero(tmp_path: Path) -> None:
    app = create_ollama_app({"all-minilm": 384})
    install_pull(app, {"bge-m3": 1024, "embed-broken": 8})
    async with serve_fake(app) as url:
        models = ["bge-m3", "no-such-model", "embed-broken", "bad name"]
        path = write(tmp_path / "c.yaml", ollama_config(url, models))
        status, out, _ = await cli("pull", "--config", str(path))
    assert status == 1
    lines = out.splitlines()
    assert lines[0] == "ollama  bge-m3  ok"
    assert lines[1] == "ollama  no-such-model  FAILED: pull model manifest: file does not exist"
    assert lines[2] == "ollama  embed-broken  FAILED: max retries exceeded: unexpected EOF"
    assert lines[3] == "ollama  bad name  FAILED: HTTP 400: invalid model name"
    assert lines[4] == "1 pulled, 3 failed"


async def test_pull_without_ollama_backends_says_so(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", tei_config(8000, "http://127.0.0.1:1"))
    status, out, _ = await cli("pull", "--config", str(path))
    assert status == 0 and "no Ollama backends" in out


async def test_pull_of_an_unreachable_ollama_fails_clearly(tmp_path: Path) -> None:
    port = free_port()
    path = write(tmp_path / "c.yaml", ollama_config(f"http://127.0.0.1:{port}", ["bge-m3"]))
    status, out, _ = await cli("pull", "--config", str(path))
    assert status == 1
    assert f"FAILED: http://127.0.0.1:{port}" in out


async def test_the_fake_pull_answers_as_ollama_does_without_streaming() -> None:
    app = create_ollama_app({"all-minilm": 384})
    install_pull(app, {"bge-m3": 1024})
    async with serve_fake(app) as url, aiohttp.ClientSession() as session:
        async with session.post(url + "/api/pull", json={"model": "bge-m3",
                                                         "stream": False}) as r:
            assert (r.status, await r.json()) == (200, {"status": "success"})
        async with session.post(url + "/api/pull", json={"model": "nope",
                                                         "stream": False}) as r:
            assert r.status == 500
            assert await r.json() == {"error": "pull model manifest: file does not exist"}
        async with session.post(url + "/api/pull", data=b"") as r:
            assert (r.status, await r.json()) == (400, {"error": "missing request body"})


# -- prefetch ---------------------------------------------------------------------------


def process_backend(command: list[str], models: list[str]) -> dict[str, Any]:
    return {"kind": "tei", "base_url": f"http://127.0.0.1:{free_port()}",
            "managed": {"runtime": "process", "command": command, "start_timeout": 30,
                        "stop_timeout": 2},
            "models": {m: {} for m in models}}


async def test_prefetch_starts_each_managed_model_once_then_stops_it(tmp_path: Path) -> None:
    backend = process_backend(FAKE_TEI, ["org/a", "org/b"])
    port = int(backend["base_url"].rsplit(":", 1)[1])
    config = {"server": {"port": free_port()},
              "backends": {"tei": backend,
                           "remote": {"kind": "tei", "base_url": "http://127.0.0.1:9",
                                      "models": {"org/r": {}}}}}
    path = write(tmp_path / "c.yaml", config)
    status, out, err = await cli("prefetch", "--config", str(path))
    assert status == 0, out + err
    lines = out.splitlines()
    assert lines[0].startswith("tei  org/a  ok (") and lines[1].startswith("tei  org/b  ok (")
    assert lines[2] == "2 prefetched, 0 failed"
    assert "org/a: ready after" in err and "stopped" in err
    refused = False
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
    except OSError:
        refused = True
    assert refused, "the prefetched instance still listens"


async def test_prefetch_reports_a_model_that_cannot_start(tmp_path: Path) -> None:
    config = {"server": {"port": free_port()},
              "backends": {"quits": process_backend(["sh", "-c", "echo no weights; exit 3"],
                                                    ["org/a"]),
                           "missing": process_backend([str(tmp_path / "absent")], ["org/b"])}}
    path = write(tmp_path / "c.yaml", config)
    status, out, _ = await cli("prefetch", "--config", str(path))
    assert status == 1
    lines = out.splitlines()
    assert lines[0].startswith("quits  org/a  FAILED: ") and "exited" in out
    assert "no weights" in out
    assert any(line.startswith("missing  org/b  FAILED: ") and "absent" in line
               for line in lines)
    assert lines[-1] == "0 prefetched, 2 failed"


async def test_prefetch_refuses_while_a_gateway_answers(tmp_path: Path) -> None:
    async with serve_fake(create_tei_app("org/a")) as upstream:
        config = {"server": {"playground": False, "api_keys": ["k"]},
                  "backends": {"tei": {"kind": "tei", "base_url": upstream,
                                       "models": {"org/a": {}}}}}
        async with run_gateway(config) as url:
            config["server"]["port"] = int(url.rsplit(":", 1)[1])
            config["backends"]["local"] = process_backend(FAKE_TEI, ["org/b"])
            path = write(tmp_path / "c.yaml", config)
            status, _, err = await cli("prefetch", "--config", str(path))
    assert status == 2
    assert "stop it first" in err


@pytest.mark.docker
@pytest.mark.timeout(300)
async def test_prefetch_on_docker_fills_the_cache_volume_and_leaves_no_container(
    tmp_path: Path, clean_containers: str, docker_available: docker.DockerClient,  # noqa: F811
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    name = unique_name("prefetch")
    server = f"exec {PYTHON} -m tests.fakes.tei --host 0.0.0.0 --port 80 --model-id {{model}}"
    backend = {
        "kind": "tei", "base_url": f"http://127.0.0.1:{free_port()}",
        "managed": {"runtime": "docker", "image": clean_containers,
                    # a model server's first start: the weights go into the cache volume
                    "args": ["sh", "-c", f"echo {{model}} >> /data/weights && {server}"],
                    "container_port": 80, "volumes": [*python_volumes(), f"{cache}:/data"],
                    "start_timeout": 60, "stop_timeout": 2},
        "models": {"org/a": {}, "org/b": {}},
    }
    path = write(tmp_path / "c.yaml", {"server": {"port": free_port()},
                                       "backends": {name: backend}})
    status, out, err = await cli("prefetch", "--config", str(path))
    assert status == 0, out + err
    assert out.splitlines()[-1] == "2 prefetched, 0 failed"
    assert (cache / "weights").read_text().split() == ["org/a", "org/b"]
    left = docker_available.containers.list(all=True,
                                            filters={"label": f"{LABEL_BACKEND}={name}"})
    assert left == []
