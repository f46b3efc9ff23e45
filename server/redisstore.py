"""The shared outcome store: Redis or Valkey, for replicas on several machines.

A record is one string key, `scout:rec:<len(scope)>:<scope>:<key>` (the length makes the
split unambiguous, so no key a caller writes can name another scope's record), holding
a state byte ("0" running, "1" done), a JSON line (fingerprint, owner, started) and the
outcome's bytes. A claim is `SET NX PX retention`; a finish is a small script that keeps
the line and the expiry (`SET ... KEEPTTL`) and puts the outcome after it, in one round
trip. Owners beat `scout:owner:<owner>` with an expiry of the heartbeat TTL; a clean
stop deletes it.

A stopped Redis must answer fast: connects give up after CONNECT_TIMEOUT, commands after
COMMAND_TIMEOUT (a hung server), and a command whose connection failed is tried once more
on a fresh one (a server restarted under a pooled connection), never with backoff.
Messages and `url` never carry the password.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable
from typing import TypeVar, cast
from urllib.parse import unquote, urlsplit

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as LostConnection
from redis.exceptions import RedisError

from .config import ConfigError, redact
from .durablerecord import HEARTBEAT_TTL, Record, limit_reached
from .errors import StoreUnavailable

T = TypeVar("T")

CONNECT_TIMEOUT = 1.0  # seconds to connect (twice, with the one retry)
COMMAND_TIMEOUT = 2.0  # seconds for an answer
COUNT_EVERY = 10.0  # seconds between DBSIZE reads
RECOUNT_EVERY = 1.0  # at max_records, how often a claim may read DBSIZE again
RUNNING, DONE = b"0", b"1"
# Keep the state byte's line (fingerprint, owner, started) and the expiry; add the outcome.
FINISH = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local line = string.sub(v, 2, string.find(v, '\\n', 1, true))
redis.call('SET', KEYS[1], '1' .. line .. ARGV[1], 'XX', 'KEEPTTL')
return 1
"""


def record_key(scope: str, key: str) -> str:
    """The Redis key of (scope, key): unambiguous whatever either holds."""
    return f"scout:rec:{len(scope)}:{scope}:{key}"


def encode(record: Record) -> bytes:
    """A running record's value."""
    line = json.dumps([record.fingerprint, record.owner, record.started])
    return RUNNING + line.encode() + b"\n"


def decode(scope: str, key: str, value: bytes) -> Record:
    """A record from its value."""
    line, _, outcome = value[1:].partition(b"\n")
    fingerprint, owner, started = json.loads(line)
    done = value[:1] == DONE
    return Record(scope, key, fingerprint, owner, started, outcome if done else None)


