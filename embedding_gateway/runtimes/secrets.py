"""Keeping secret environment values out of messages and logs.

A variable is secret when its name contains TOKEN, KEY, SECRET or PASSWORD (any case).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD", re.IGNORECASE)
MASK = "***"


def is_secret_name(name: str) -> bool:
    return _SECRET_NAME.search(name) is not None


def scrub(text: str, env: Mapping[str, str]) -> str:
    """``text`` with every secret value of ``env`` replaced by ``***``."""
    for name, value in env.items():
        if value and is_secret_name(name):
            text = text.replace(value, MASK)
    return text
