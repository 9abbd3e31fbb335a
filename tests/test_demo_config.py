"""config.demo.yaml: its ports come from the environment, and its models promise only what
they were trained for."""

from __future__ import annotations

from pathlib import Path

from embedding_gateway.config import load_config
from embedding_gateway.instances import Slots

DEMO = Path(__file__).resolve().parent.parent / "config.demo.yaml"


def test_the_managed_process_port_defaults_to_18000() -> None:
    config = load_config(DEMO, env={})
    local = config.backends["local"]
    assert local.base_url == "http://127.0.0.1:18000"
    assert config.server.port == 8000


def test_a_second_demo_moves_both_ports() -> None:
    config = load_config(DEMO, env={"GATEWAY_PORT": "8001", "DEMO_UPSTREAM_PORT": "18001"})
    local = config.backends["local"]
    assert config.server.port == 8001
    assert local.base_url == "http://127.0.0.1:18001"
    assert local.managed is not None
    slots = Slots(local.base_url, local.managed)
    assert slots.port(slots.free(set())) == 18001  # where the managed process is started


def test_no_model_claims_matryoshka_it_was_not_trained_for() -> None:
    config = load_config(DEMO, env={})
    # multilingual-e5-small was trained for full-size vectors only
    assert not any(model.matryoshka for model in config.backends["local"].models.values())