class RedisStore:
    """Records and heartbeats in Redis (server.durablerecord.Store)."""

    def __init__(
        self,
        url: str,
        *,
        retention: float,
        max_records: int,
        heartbeat_ttl: float = HEARTBEAT_TTL,
    ) -> None:
        self.url = redact(url)
        self.retention = retention
        self.max_records = max_records
        self.heartbeat_ttl = heartbeat_ttl
        try:  # no connection yet: the pool connects at the first command
            password = urlsplit(url).password
            self._secrets = [s for s in {password, unquote(password or "")} if s]
            self._client = redis.Redis.from_url(
                url,
                socket_connect_timeout=CONNECT_TIMEOUT,
                socket_timeout=COMMAND_TIMEOUT,
                # a pooled connection the server dropped: once more, on a new one; a
                # timeout is not tried again (a hung server answers neither)
                retry=Retry(NoBackoff(), 1, supported_errors=(LostConnection,)),
            )
        except ValueError:  # its message may quote the URL: not shown
            raise ConfigError(f"durable.store: {self.url} is not a Redis URL") from None
        self._finish = self._client.register_script(FINISH)
        self._used = False  # whether a command was sent (then `gone` has work to do)
        self._count = 0  # DBSIZE at the last read, plus this process's claims since
        self._next_count = 0.0  # when to read DBSIZE again
        self._next_recount = 0.0  # at max_records: the earliest read again

    def __repr__(self) -> str:
        return f"RedisStore({self.url})"

    async def claim(self, record: Record) -> Record | None:
        """SET NX with the retention as expiry; else the value there."""
        name = record_key(record.scope, record.key)
        now = time.monotonic()
        full = self._count >= self.max_records
        if now >= self._next_count or (full and now >= self._next_recount):
            self._count = await self._call(self._client.dbsize())
            self._next_count, self._next_recount = now + COUNT_EVERY, now + RECOUNT_EVERY
        if self._count >= self.max_records:  # a retry adds nothing: its record, if there
            there = await self.get(record.scope, record.key)
            if there is None:
                raise limit_reached(self.max_records)
            return there
        value = encode(record)
        ms = max(1, int(self.retention * 1000))
        while True:
            if await self._call(self._client.set(name, value, nx=True, px=ms)):
                self._count += 1
                return None
            found = await self._get(name)
            if found == value:  # ours: a SET retried after its answer was lost
                return None
            if found is not None:
                return self._decode(record.scope, record.key, found)
            # expired between the two commands: claim again

    async def finish(self, scope: str, key: str, outcome: bytes) -> None:
        """The outcome after the record's line, its expiry kept."""
        await self._call(self._finish(keys=[record_key(scope, key)], args=[outcome]))

    async def forget(self, scope: str, key: str) -> None:
        """DEL the record (its command never started)."""
        await self._call(self._client.delete(record_key(scope, key)))

    async def get(self, scope: str, key: str) -> Record | None:
        """GET, decoded."""
        found = await self._get(record_key(scope, key))
        return None if found is None else self._decode(scope, key, found)

    async def beat(self, owner: str) -> None:
        """The owner's key, for the heartbeat TTL."""
        ms = max(1, int(self.heartbeat_ttl * 1000))
        await self._call(self._client.set(f"scout:owner:{owner}", b"1", px=ms))

    async def alive(self, owner: str) -> bool:
        """Whether the owner's key is there."""
        return bool(await self._call(self._client.exists(f"scout:owner:{owner}")))

    async def gone(self, owner: str) -> None:
        """Delete the owner's key (nothing to do if nothing was ever asked of Redis)."""
        if self._used:
            await self._call(self._client.delete(f"scout:owner:{owner}"))

    async def count(self) -> int:
        """An approximation: DBSIZE, read every COUNT_EVERY seconds while claims come,
        plus this process's claims since. It counts every key of the database (owners'
        heartbeats too; give scout a database of its own), keys expired but not yet
        reclaimed by Redis, and misses other processes' claims since the last read."""
        return self._count

    async def close(self) -> None:
        """Close the pool's connections."""
        await self._client.aclose()

    async def _get(self, name: str) -> bytes | None:
        """GET (values are bytes: the client does not decode them)."""
        return cast("bytes | None", await self._call(self._client.get(name)))

    def _decode(self, scope: str, key: str, value: bytes) -> Record:
        """decode, or StoreUnavailable for a value scout did not write."""
        try:
            return decode(scope, key, value)
        except (ValueError, TypeError):
            raise StoreUnavailable(
                f"the outcome store {self.url} holds a record scout cannot read "
                f"({record_key(scope, key)!r})"
            ) from None

    async def _call(self, command: Awaitable[T]) -> T:
        """Await a command; every failure is StoreUnavailable naming the store."""
        self._used = True
        try:
            return await command
        except (RedisError, OSError) as exc:  # TimeoutError is an OSError
            reason = str(exc) or type(exc).__name__
            for secret in self._secrets:
                reason = reason.replace(secret, "***")
            message = f"the outcome store {self.url} cannot be used: {reason}"
            raise StoreUnavailable(message) from None
