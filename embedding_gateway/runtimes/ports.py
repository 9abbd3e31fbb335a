"""Free TCP ports on this host."""

from __future__ import annotations

import socket


def is_port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when ``host:port`` can be bound right now (a hint: another process may take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not "in use"
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", between: tuple[int, int] | None = None) -> int:
    """A port that is free now: any the kernel picks, or the first free one in ``between``."""
    if between is None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            return int(sock.getsockname()[1])
    low, high = between
    for port in range(low, high + 1):
        if is_port_free(port, host):
            return port
    raise OSError(f"no free port between {low} and {high} on {host}")
