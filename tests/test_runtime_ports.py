"""``is_port_free`` against real sockets."""

from __future__ import annotations

import socket

from embedding_gateway.runtimes.ports import is_port_free


def test_a_listening_port_is_not_free_until_it_is_closed() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert not is_port_free(port)
    assert is_port_free(port)
