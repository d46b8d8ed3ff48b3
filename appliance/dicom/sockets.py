"""Socket tuning for DICOM connections (CF-08, D-3).

TCP_NODELAY: a C-STORE-RSP is a small write followed by a read; with Nagle on, each one can
wait ~40 ms for the peer's delayed ACK, capping a receiver at ~22 instances/s.
SO_RCVBUF/SO_SNDBUF: the conformance statement fixes 1,342,177 bytes; setting them turns off
kernel autotuning for that socket (0 in the config keeps autotuning). On a listening socket
they are inherited by accepted connections and size the TCP window offered in the SYN-ACK.
"""

from __future__ import annotations

import logging
import socket

log = logging.getLogger(__name__)


def tune(sock: socket.socket, buffer_size: int) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if buffer_size:
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, buffer_size)


def buffer_sizes(sock: socket.socket) -> tuple[int, int]:
    """What the kernel granted (Linux reports twice the request, clamped by rmem_max/wmem_max)."""
    return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))
