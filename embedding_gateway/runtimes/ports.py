"""Whether a TCP port on this host is free, and who listens on it."""

from __future__ import annotations

import os
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



def listening_sockets(port: int) -> set[int]:
    """Inodes of the TCP sockets listening on ``port`` on this host (Linux ``/proc``)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as rows:
                next(rows, None)
                for row in rows:
                    fields = row.split()
                    local, state, inode = fields[1], fields[3], fields[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(int(inode))
        except OSError:
            continue
    return inodes


def sockets_of_group(pgid: int) -> set[int]:
    """Inodes of the sockets the processes of process group ``pgid`` hold open."""
    inodes = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                if int(stat.read().rsplit(")", 1)[1].split()[2]) != pgid:
                    continue
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                target = os.readlink(fd.path)
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
        except (OSError, ValueError, IndexError):
            continue
    return inodes
