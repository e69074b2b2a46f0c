"""Loopback ports free now, for the parts of a system started on this machine (tests, the
benchmark, the drill): several copies may run at once, so no port is fixed."""

from __future__ import annotations

import socket

_handed: set[int] = set()


def free_port() -> int:
    """A loopback port nobody listens on now, and never one this process handed out
    before: the socket is closed at once, so the kernel may offer the same number to the
    next call, and the API's and the mocks' ports, chosen one after the other, once came
    out equal."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _handed:
            _handed.add(port)
            return port
