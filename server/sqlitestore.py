"""The embedded outcome store: one SQLite file in WAL mode, shared by a machine's workers.

Speed: a keyed Execute pays for a claim and a finish, so both run right on the event
loop, on a connection whose busy timeout is 0: a WAL commit without fsync is tens of
microseconds, cheaper than handing it to a thread. Only when SQLite says BUSY or LOCKED
(another worker process holds the write lock) does the statement go again in this
store's one thread, on a second connection that waits up to `busy_timeout`; the loop
never waits on another process's lock. Whatever may take long (opening the file, pruning
expired rows, counting them, checkpointing the WAL into the file) runs in that thread too.

Durability: `synchronous=NORMAL` in WAL mode writes each commit into the WAL file (a
write(2), no fsync) before the statement returns, and SQLite syncs only at checkpoints.
A process killed by SIGKILL has handed its writes to the kernel, which keeps them: the
claim is there for the next process. Power loss or a kernel crash can lose the last
commits (the file stays consistent): that takes FULL, an fsync per commit (milliseconds
on most disks), which this store does not pay for.

Files are created 0600 (SQLite gives the -wal and -shm files the database's mode), the
directory 0700.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .durablerecord import HEARTBEAT_TTL, Record, limit_reached
from .errors import StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

BUSY_TIMEOUT = 2.0  # seconds a statement waits for another process's write lock
PRUNE_EVERY = 60.0  # seconds between deletions of expired rows (and recounts)
PRUNE_BATCH = 1000  # rows per DELETE, so the write lock is held briefly
RECOUNT_EVERY = 1.0  # at max_records, how often a claim may recount to make room
CHECKPOINT_BYTES = 4 * 1024 * 1024  # WAL written (roughly) between checkpoints
PAGE = 4096  # SQLite's default page: what a commit writes per page it changes
BUSY_CODES = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
OPEN_RETRY = 0.02  # seconds between tries of a new file's set-up that found it locked

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    owner TEXT NOT NULL,
    started REAL NOT NULL,
    outcome BLOB,
    expires REAL NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE INDEX IF NOT EXISTS records_expires ON records (expires);
CREATE TABLE IF NOT EXISTS owners (owner TEXT PRIMARY KEY, seen REAL NOT NULL);
"""
# A row whose (scope, key) exists is replaced only when it has expired (not yet pruned).
CLAIM = """
INSERT INTO records (scope, key, fingerprint, owner, started, outcome, expires)
VALUES (?, ?, ?, ?, ?, NULL, ?)
ON CONFLICT (scope, key) DO UPDATE SET
    fingerprint = excluded.fingerprint, owner = excluded.owner, started = excluded.started,
    outcome = NULL, expires = excluded.expires
WHERE records.expires <= ?
"""
SELECT = "SELECT fingerprint, owner, started, outcome FROM records WHERE scope = ? AND key = ?"


