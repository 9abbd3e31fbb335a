"""Config loading: interpolation, every problem reported in one pass with its path, check-config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from embedding_gateway.config import ModelConfig, load_config, parse_config
from embedding_gateway.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config.example.yaml"

GOOD = """\
server:
  port: ${GW_PORT:-8123}
  api_keys: ["${GW_KEY}"]
backends:
  tei:
    kind: tei
    base_url: http://${TEI_HOST}:8080
    api_key: ${TEI_KEY:-}
    models:
      BAAI/bge-small-en-v1.5:
        aliases: [bge-small]
        dimensions: 384
        matryoshka: true
  ollama:
    kind: ollama
    base_url: http://127.0.0.1:11434
    models:
      bge-m3:
"""

BAD = """\
server:
  port: "not a port"
  colour: blue
backends:
  tei:
    kind: tei
    base_url: ftp://example.com
    timeout: soon
    models:
      bge-small:
        aliases: [small, shared]
  vllm:
    kind: vllm
    base_url: "http://"
    models:
      bge-small: {}
      e5:
        aliases: [shared]
        matryoshka: perhaps
  weird:
    kind: sqlite
    base_url: http://127.0.0.1:1
    models: {m: {}}
"""

EXPECTED_IN_BAD = [
    "server.port",
    "server.colour",
    "backends.tei.base_url",
    "backends.tei.timeout",
    "backends.vllm.base_url",
    "backends.vllm.models.e5.matryoshka",
    "backends.weird.kind",
]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path, env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    return info.value.problems


def test_example_config_is_valid() -> None:
    if not EXAMPLE.exists():
        pytest.skip("config.example.yaml is not in the repository yet")
    env = {"OPENAI_API_KEY": "sk-test", "HF_TOKEN": "hf-test", "GATEWAY_API_KEY": "k"}
    config = load_config(EXAMPLE, env=env)
    assert config.backends


def test_variables_are_interpolated_with_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    config = load_config(path, env={"GW_KEY": "secret", "TEI_HOST": "tei.internal"})
    assert config.server.port == 8123
    assert config.server.api_keys == ["secret"]
    assert config.backends["tei"].base_url == "http://tei.internal:8080"
    assert config.backends["tei"].api_key == ""
    assert config.backends["ollama"].models["bge-m3"].aliases == []

    config = load_config(
        path, env={"GW_KEY": "s", "TEI_HOST": "h", "GW_PORT": "9001", "TEI_KEY": "tk"}
    )
    assert config.server.port == 9001
    assert config.backends["tei"].api_key == "tk"


def test_a_missing_variable_is_an_error_naming_it_and_where(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, GOOD), env={"GW_KEY": "secret"})
    assert "backends.tei.base_url: environment variable TEI_HOST is not set" in problems
    assert all(p.startswith("backends.tei.base_url") for p in problems), problems


def test_every_problem_is_reported_in_one_pass_with_its_path(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, BAD), env={})
    text = "\n".join(problems)
    for where in EXPECTED_IN_BAD:
        assert any(p.startswith(where) for p in problems), f"{where} missing from:\n{text}"


def test_duplicate_names_and_aliases_across_backends_name_both_places(tmp_path: Path) -> None:
    problems = problems_of(write(tmp_path, BAD), env={})
    duplicate_model = [p for p in problems if "'bge-small'" in p]
    assert len(duplicate_model) == 1, problems
    assert "backends.vllm.models.bge-small" in duplicate_model[0]
    assert "backends.tei.models.bge-small" in duplicate_model[0]
    duplicate_alias = [p for p in problems if "'shared'" in p]
    assert len(duplicate_alias) == 1, problems
    assert "backends.tei.models.bge-small.aliases" in duplicate_alias[0]
    assert "backends.vllm.models.e5.aliases" in duplicate_alias[0]


def test_an_alias_equal_to_another_models_name_is_a_duplicate() -> None:
    raw = {"backends": {
        "a": {"kind": "tei", "base_url": "http://127.0.0.1:1", "models": {"x": {}}},
        "b": {"kind": "vllm", "base_url": "http://127.0.0.1:2",
              "models": {"y": {"aliases": ["x"]}}},
    }}
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env={})
    assert any("backends.a.models.x" in p and "backends.b.models.y" in p
               for p in info.value.problems), info.value.problems


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "embedding_gateway.cli", "check-config", "--config", str(path)],
        capture_output=True, text=True, timeout=30, cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "GW_KEY": "k", "TEI_HOST": "h"},
    )


def test_check_config_lists_every_problem_and_fails(tmp_path: Path) -> None:
    result = check_config(write(tmp_path, BAD))
    assert result.returncode != 0
    output = result.stdout + result.stderr
    for where in [*EXPECTED_IN_BAD, "'bge-small'", "'shared'"]:
        assert where in output, output
    assert "Traceback" not in output


def test_check_config_passes_a_good_file(tmp_path: Path) -> None:
    result = check_config(write(tmp_path, GOOD))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_check_config_on_a_missing_file_fails_cleanly(tmp_path: Path) -> None:
    result = check_config(tmp_path / "absent.yaml")
    assert result.returncode != 0
    assert "absent.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unset_variable_is_reported_once_at_its_path() -> None:
    document = {"backends": {"a": {"kind": "tei", "base_url": "http://${NO_SUCH_HOST}:8080",
                                   "models": {"m": {}}}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(document, env={})
    assert caught.value.problems == [
        "backends.a.base_url: environment variable NO_SUCH_HOST is not set"
    ]


def test_a_model_larger_than_its_gpu_is_rejected() -> None:
    document = {
        "gpus": {"0": {"memory_gb": 8}},
        "backends": {"tei": {"kind": "tei", "base_url": "http://127.0.0.1:8080",
                             "models": {"big": {"memory_gb": 12, "gpu": "0"}}}},
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(document, env={})
    assert caught.value.problems == [
        "backends.tei.models.big.memory_gb: 12 GB can never fit on device '0' (8 GB)"
    ]


def test_a_blank_api_key_is_rejected() -> None:
    """``api_keys: ["${KEY:-}"]`` with KEY unset must not open the gateway to everyone."""
    document = {"server": {"api_keys": ["${GATEWAY_KEY:-}"]},
                "backends": {"v": {"kind": "vllm", "base_url": "http://127.0.0.1:1",
                                   "models": {"m": {}}}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(document, env={})
    assert caught.value.problems == ["server.api_keys[0]: expected a non-empty string, got ''"]


def test_ollama_only_keys_on_another_kind_are_rejected() -> None:
    document = {"backends": {"t": {"kind": "tei", "base_url": "http://127.0.0.1:8080",
                                   "discover": True, "models": {"m": {}}}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(document, env={})
    assert caught.value.problems == [
        "backends.t: discover and keep_alive are for ollama backends only"
    ]


def test_keys_of_the_other_runtime_are_rejected() -> None:
    document = {"backends": {"t": {"kind": "tei", "base_url": "http://127.0.0.1:8080",
                                   "managed": {"runtime": "process", "command": ["serve"],
                                               "gpus": "all", "image": "x:1"},
                                   "models": {"m": {}}}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(document, env={})
    assert caught.value.problems == [
        "backends.t.managed: gpus, image: not used by runtime process"
    ]


def test_gpu_ids_may_be_written_as_numbers() -> None:
    document = {
        "gpus": {0: {"memory_gb": 24}},
        "backends": {"t": {"kind": "tei", "base_url": "http://127.0.0.1:8080",
                           "managed": {"runtime": "docker", "image": "tei:1.9", "gpus": [0, 1]},
                           "models": {"m": {"memory_gb": 2, "gpu": 0}}}},
    }
    config = parse_config(document, env={})
    tei = config.backends["t"]
    assert tei.managed is not None and tei.managed.gpus == ["0", "1"]
    assert tei.models["m"].gpu == "0" and "0" in config.gpus


def test_the_example_names_every_key() -> None:
    """config.example.yaml documents every key the config models take."""
    import attrs

    from embedding_gateway import config as models

    text = (Path(__file__).resolve().parent.parent / "config.example.yaml").read_text()
    missing = [
        f"{model.__name__}.{field}"
        for model in (models.GatewayConfig, models.ServerConfig, models.Limits,
                      models.MetricsConfig, models.GpuConfig, models.BackendConfig,
                      models.ManagedConfig, models.ModelConfig, models.CacheConfig,
                      models.RedisCacheConfig)
        for field in attrs.fields_dict(model)
        if f"{field}:" not in text
    ]
    assert missing == []


def one_backend(**fields: object) -> dict[str, object]:
    backend = {"kind": "tei", "base_url": "http://127.0.0.1:8080", "models": {"m": {}}}
    return {"backends": {"t": {**backend, **fields}}}


def test_numbers_and_booleans_from_variables_are_coerced() -> None:
    """``${VAR}`` always yields a string; numbers and booleans read from it keep their type."""
    document = {"server": {"port": "${PORT}", "playground": "${PLAYGROUND}",
                           "shutdown_timeout": "${DRAIN}", "limits": {"max_inputs": " 64 "}},
                **one_backend(timeout=5, max_concurrency="8.0",
                              managed={"runtime": "docker", "image": "x:1", "pull": "on",
                                       "init": "0", "ports": ["9000", 9001]})}
    config = parse_config(document, env={"PORT": "8001", "PLAYGROUND": "no", "DRAIN": "2.5"})
    assert (config.server.port, config.server.playground) == (8001, False)
    assert config.server.shutdown_timeout == 2.5 and config.server.limits.max_inputs == 64
    tei = config.backends["t"]
    assert tei.timeout == 5.0 and type(tei.timeout) is float and tei.max_concurrency == 8
    assert tei.managed is not None
    assert (tei.managed.pull, tei.managed.init, tei.managed.ports) == (True, False, (9000, 9001))


@pytest.mark.parametrize(("text", "value"), [
    ("true", True), ("True", True), ("yes", True), ("on", True), ("1", True), ("y", True),
    ("false", False), ("FALSE", False), ("no", False), ("off", False), ("0", False),
    (1, True), (0, False),
])
def test_boolean_spellings(text: object, value: bool) -> None:
    config = parse_config({"server": {"playground": text}, **one_backend()}, env={})
    assert config.server.playground is value


@pytest.mark.parametrize(("where", "value", "message"), [
    ("port", "abc", "server.port: expected an integer, got 'abc'"),
    ("port", 80.5, "server.port: expected an integer, got 80.5"),
    ("port", 70000, "server.port: must be <= 65535, got 70000"),
    ("playground", "maybe", "server.playground: expected a boolean"),
    ("playground", 2, "server.playground: expected a boolean"),
    ("host", 8000, "server.host: expected a string, got 8000"),
    ("health_interval", 0, "server.health_interval: must be > 0, got 0"),
    ("limits", [], "server.limits: expected a mapping, got []"),
    ("port", True, "server.port: expected an integer, got True"),  # a mistake, not port 1
    ("shutdown_timeout", False, "server.shutdown_timeout: expected a number, got False"),
    ("health_timeout", float("inf"), "server.health_timeout: expected a number, got inf"),
    ("health_timeout", ".nan", "server.health_timeout: expected a number, got '.nan'"),
])
def test_a_wrong_value_says_what_was_expected_and_what_was_given(
        where: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"server": {where: value}, **one_backend()}, env={})
    [problem] = caught.value.problems
    assert problem.startswith(message), problem


def test_every_problem_in_one_model_is_reported_at_once() -> None:
    document = one_backend(kind="sqlite", models={"m": {
        "dimensions": 0, "max_batch": "many", "memory_gb": -1, "colour": "blue"}}, managed={
        "runtime": "docker", "image": "x:1", "gpus": [0, 1.5], "ports": [1], "args": ["a", None]})
    with pytest.raises(ConfigError) as caught:
        parse_config(document, env={})
    assert sorted(caught.value.problems) == [
        "backends.t.kind: expected 'ollama' or 'tei' or 'vllm' or 'openai', got 'sqlite'",
        "backends.t.managed.args[1]: expected a string, got None",
        "backends.t.managed.gpus[1]: expected a device id, got 1.5",
        "backends.t.managed.ports: expected a list of 2 items or null, got [1]",
        "backends.t.models.m.colour: unknown key",
        "backends.t.models.m.dimensions: must be > 0, got 0",
        "backends.t.models.m.max_batch: expected an integer or null, got 'many'",
        "backends.t.models.m.memory_gb: must be > 0, got -1.0",
    ]


def test_a_missing_key_and_a_bare_model_entry() -> None:
    document = {"backends": {"t": {"kind": "tei", "models": {"m": None}}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(document, env={})
    assert caught.value.problems == ["backends.t.base_url: required but missing"]
    config = parse_config(one_backend(models={"m": None}), env={})
    assert config.backends["t"].models["m"] == ModelConfig()


def test_keep_alive_takes_a_duration_or_seconds() -> None:
    document = {"backends": {"o": {"kind": "ollama", "base_url": "http://127.0.0.1:11434",
                                   "keep_alive": "5m", "models": {"m": {"keep_alive": 300}}}}}
    ollama = parse_config(document, env={}).backends["o"]
    assert ollama.keep_alive == "5m" and ollama.models["m"].keep_alive == 300


def test_bad_managed_port_ranges_and_doubled_credentials_are_refused() -> None:
    managed = {"runtime": "docker", "image": "x:1", "ports": [-5, 70000]}
    document = one_backend(managed=managed)
    document["backends"]["u"] = {"kind": "openai", "base_url": "http://user:pw@h:8000",
                                 "api_key": "k", "models": {"n": {}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(document, env={})
    assert sorted(caught.value.problems) == [
        "backends.t.managed: ports [-5, 70000] must be between 1 and 65535",
        "backends.u: credentials in base_url and api_key: give one of them",
    ]


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("backends: {}\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [f"{path}: not UTF-8 text (byte 18)"]


def test_rules_between_sections_are_checked_beside_type_errors() -> None:
    document = {"server": {"port": "eighty"}, "gpus": {0: {"memory_gb": 24}}, "backends": {
        "t": {"kind": "tei", "base_url": "http://h:1", "max_batch": "lots",
              "models": {"n": {"gpu": 7}, "k": {"keep_alive": "5m"}, "big": {
                  "gpu": 0, "memory_gb": 80}}}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(document, env={})
    assert sorted(caught.value.problems) == [
        "backends.t.max_batch: expected an integer or null, got 'lots'",
        "backends.t.models.big.memory_gb: 80 GB can never fit on device '0' (24 GB)",
        "backends.t.models.k.keep_alive: only ollama backends take keep_alive",
        "backends.t.models.n.gpu: device '7' is not declared under gpus",
        "server.port: expected an integer, got 'eighty'",
    ]


def test_an_ssh_engine_without_paramiko_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import embedding_gateway.config

    managed = {"runtime": "docker", "image": "x:1", "docker_host": "ssh://me@gpu-1"}
    assert parse_config(one_backend(managed=managed), env={})  # paramiko is installed here
    monkeypatch.setattr(embedding_gateway.config, "ssh_supported", lambda: False)
    with pytest.raises(ConfigError) as caught:
        parse_config(one_backend(managed=managed), env={})
    assert caught.value.problems == [
        "backends.t.managed: docker_host ssh://… needs paramiko: "
        "pip install 'embedding-gateway[ssh]'"]


@pytest.mark.parametrize(("gpus", "problem"), [
    (None, "gpus: expected a mapping, got None"),
    (["a"], "gpus: expected a mapping, got ['a']"),
    ({"0": None}, "gpus.0: expected a mapping, got None"),
    ({"0": {"memory_gb": 1, "mem": 2}}, "gpus.0.mem: unknown key"),
    ({"0": {"memory_gb": "abc"}}, "gpus.0.memory_gb: expected a number, got 'abc'"),
])
def test_a_broken_gpus_section_is_reported_not_raised(gpus: object, problem: str) -> None:
    document = {"gpus": gpus, **one_backend(models={"m": {"gpu": 0}})}
    with pytest.raises(ConfigError) as caught:
        parse_config(document, env={})
    assert caught.value.problems == [problem]


def test_a_config_without_backends_is_refused() -> None:
    """``backends: {}`` would serve nothing: every model a 404, also after a reload."""
    with pytest.raises(ConfigError) as caught:
        parse_config({"backends": {}}, env={})
    assert caught.value.problems == [
        "backends: at least one backend is needed: with none, every model is a 404"]


def test_a_reranker_on_ollama_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({"backends": {"o": {"kind": "ollama", "base_url": "http://127.0.0.1:1",
                                         "models": {"m": {"task": "rerank"}}}}}, env={})
    assert caught.value.problems == ["backends.o.models.m.task: Ollama has no rerank API"]


def test_token_ids_model_is_refused_for_ollama_which_takes_text_only() -> None:
    document = {"backends": {
        "o": {"kind": "ollama", "base_url": "http://127.0.0.1:11434",
              "models": {"bge-m3": {"token_ids": "model"}}},
        "v": {"kind": "vllm", "base_url": "http://127.0.0.1:8000",
              "models": {"m": {"token_ids": "model"}, "n": {"token_ids": "refuse"}}},
    }}
    with pytest.raises(ConfigError) as caught:
        parse_config(document, env={})
    assert caught.value.problems == [
        "backends.o.models.bge-m3.token_ids: ollama takes text only, not token ids; "
        "use openai (ids decoded to text) or refuse"
    ]
    del document["backends"]["o"]
    models = parse_config(document, env={}).backends["v"].models
    assert (models["m"].token_ids, models["n"].token_ids) == ("model", "refuse")
