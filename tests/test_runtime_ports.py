"""Free-port helpers against real sockets."""

from __future__ import annotations

import socket

import pytest

from embedding_gateway.runtimes.ports import free_port, is_port_free


def test_a_listening_port_is_not_free_and_is_skipped() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert not is_port_free(port)
        with pytest.raises(OSError, match=f"no free port between {port} and {port}"):
            free_port(between=(port, port))
    assert is_port_free(port)
    assert free_port(between=(port, port)) == port


def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
