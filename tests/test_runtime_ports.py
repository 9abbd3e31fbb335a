"""``is_port_free`` against real sockets."""

from __future__ import annotations

import os
import socket
import subprocess

from embedding_gateway.runtimes.ports import is_port_free, listening_sockets, sockets_of_group


def test_a_listening_port_is_not_free_until_it_is_closed() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert not is_port_free(port)
    assert is_port_free(port)


def test_a_listening_socket_is_found_with_the_process_group_holding_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        assert listening_sockets(port) == set()  # bound, not yet listening
        taken.listen()
        listening = listening_sockets(port)
        assert len(listening) == 1
        assert listening <= sockets_of_group(os.getpgid(0))
        other = subprocess.Popen(["sleep", "30"], start_new_session=True)
        try:  # a group of its own, holding no socket of ours
            assert not listening & sockets_of_group(other.pid)
        finally:
            other.kill()
            other.wait()
    assert listening_sockets(port) == set()
