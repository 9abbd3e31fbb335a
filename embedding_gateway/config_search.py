"""Where the config file is when ``--config`` is not given."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .errors import ConfigError

CONFIG_VARIABLE = "EMBEDDING_GATEWAY_CONFIG"
SYSTEM_CONFIG = Path("/etc/embedding-gateway/config.yaml")
LOCAL_CONFIG = Path("config.yaml")
SEARCH_ORDER = (f"--config, then ${CONFIG_VARIABLE}, then {SYSTEM_CONFIG}, "
                f"then ./{LOCAL_CONFIG} (the first that is given or exists)")


def find_config(given: str | None, env: Mapping[str, str] | None = None) -> str:
    """``given``, else the environment variable, else the first of the system and the local
    file that exists. A path that is named (flag or variable) is used even if missing, so
    the error names it; when nothing is named and nothing exists, every place is listed."""
    environ = os.environ if env is None else env
    if given:
        return given
    named = environ.get(CONFIG_VARIABLE)
    if named:
        return named
    for candidate in (SYSTEM_CONFIG, LOCAL_CONFIG):
        if candidate.is_file():
            return str(candidate)
    raise ConfigError([f"no config file: looked at {SEARCH_ORDER}; none is set or exists"])
