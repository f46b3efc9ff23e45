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
cannot be written does not run. `open_store` touches nothing: the store opens its file or
connection at its first call, so a server that never sees a key never creates the file.

Record, Store and the heartbeat times live in `server.durablerecord` (the stores build on
them) and are imported from here.
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import ConfigError, DurableSettings, redact
from .durablerecord import HEARTBEAT_EVERY, HEARTBEAT_TTL, Record, Store
from .sqlitestore import SQLiteStore

__all__ = [
    "HEARTBEAT_EVERY",
    "HEARTBEAT_TTL",
    "Record",
    "Store",
    "default_store_url",
    "open_store",
]

STORE_FILE = "durable.sqlite3"
REDIS_EXTRA = "pip install 'scout[redis]'"


def default_store_url() -> str:
    """`[durable] store` when unset: a file under systemd's StateDirectory= when scout runs
    with one, else under $XDG_STATE_HOME (~/.local/state by default), in `scout/`."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return f"sqlite:{Path(state) / STORE_FILE}"
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return f"sqlite:{base / 'scout' / STORE_FILE}"


def open_store(settings: DurableSettings, *, heartbeat_ttl: float = HEARTBEAT_TTL) -> Store:
    """The store `settings.store` names (the default file when it is empty), not opened
    yet. A redis URL without the `redis` package installed is a ConfigError saying how to
    add it. heartbeat_ttl: tests shorten it."""
    url = settings.store or default_store_url()
    retention, max_records = settings.retention, settings.max_records
    if url.startswith("sqlite:"):
        path = Path(url.removeprefix("sqlite:"))
        return SQLiteStore(
            path, retention=retention, max_records=max_records, heartbeat_ttl=heartbeat_ttl
        )
    try:
        from . import redisstore
    except ImportError as exc:
        if not (exc.name or "").startswith("redis"):
            raise
        raise ConfigError(
            f"durable.store: {redact(url)} needs the redis package, an optional extra: "
            f"{REDIS_EXTRA}"
        ) from None
    return redisstore.RedisStore(
        url, retention=retention, max_records=max_records, heartbeat_ttl=heartbeat_ttl
    )
