"""Keeping secrets out of messages and logs.

A secret is the value of an environment variable whose name contains TOKEN, KEY, SECRET or
PASSWORD (any case), or the value of a command-line flag so named (``--api-key VALUE``,
``--hf-token=VALUE``): model servers often print their arguments as they start. Wherever they
appear, the password of a URL (``postgres://user:password@host``) and the credential after
``Bearer``/``Basic`` are secrets too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

_SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)[^\s/@]+(@)")
_AUTH_VALUE = re.compile(r"(\b(?:Bearer|Basic)\s+)[^\s\"',;]+", re.IGNORECASE)
MASK = "***"


def is_secret_name(name: str) -> bool:
    return _SECRET_NAME.search(name) is not None


def secret_values(env: Mapping[str, str], args: Sequence[str] = ()) -> list[str]:
    values = [value for name, value in env.items() if value and is_secret_name(name)]
    for i, arg in enumerate(args):
        flag, equals, value = arg.partition("=")
        if not flag.startswith("-") or not is_secret_name(flag):
            continue
        if equals:
            values.append(value)
        elif i + 1 < len(args):
            values.append(args[i + 1])
    return [value for value in values if value]


def scrub(text: str, env: Mapping[str, str], args: Sequence[str] = ()) -> str:
    """``text`` with every secret of ``env`` and ``args`` replaced by ``***``."""
    for value in secret_values(env, args):
        text = text.replace(value, MASK)
    text = _URL_PASSWORD.sub(rf"\g<1>{MASK}\g<2>", text)
    return _AUTH_VALUE.sub(rf"\g<1>{MASK}", text)
