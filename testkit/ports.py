"""Ports for tests: one that nothing listens on."""

from __future__ import annotations

import socket


def free_port(address: str = "127.0.0.1") -> int:
    """A port of address nobody listens on now: connections to it are refused (until
    something binds it: a server started on it must retry if it was taken meanwhile)."""
    with socket.socket() as probe:
        probe.bind((address, 0))
        port: int = probe.getsockname()[1]
    return port
