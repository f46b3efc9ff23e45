"""Where keyed commands' records live: one small interface, two real stores.

A record is written when a keyed command is about to start (write-ahead: it exists
before the exec request goes out) and completed with the outcome when the command ends.
A record is never overwritten by a second claim, so a key runs at most once. Records
expire after `[durable] retention`. Owners (the processes running keyed commands) beat
a heartbeat into the same store, so any process that shares it can tell a command still
running somewhere from one whose process died (docs/architecture.md, "Durable commands").

- `server.sqlitestore`: an SQLite file in WAL mode, the embedded default; shared by the
  worker processes of one machine.
- `server.redisstore`: Redis or Valkey (`redis` package, asyncio client), shared by
  replicas: the claim is `SET NX` with an expiry.

Every failure of a store is StoreUnavailable (UNAVAILABLE): a keyed command whose record
cannot be written does not run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

HEARTBEAT_EVERY = 2.0  # seconds between an owner's heartbeats
HEARTBEAT_TTL = 6.0  # an owner not heard from for this long is dead


@dataclass(frozen=True)
class Record:
    """One key's record: what it was for, who runs it, and how it ended (once it has)."""

    scope: str  # the caller identity the key belongs to
    key: str
    fingerprint: str  # digest of the request (server.durable.fingerprint)
    owner: str  # the process that runs it (server.durable.Owner id)
    started: float  # wall clock, seconds since the epoch
    outcome: bytes | None = None  # encoded outcome (server.durable), None while running


class Store(Protocol):
    """The outcome store. Implementations raise StoreUnavailable for every failure and
    DurableLimit when `max_records` unexpired records are kept."""

    url: str  # for log lines: never carries a password

    async def claim(self, record: Record) -> Record | None:
        """Write `record` (outcome None) unless its (scope, key) exists: None when written
        (the caller now runs it), else the record already there, untouched."""

    async def finish(self, scope: str, key: str, outcome: bytes) -> None:
        """Complete a claimed record with its outcome (encoded by server.durable)."""

    async def forget(self, scope: str, key: str) -> None:
        """Remove a claimed record whose command never started (nothing reached the host),
        so a retry with the key may run it."""

    async def get(self, scope: str, key: str) -> Record | None:
        """The record of (scope, key), or None (never written, or expired)."""

    async def beat(self, owner: str) -> None:
        """Say that `owner` is alive, for HEARTBEAT_TTL seconds."""

    async def alive(self, owner: str) -> bool:
        """Whether `owner` has beaten within HEARTBEAT_TTL seconds."""

    async def gone(self, owner: str) -> None:
        """`owner` stops (a clean shutdown): it is dead from now on."""

    async def count(self) -> int:
        """Unexpired records kept (the scout_durable_records gauge)."""

    async def close(self) -> None:
        """Release connections and files."""
