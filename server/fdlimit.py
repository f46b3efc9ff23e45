"""File descriptors: one per SSH connection and per gRPC connection, so take what we may.

A service starts with its soft RLIMIT_NOFILE, often 1,024 (systemd's default), while the
hard limit is far higher; Go programs raise the soft limit to the hard one at start, and
so does scout, before the pool opens anything (worker processes inherit it). If even the
hard limit leaves no room for `max_connections` SSH connections and some callers, say so
at start rather than fail with EMFILE under load.
"""

from __future__ import annotations

import logging
import resource

log = logging.getLogger(__name__)

ROOM = 128  # beyond the SSH connections: callers' gRPC connections, logs, the metrics port


def raise_soft_limit() -> int:
    """Raise the soft limit on open files to the hard one; return the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20  # a soft limit cannot be infinite; the kernel's usual nr_open
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, hard, exc)
    return soft


def check(limit: int, max_connections: int) -> None:
    """Warn when the open-files limit leaves no room for the pool's bound."""
    if limit < max_connections + ROOM:
        log.warning(
            "open files are limited to %d: under max_connections (%d) + %d for callers; "
            "calls may fail with 'Too many open files' (raise LimitNOFILE or ulimit -n, or "
            "lower [pool] max_connections)",
            limit,
            max_connections,
            ROOM,
        )
