"""The seed's "current" pool, rebuilt from its description, as a baseline.

One dictionary of connections, one per host, guarded by one global `asyncio.Lock` that
is held across `asyncssh.connect()`: a cache hit costs a lock round trip, a miss makes
every other caller, for every host, wait for that handshake. No bound on connections,
no limit on channels per connection. One difference from the seed on purpose: it calls
`conn.is_closed()` (the seed read the bound method, always true, and reconnected on
every request), so the baseline is the lock design, not that bug.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import asyncssh

ConnectFn = Callable[[str], Awaitable[asyncssh.SSHClientConnection]]


class GlobalLockPool:
    """One connection per host; connects happen while holding the one global lock."""

    def __init__(self, connect: ConnectFn, idle_timeout: float = 300.0) -> None:
        self._connect = connect
        self._idle_timeout = idle_timeout
        self._lock = asyncio.Lock()
        self._connections: dict[str, tuple[asyncssh.SSHClientConnection, float]] = {}

    async def get_connection(self, host: str) -> asyncssh.SSHClientConnection:
        """The host's connection; a miss connects under the global lock (the seed's flaw)."""
        async with self._lock:
            conn, last_used = self._connections.get(host, (None, 0.0))
            now = time.monotonic()
            if conn is not None and not conn.is_closed() and now - last_used < self._idle_timeout:
                self._connections[host] = (conn, now)
                return conn
            if conn is not None:
                conn.close()
            conn = await self._connect(host)
            self._connections[host] = (conn, time.monotonic())
            return conn

    def connections(self) -> list[asyncssh.SSHClientConnection]:
        """Every connection the pool holds."""
        return [conn for conn, _ in self._connections.values()]