class SQLiteStore:
    """Records and heartbeats in one SQLite file (server.durablerecord.Store)."""

    def __init__(
        self,
        path: Path,
        *,
        retention: float,
        max_records: int,
        heartbeat_ttl: float = HEARTBEAT_TTL,
        busy_timeout: float = BUSY_TIMEOUT,
    ) -> None:
        self.path = path
        self.url = f"sqlite:{path}"
        self.retention = retention
        self.max_records = max_records
        self.heartbeat_ttl = heartbeat_ttl
        self.busy_timeout = busy_timeout
        # The one thread: the waiting connection is used there only, one job at a time.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="scout-sqlite")
        self._fast: sqlite3.Connection | None = None  # on the loop, busy timeout 0
        self._slow: sqlite3.Connection | None = None  # in the thread, busy_timeout
        self._opening: asyncio.Future[tuple[sqlite3.Connection, sqlite3.Connection, int]] | None
        self._opening = None
        self._count = 0  # unexpired rows at the last recount, plus this process's claims
        self._next_prune = 0.0
        self._next_recount = 0.0
        self._written = 0  # bytes (roughly) written to the WAL since the last checkpoint
        # claims and finishes asked for in this event-loop turn, committed together
        self._together: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] | None
        self._together = None
        self._closed = False

    def __repr__(self) -> str:
        return f"SQLiteStore({self.url})"

    # ---- the Store calls -------------------------------------------------------------

    async def claim(self, record: Record) -> Record | None:
        """Insert the record unless a live one has its (scope, key)."""
        if self._fast is None:
            await self._connection()
        now = time.time()
        if self._count >= self.max_records and not await self._room(now):
            return await self._full(record)
        row = (record.scope, record.key, record.fingerprint, record.owner, record.started)
        args = (*row, now + self.retention, now)

        def claim(db: sqlite3.Connection) -> tuple[Any, ...] | None:
            while db.execute(CLAIM, args).rowcount != 1:
                found: tuple[Any, ...] | None = db.execute(SELECT, row[:2]).fetchone()
                if found is not None:
                    return found
            return None  # written (or the row there expired and was pruned meanwhile)

        found = await self._run_together(claim)
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY
            self._chore(self._prune, self._pruned)
        if found is not None:
            return Record(record.scope, record.key, *found)
        self._count += 1
        self._wrote(3 * PAGE)  # the row, its key and its expiry in their b-trees
        return None

    async def _full(self, record: Record) -> Record:
        """At max_records: the record of a key already there (a retry adds nothing), else
        DurableLimit."""
        found = await self.get(record.scope, record.key)
        if found is None:
            raise limit_reached(self.max_records)
        return found

    async def finish(self, scope: str, key: str, outcome: bytes) -> None:
        """Set the outcome of the (scope, key) row."""
        if self._fast is None:
            await self._connection()
        sql = "UPDATE records SET outcome = ? WHERE scope = ? AND key = ?"
        await self._run_together(lambda db: db.execute(sql, (outcome, scope, key)))
        self._wrote(PAGE + len(outcome))

    async def forget(self, scope: str, key: str) -> None:
        """Delete the (scope, key) row (its command never started)."""
        if self._fast is None:
            await self._connection()
        sql = "DELETE FROM records WHERE scope = ? AND key = ?"
        await self._run(lambda db: db.execute(sql, (scope, key)))
        self._wrote(PAGE)

    async def get(self, scope: str, key: str) -> Record | None:
        """The unexpired row of (scope, key)."""
        if self._fast is None:
            await self._connection()
        sql = SELECT + " AND expires > ?"
        found = await self._run(lambda db: db.execute(sql, (scope, key, time.time())).fetchone())
        return None if found is None else Record(scope, key, *found)

    async def beat(self, owner: str) -> None:
        """The owner's row, seen now."""
        if self._fast is None:
            await self._connection()
        sql = "INSERT INTO owners VALUES (?, ?) ON CONFLICT (owner) DO UPDATE SET seen = ?"
        now = time.time()
        await self._run(lambda db: db.execute(sql, (owner, now, now)))
        self._wrote(PAGE)

    async def alive(self, owner: str) -> bool:
        """Whether the owner's row was seen within the heartbeat TTL."""
        if self._fast is None:
            await self._connection()
        sql = "SELECT 1 FROM owners WHERE owner = ? AND seen > ?"
        since = time.time() - self.heartbeat_ttl
        return await self._run(lambda db: db.execute(sql, (owner, since)).fetchone()) is not None

    async def gone(self, owner: str) -> None:
        """Delete the owner's row (nothing to do if the file was never opened)."""
        if self._fast is not None:
            await self._run(lambda db: db.execute("DELETE FROM owners WHERE owner = ?", (owner,)))

    async def count(self) -> int:
        """The kept number: unexpired rows at the last recount (every PRUNE_EVERY seconds
        while claims come), plus this process's claims since. Other workers' claims since
        then are missing, and rows that expired since are still in it."""
        return self._count

    async def close(self) -> None:
        """Close both connections (the thread's in the thread, after the jobs queued)."""
        if self._closed:
            return
        self._closed = True
        if self._fast is not None:
            self._fast.close()
            self._fast = None
        slow = self._slow
        if slow is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, slow.close)
        self._slow = None
        self._thread.shutdown(wait=False)

    # ---- running statements ----------------------------------------------------------

    def _run_together(self, job: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """job with the others asked for in this event-loop turn, in one transaction
        (group commit): one WAL write, and the pages the rows share written once. Claims
        and finishes of concurrent keyed calls cost about half as much this way."""
        loop = asyncio.get_running_loop()
        if self._together is None:
            self._together = []
            loop.call_soon(self._commit_together)
        future: asyncio.Future[T] = loop.create_future()
        self._together.append((job, future))
        return future

    def _commit_together(self) -> None:
        """Run the gathered jobs as one transaction: on the loop's connection, or in the
        thread when another process holds the lock; each job's future gets its result."""
        batch, self._together = self._together or [], None

        def all_of(db: sqlite3.Connection) -> list[Any]:
            if len(batch) == 1:  # alone: its own statement is its transaction
                return [batch[0][0](db)]
            db.execute("BEGIN IMMEDIATE")
            try:
                results = [job(db) for job, _ in batch]
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return results

        def settle(results: list[Any] | None, error: BaseException | None) -> None:
            for index, (_, future) in enumerate(batch):
                if future.done():
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    assert results is not None
                    future.set_result(results[index])

        if self._fast is None:
            settle(None, self._unavailable("it is closed"))
            return
        try:
            settle(all_of(self._fast), None)
            return
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in BUSY_CODES:
                settle(None, self._unavailable(exc))
                return
        waited = self._in_thread(all_of)

        def done(future: asyncio.Future[list[Any]]) -> None:
            if future.cancelled():
                settle(None, self._unavailable("its thread was stopped"))
            elif (error := future.exception()) is not None:
                settle(None, error)
            else:
                settle(future.result(), None)

        waited.add_done_callback(done)

    async def _run(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """job on the loop's connection; in the thread, waiting for the lock, when another
        process holds it."""
        if self._fast is None:
            raise self._unavailable("it is closed")
        try:
            return job(self._fast)
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in BUSY_CODES:
                raise self._unavailable(exc) from None
        return await self._in_thread(job)

    def _in_thread(self, job: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """job on the waiting connection, in the store's thread, one at a time; the time it
        waited in the queue counts against its busy_timeout, so a lock held long fails
        each waiting call within busy_timeout, not one after another. A job cancelled
        before its turn never runs."""
        queued = time.monotonic()
        held = f"another process held its lock for over {self.busy_timeout:g} s"

        def run() -> T:
            db = self._slow
            if db is None or self._closed:
                raise self._unavailable("it is closed")
            left = self.busy_timeout - (time.monotonic() - queued)
            if left <= 0:
                raise self._unavailable(held)
            try:
                db.execute(f"PRAGMA busy_timeout = {int(left * 1000)}")
                return job(db)
            except sqlite3.Error as exc:
                if getattr(exc, "sqlite_errorcode", 0) & 0xFF in BUSY_CODES:
                    raise self._unavailable(held) from None
                raise self._unavailable(exc) from None

        return asyncio.get_running_loop().run_in_executor(self._thread, run)

    async def _connection(self) -> None:
        """Open the file at the first call (in the thread); a failed open is tried again
        by the next call."""
        if self._closed:
            raise self._unavailable("it is closed")
        if self._opening is None or self._opening.done():
            loop = asyncio.get_running_loop()
            self._opening = loop.run_in_executor(self._thread, self._open)
        fast, slow, count = await asyncio.shield(self._opening)
        if self._closed:  # closed while it opened
            fast.close()
            slow.close()
        elif self._fast is None:
            self._fast, self._slow, self._count = fast, slow, count
            self._next_prune = time.time() + PRUNE_EVERY  # counted just now

    def _open(self) -> tuple[sqlite3.Connection, sqlite3.Connection, int]:
        """In the thread: create the directory (0700) and the file (0600), set WAL up,
        make the tables; both connections and the unexpired rows."""
        slow = None
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            slow = _connect(self.path, self.busy_timeout)
            count = self._set_up(slow)
            return _connect(self.path, 0), slow, count
        except (OSError, sqlite3.Error, StoreUnavailable) as exc:
            if slow is not None:
                slow.close()
            if isinstance(exc, StoreUnavailable):
                raise
            raise self._unavailable(exc) from None

    def _set_up(self, db: sqlite3.Connection) -> int:
        """WAL mode and the tables (each step does nothing when done already); the
        unexpired rows. Processes opening a new file at once (workers at their first keyed
        call) can get "database is locked" at once, without SQLite's busy handler (the
        switch to WAL wants the file to itself), so a busy step is tried again, for
        busy_timeout in all."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode != "wal":
                    raise self._unavailable(f"it cannot use WAL mode (journal_mode {mode})")
                db.executescript(SCHEMA)
                return _unexpired(db)
            except sqlite3.Error as exc:
                busy = getattr(exc, "sqlite_errorcode", 0) & 0xFF in BUSY_CODES
                if not busy or time.monotonic() >= deadline:
                    raise
                time.sleep(OPEN_RETRY)

    # ---- chores in the thread ---------------------------------------------------------

    def _chore(self, job: Callable[[sqlite3.Connection], T], then: Callable[[T], None]) -> None:
        """job in the thread, in the background, then `then` on the loop with its result;
        a failure is logged (the calls that need the store will say so)."""

        def done(future: asyncio.Future[T]) -> None:
            if future.cancelled():
                return
            if (exc := future.exception()) is not None:
                log.warning("%s", exc)
            else:
                then(future.result())

        if not self._closed:
            self._in_thread(job).add_done_callback(done)

    def _prune(self, db: sqlite3.Connection) -> int | None:
        """In the thread: delete a batch of expired rows (a job of its own, so claims
        waiting for the thread go between batches); once none are left, the dead owners
        too, and the unexpired rows counted. None while more remain."""
        now = time.time()
        batch = (
            "DELETE FROM records WHERE rowid IN "
            "(SELECT rowid FROM records WHERE expires <= ? LIMIT ?)"
        )
        if db.execute(batch, (now, PRUNE_BATCH)).rowcount == PRUNE_BATCH:
            return None
        db.execute("DELETE FROM owners WHERE seen <= ?", (now - self.heartbeat_ttl,))
        return _unexpired(db)

    def _pruned(self, count: int | None) -> None:
        """After a batch: the next one (behind the jobs queued meanwhile), or the count."""
        if count is None:
            self._chore(self._prune, self._pruned)
        else:
            self._count = count

    async def _room(self, now: float) -> bool:
        """At max_records: prune and recount (once a RECOUNT_EVERY at most); whether there
        is room now."""
        if now >= self._next_recount:
            self._next_recount = now + RECOUNT_EVERY
            while (count := await self._in_thread(self._prune)) is None:
                pass
            self._count = count
        return self._count < self.max_records

    def _wrote(self, size: int) -> None:
        """Count what went to the WAL; past CHECKPOINT_BYTES, copy it into the file in the
        thread (the loop's connection never checkpoints: that fsyncs)."""
        self._written += size
        if self._written >= CHECKPOINT_BYTES:
            self._written = 0
            self._chore(_checkpoint, lambda _: None)

    def _unavailable(self, cause: Exception | str) -> StoreUnavailable:
        """The error for every failure, naming the store."""
        if isinstance(cause, OSError):
            cause = f"{cause.strerror or type(cause).__name__}"
        return StoreUnavailable(f"the outcome store {self.url} cannot be used: {cause}")


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    """A connection in autocommit mode, usable from any one thread at a time; it never
    checkpoints by itself (the store does, in its thread)."""
    db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA synchronous = NORMAL")
    db.execute("PRAGMA wal_autocheckpoint = 0")
    db.execute("PRAGMA journal_size_limit = 67108864")  # the WAL shrinks back to 64 MiB
    return db


def _unexpired(db: sqlite3.Connection) -> int:
    """The rows not expired yet (a scan of the expiry index: for the thread only)."""
    count: int = db.execute(
        "SELECT COUNT(*) FROM records WHERE expires > ?", (time.time(),)
    ).fetchone()[0]
    return count


def _checkpoint(db: sqlite3.Connection) -> None:
    """Copy the WAL into the database file, as far as readers allow (never waiting)."""
    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
