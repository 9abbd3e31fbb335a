"""The shipped unit file: required directives, and `systemd-analyze verify` when available."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from embedding_gateway.config import ManagedConfig, ServerConfig

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "embedding-gateway.service"
BINARY = "/usr/local/bin/embedding-gateway"
CONFIG = "/etc/embedding-gateway/config.yaml"


def _directives(text: str) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value, in order (systemd allows repeated keys)."""
    sections: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if match := re.fullmatch(r"\[(\w+)\]", line):
            section = match.group(1)
            continue
        key, _, value = line.partition("=")
        sections[section][key.strip()].append(value.strip())
    return sections


@pytest.fixture(scope="module")
def service() -> dict[str, list[str]]:
    return _directives(UNIT.read_text())["Service"]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("ExecStartPre", f"{BINARY} check-config --config {CONFIG}"),
        ("ExecStart", f"{BINARY} serve --config {CONFIG}"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("WatchdogSec", "30"),
        ("Restart", "on-failure"),
        ("User", "embedding-gateway"),
        ("Group", "embedding-gateway"),
        ("SupplementaryGroups", "docker"),
        ("EnvironmentFile", "-/etc/embedding-gateway/env"),
        ("StateDirectory", "embedding-gateway"),
        ("ReadWritePaths", "/var/lib/embedding-gateway"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("LockPersonality", "yes"),
    ],
)
def test_required_directive(service: dict[str, list[str]], key: str, value: str) -> None:
    assert service[key] == [value]


def test_stop_timeout_covers_drain_and_container_stop(service: dict[str, list[str]]) -> None:
    drain = ServerConfig().shutdown_timeout
    container_stop = ManagedConfig(runtime="process", command=["true"]).stop_timeout
    assert int(service["TimeoutStopSec"][0]) > drain + container_stop


def test_docker_socket_stays_reachable(service: dict[str, list[str]]) -> None:
    """Hardening that would cut the gateway off from /run/docker.sock is absent."""
    assert "AF_UNIX" in service["RestrictAddressFamilies"][0].split()
    for key in ("PrivateNetwork", "PrivateUsers", "InaccessiblePaths"):
        assert key not in service


def test_installed_for_multi_user_target() -> None:
    assert _directives(UNIT.read_text())["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    """verify insists that every Exec binary exists, and the gateway is not installed under
    /usr/local/bin here, so a tmp copy points those lines at /bin/true; everything else is
    the shipped unit, byte for byte. verify exits 0 on unknown keys and bad values, so the
    test demands that it prints nothing at all.
    """
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(BINARY, "/bin/true"))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""
