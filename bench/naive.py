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
from dataclasses import dataclass, field

import asyncssh

ConnectFn = Callable[[str], Awaitable[asyncssh.SSHClientConnection]]


@dataclass
class _Pooled:
    """A connection and when it was last handed out."""

    conn: asyncssh.SSHClientConnection
    last_used: float = field(default_factory=time.monotonic)

    def is_stale(self, idle_timeout: float) -> bool:
        """Closed, or idle for longer than the timeout."""
        return self.conn.is_closed() or time.monotonic() - self.last_used > idle_timeout

    def touch(self) -> None:
        """Mark as used now."""
        self.last_used = time.monotonic()


class GlobalLockPool:
    """One connection per host; connects happen while holding the one global lock."""

    def __init__(self, connect: ConnectFn, idle_timeout: float = 300.0) -> None:
        self._connect = connect
        self._idle_timeout = idle_timeout
        self._lock = asyncio.Lock()
        self._connections: dict[str, _Pooled] = {}

    async def get_connection(self, host: str) -> asyncssh.SSHClientConnection:
        """The host's connection; a miss connects under the global lock (the seed's flaw)."""
        async with self._lock:
            pooled = self._connections.get(host)
            if pooled is not None and not pooled.is_stale(self._idle_timeout):
                pooled.touch()
                return pooled.conn
            if pooled is not None:
                pooled.conn.close()
            conn = await self._connect(host)
            self._connections[host] = _Pooled(conn)
            return conn

    def size(self) -> int:
        """How many connections the pool holds."""
        return len(self._connections)

    async def close(self) -> None:
        """Close every connection."""
        conns = [p.conn for p in self._connections.values()]
        self._connections.clear()
        for conn in conns:
            conn.close()
        await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)
