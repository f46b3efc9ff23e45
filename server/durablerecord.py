"""A keyed command's record and the Store protocol: what the stores and their users share.

Kept apart from `server.durablestore` (which picks a store by its URL, and so imports
each one) so that the stores can build on it without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from .errors import DurableLimit

HEARTBEAT_EVERY = 2.0  # seconds between an owner's heartbeats
HEARTBEAT_TTL = 6.0  # an owner not heard from for this long is dead


@dataclass(frozen=True)
class Record:
    """One key's record: what it was for, who runs it, and how it ended (once it has)."""

    scope: str  # the caller identity the key belongs to
    key: str
    fingerprint: str  # digest of the request (server.idempotency.fingerprint)
    owner: str  # the process that runs it (server.durable.Owner id)
    started: float  # wall clock, seconds since the epoch
    outcome: bytes | None = None  # encoded outcome (server.durable), None while running


def limit_reached(max_records: int) -> DurableLimit:
    """What a claim says when the store keeps max_records records (and not this key's)."""
    return DurableLimit(
        f"the outcome store keeps [durable] max_records ({max_records}) records: keyed "
        "commands are refused until older records expire; nothing ran"
    )


class Store(Protocol):
    """The outcome store. Implementations raise StoreUnavailable for every failure and
    DurableLimit when `max_records` unexpired records are kept.

    A store touches no file and no network before its first call that needs one (claim,
    finish, get, beat, alive): a server that never sees a key never creates the file.
    `count` and `gone` never open it (nothing was kept, and nobody beat). `retention` and
    `max_records` are read at each call, so a reload may set them.
    """

    url: str  # for log lines: never carries a password
    retention: float  # seconds a claimed record is kept (counted from the claim)
    max_records: int

    async def claim(self, record: Record) -> Record | None:
        """Write `record` (outcome None) unless its (scope, key) exists: None when written
        (the caller now runs it), else the record already there, untouched. At max_records,
        the record already there or DurableLimit. A claim that is cancelled may or may not
        have been written."""

    async def finish(self, scope: str, key: str, outcome: bytes) -> None:
        """Complete a claimed record with its outcome (encoded by server.durable); a record
        that expired meanwhile stays gone."""

    async def forget(self, scope: str, key: str) -> None:
        """Remove a claimed record whose command never started (nothing reached the host),
        so a retry with the key may run it."""

    async def get(self, scope: str, key: str) -> Record | None:
        """The record of (scope, key), or None (never written, or expired)."""

    async def beat(self, owner: str) -> None:
        """Say that `owner` is alive, for the heartbeat TTL (HEARTBEAT_TTL)."""

    async def alive(self, owner: str) -> bool:
        """Whether `owner` has beaten within the heartbeat TTL."""

    async def gone(self, owner: str) -> None:
        """`owner` stops (a clean shutdown): it is dead from now on."""

    async def count(self) -> int:
        """Unexpired records kept (the scout_durable_records gauge): kept as a number,
        refreshed now and then, never counted per call (each store says how close it is)."""

    async def close(self) -> None:
        """Release connections and files."""
