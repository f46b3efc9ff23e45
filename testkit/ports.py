"""Loopback ports for tests: one that nothing listens on."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port nobody listens on now: connections to it are refused (until
    something binds it: a proxy started on it must retry if it was taken meanwhile)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
