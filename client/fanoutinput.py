"""Our stdin for a fan-out: read whole, up to a bound, and sent to every host.

ExecuteMany has no stdin stream: each host's command gets ExecuteRequest.stdin, the
same bytes everywhere, followed by EOF. So a piped stdin (`echo x | scout exec web1
web2 -- cat`) is read to its end before anything starts, up to MAX_STDIN (the server's
default `max_stdin_bytes`; a server set lower refuses the call, and nothing runs). More
than that is refused here, before any host is tried, rather than cut. A terminal gives
no stdin (as for one host), and neither does `-n`, for a stdin that never ends (a loop
reading a file of hosts, like ssh -n).
"""

from __future__ import annotations

import os

__all__ = ["MAX_STDIN", "StdinTooLarge", "read_bounded"]

MAX_STDIN = 16 * 1024 * 1024  # the server's default [exec] max_stdin_bytes
CHUNK = 64 * 1024


class StdinTooLarge(Exception):
    """More stdin than one ExecuteMany request may carry."""

    def __init__(self, limit: int) -> None:
        """Say the bound and what to do instead."""
        super().__init__(
            f"stdin is more than {limit} bytes: a fan-out sends it whole to every host, "
            "and a request carries at most that much (the server's max_stdin_bytes); "
            "copy the data to the hosts first, or use -n for no stdin"
        )


def read_bounded(fd: int, limit: int = MAX_STDIN) -> bytes:
    """All of a descriptor's data up to limit bytes; StdinTooLarge beyond (blocking:
    run it in a thread)."""
    chunks: list[bytes] = []
    size = 0
    while data := os.read(fd, CHUNK):
        size += len(data)
        if size > limit:
            raise StdinTooLarge(limit)
        chunks.append(data)
    return b"".join(chunks)
