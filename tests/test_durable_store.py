"""The outcome stores of keyed commands: one contract, a real SQLite file and a real Redis.

Every contract test runs on both (`store` is parametrized); the Redis half starts a
redis-server, so it is `external` (make test, not make test-fast). Then what only one
store has: SQLite's lazy file and its modes, its lock held by another process, a worker
SIGKILLed after its claim; Redis's password, which no message or log line may carry.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

import server
from server import redisstore, sqlitestore
from server.config import ConfigError, DurableSettings
from server.durablestore import Record, Store, default_store_url, open_store
from server.errors import DurableLimit, StoreUnavailable
from server.sqlitestore import SQLiteStore
from testkit.ports import free_port
from testkit.redis import RedisServer, start_redis

from .serverproc import ROOT

Factory = Callable[..., Store]
SHORT = 0.3  # seconds: a retention or heartbeat TTL a test waits out


def record(
    key: str, scope: str = "alice", fingerprint: str = "fp-1", owner: str = "g/p1"
) -> Record:
    """A running record of key."""
    return Record(scope, key, fingerprint, owner, time.time())


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.external)])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Factory]:
    """Opens stores of the kind under test on one empty store (`make(retention=...)`);
    closes them at the end."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        url = server.url
        flush = redis.asyncio.Redis.from_url(url)
        await flush.flushdb()
        await flush.aclose()
    else:
        url = f"sqlite:{tmp_path / 'state' / 'durable.sqlite3'}"
    opened: list[Store] = []

    def make(heartbeat_ttl: float = 6.0, **settings: Any) -> Store:
        store = open_store(DurableSettings(store=url, **settings), heartbeat_ttl=heartbeat_ttl)
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


async def within(seconds: float, call: Awaitable[Any]) -> Exception:
    """The exception call raises, which it must within seconds."""
    start = time.monotonic()
    with pytest.raises(Exception) as info:
        await asyncio.wait_for(call, seconds + 1)
    assert time.monotonic() - start < seconds, info.value
    assert isinstance(info.value, Exception)
    return info.value


# ---- the contract, on both stores ----------------------------------------------------


async def test_a_key_is_claimed_once_and_a_second_claim_gets_the_first_record(
    stores: Factory,
) -> None:
    store = stores()
    first = record("deploy-42")
    assert await store.claim(first) is None  # written: the caller runs it
    again = Record("alice", "deploy-42", "fp-2", "g/p2", time.time() + 5)
    assert await store.claim(again) == first  # untouched by the second claim
    assert await store.get("alice", "deploy-42") == first
    assert await store.count() == 1
    assert await store.get("alice", "deploy-43") is None


async def test_finish_completes_the_record_and_every_later_claim_sees_the_outcome(
    stores: Factory,
) -> None:
    store = stores()
    first = record("k")
    assert await store.claim(first) is None
    outcome = b"\x00exit 0\n\xff" + os.urandom(1024 * 1024)  # any bytes, a MiB of them
    await store.finish("alice", "k", outcome)
    done = Record(first.scope, first.key, first.fingerprint, first.owner, first.started, outcome)
    assert await store.get("alice", "k") == done
    assert await store.claim(record("k", owner="g/p9")) == done
    await store.finish("alice", "never-claimed", b"x")  # nothing to complete: nothing made
    assert await store.get("alice", "never-claimed") is None


async def test_a_record_expires_after_the_retention_counted_from_its_claim(
    stores: Factory,
) -> None:
    store = stores(retention=SHORT)
    assert await store.claim(record("k")) is None
    assert await store.claim(record("done")) is None
    await asyncio.sleep(SHORT / 2)
    await store.finish("alice", "done", b"outcome")  # keeps the claim's expiry
    assert await store.get("alice", "k") is not None
    await asyncio.sleep(SHORT / 2 + 0.2)
    assert await store.get("alice", "k") is None
    assert await store.get("alice", "done") is None
    fresh = record("k", fingerprint="fp-new")
    assert await store.claim(fresh) is None  # the key is free again
    assert await store.get("alice", "k") == fresh


async def test_an_owner_is_alive_while_it_beats_and_dead_after_the_ttl_or_gone(
    stores: Factory,
) -> None:
    store = stores(heartbeat_ttl=SHORT)
    assert not await store.alive("g/p1")  # never beat
    await store.beat("g/p1")
    assert await store.alive("g/p1")
    assert not await store.alive("g/p2")
    await asyncio.sleep(SHORT + 0.2)
    assert not await store.alive("g/p1")  # silent past the TTL: dead
    await store.beat("g/p1")
    assert await store.alive("g/p1")
    await store.gone("g/p1")
    assert not await store.alive("g/p1")


async def test_at_max_records_a_new_key_is_refused_and_a_retry_still_gets_its_record(
    stores: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in (sqlitestore, redisstore):
        monkeypatch.setattr(module, "RECOUNT_EVERY", SHORT)  # at the limit, recount soon
    store = stores(max_records=3, retention=SHORT)
    for key in ("a", "b", "c"):
        assert await store.claim(record(key)) is None
    with pytest.raises(DurableLimit, match=r"max_records \(3\)"):
        await store.claim(record("d"))
    assert await store.get("alice", "d") is None  # nothing was written
    retry = await store.claim(record("b", owner="g/p2"))
    assert retry is not None and retry.owner == "g/p1"  # a retry adds nothing: answered
    await asyncio.sleep(SHORT + 0.2)  # every record expired, and a recount is due
    assert await store.claim(record("d")) is None


@pytest.mark.parametrize(
    "pairs",
    [
        [("a", "b:c"), ("a:b", "c"), ("a:b:c", ""), ("", "a:b:c")],
        [("1", "a:b"), ("1:a", "b"), ("1:1", "a:b"), ("", "1:1:a:b")],
        [("scope", "k/host"), ("scope/k", "host"), ("scope", "k/host/")],
    ],
)
async def test_scopes_never_collide_whatever_the_key_holds(
    stores: Factory, pairs: list[tuple[str, str]]
) -> None:
    store = stores()
    for i, (scope, key) in enumerate(pairs):
        assert await store.claim(record(key, scope, fingerprint=f"fp-{i}")) is None, (scope, key)
    for i, (scope, key) in enumerate(pairs):
        found = await store.get(scope, key)
        assert found is not None and found.fingerprint == f"fp-{i}", (scope, key)


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("redis", marks=pytest.mark.external)])
def test_processes_racing_for_the_same_keys_win_each_exactly_once(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Four processes claim the same keys from the same instant, each in its own order:
    each key is won by exactly one, the one its record names."""
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        url = server.url
    else:
        url = f"sqlite:{tmp_path / 'durable.sqlite3'}"
    keys, start = 1000 if kind == "sqlite" else 300, time.time() + 1.5
    racers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.storerace",
                "race",
                url,
                f"g/p{n}",
                str(keys),
                str(start),
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        for n in range(4)
    ]
    won = [json.loads(proc.communicate(timeout=60)[0]) for proc in racers]
    assert all(proc.returncode == 0 for proc in racers)
    assert sorted(k for keys_won in won for k in keys_won) == list(range(keys))  # once each
    assert sum(1 for keys_won in won if keys_won) >= 2, [len(w) for w in won]  # they raced
    winners = {k: f"g/p{n}" for n, keys_won in enumerate(won) for k in keys_won}
    owners = asyncio.run(owners_of(url, keys))
    assert owners == [winners[k] for k in range(keys)]


async def owners_of(url: str, keys: int) -> list[str]:
    """The owner each race key's record names."""
    store = open_store(DurableSettings(store=url))
    try:
        found = [await store.get("race", f"k{i}") for i in range(keys)]
        return [r.owner if r else "" for r in found]
    finally:
        await store.close()


# ---- SQLite ---------------------------------------------------------------------------


async def test_the_sqlite_file_is_made_at_the_first_call_with_private_modes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state" / "scout" / "durable.sqlite3"
    store = open_store(DurableSettings(store=f"sqlite:{path}"))
    try:
        assert (await store.count(), repr(store)) == (0, f"SQLiteStore(sqlite:{path})")
        await store.gone("g/p1")
        assert not path.parent.exists()  # no key yet: no file, no directory
        assert await store.get("alice", "k") is None
        assert await store.claim(record("k")) is None
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        files = sorted(p.name for p in path.parent.iterdir())
        assert files == ["durable.sqlite3", "durable.sqlite3-shm", "durable.sqlite3-wal"]
        for name in files:
            assert stat.S_IMODE((path.parent / name).stat().st_mode) == 0o600, name
    finally:
        await store.close()


async def test_an_unusable_sqlite_path_is_store_unavailable_naming_it_until_it_is_fixed(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the directory should be")
    path = blocker / "durable.sqlite3"
    store = open_store(DurableSettings(store=f"sqlite:{path}"))
    try:
        calls = [lambda: store.claim(record("k")), lambda: store.get("alice", "k")]
        for call in [*calls, lambda: store.beat("g/p1")]:
            error = await within(2.0, call())
            assert isinstance(error, StoreUnavailable), error
            assert f"sqlite:{path} cannot be used: File exists" in error.message
        blocker.unlink()  # fixed: the next call opens it
        assert await store.claim(record("k")) is None
    finally:
        await store.close()


async def test_a_file_that_is_not_a_database_is_store_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "durable.sqlite3"
    path.write_bytes(b"not a database, " * 1000)
    store = open_store(DurableSettings(store=f"sqlite:{path}"))
    try:
        error = await within(2.0, store.claim(record("k")))
        assert isinstance(error, StoreUnavailable) and "not a database" in error.message
    finally:
        await store.close()


async def ticks_while(call: Awaitable[Any]) -> tuple[int, Any]:
    """How often a 10 ms ticker ran on the loop while call ran, and its result (or error)."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        result: Any = await call
    except StoreUnavailable as exc:
        result = exc
    finally:
        task.cancel()
    return ticks, result


class OtherProcess:
    """Another connection to a store file: to SQLite, another process's lock."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    def lock(self) -> None:
        """Take the write lock (and keep it)."""
        self.db.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        """Give it back."""
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")


@pytest.fixture
def other_process(tmp_path: Path) -> Iterator[OtherProcess]:
    """Another process's connection to tmp_path/durable.sqlite3; its lock released at the end."""
    other = OtherProcess(tmp_path / "durable.sqlite3")
    yield other
    other.release()
    other.db.close()


async def test_another_process_holding_the_lock_is_waited_for_off_the_loop(
    tmp_path: Path, other_process: OtherProcess
) -> None:
    path = tmp_path / "durable.sqlite3"
    store = SQLiteStore(path, retention=60, max_records=100, busy_timeout=0.5)
    try:
        assert await store.claim(record("before")) is None
        other_process.lock()
        start = time.monotonic()
        claims = [store.claim(record(f"k{i}")) for i in range(5)]
        ticks, errors = await ticks_while(asyncio.gather(*claims, return_exceptions=True))
        for error in errors:
            assert isinstance(error, StoreUnavailable), error
            assert f"{path} cannot be used: another process held its lock for over 0.5 s" in (
                error.message
            )
        # each waited its 0.5 s at most, the queue for the store's thread included
        assert 0.4 < time.monotonic() - start < 1.5
        assert ticks >= 20  # the loop ran on meanwhile: the wait was in the thread
        other_process.release()
        assert await store.get("alice", "k0") is None  # the refused claim wrote nothing
    finally:
        await store.close()


async def test_a_claim_that_met_the_lock_goes_through_once_it_is_released(
    tmp_path: Path, other_process: OtherProcess
) -> None:
    path = tmp_path / "durable.sqlite3"
    store = SQLiteStore(path, retention=60, max_records=100, busy_timeout=5.0)
    try:
        assert await store.claim(record("before")) is None
        other_process.lock()
        asyncio.get_running_loop().call_later(0.3, other_process.release)
        ticks, result = await ticks_while(store.claim(record("k")))
        assert result is None and ticks >= 10
        assert other_process.db.execute("SELECT owner FROM records WHERE key = 'k'").fetchall() == [
            ("g/p1",)
        ]
    finally:
        await store.close()


async def test_a_claim_survives_the_sigkill_of_the_process_that_made_it(tmp_path: Path) -> None:
    url = f"sqlite:{tmp_path / 'durable.sqlite3'}"
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "tests.storerace", "die", url, "k"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert (proc.returncode, out) == (-9, b"claimed\n")
    store = open_store(DurableSettings(store=url))
    try:
        found = await store.get("race", "k")
        assert found is not None and found.owner == "doomed" and found.outcome is None
        assert not await store.alive("doomed")
    finally:
        await store.close()


def test_the_default_file_is_under_the_state_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/state:{tmp_path}/other")
    assert default_store_url() == f"sqlite:{tmp_path}/state/durable.sqlite3"
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", f"{tmp_path}/xdg")
    assert default_store_url() == f"sqlite:{tmp_path}/xdg/scout/durable.sqlite3"
    monkeypatch.setenv("XDG_STATE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_store_url() == f"sqlite:{tmp_path}/.local/state/scout/durable.sqlite3"
    store = open_store(DurableSettings())
    assert store.url == default_store_url()


# ---- Redis ----------------------------------------------------------------------------


@pytest.fixture
def secret_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis of its own, with a password, that a test may stop and start."""
    server = start_redis(tmp_path / "redis", password="Sw0rdf1sh-secret")
    try:
        yield server
    finally:
        server.stop()


async def test_a_stopped_redis_is_store_unavailable_within_two_seconds_and_back_after(
    secret_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = open_store(DurableSettings(store=secret_redis.url))
    shown = f"redis://***@127.0.0.1:{secret_redis.port}/0"
    try:
        assert store.url == shown
        assert await store.claim(record("k")) is None
        secret_redis.stop()
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: store.claim(record("k2")),
            lambda: store.finish("alice", "k", b"out"),
            lambda: store.get("alice", "k"),
            lambda: store.beat("g/p1"),
            lambda: store.alive("g/p1"),
        ]
        for call in calls:
            error = await within(2.5, call())
            assert isinstance(error, StoreUnavailable), error
            assert shown in error.message, error.message
            assert "Sw0rdf1sh" not in f"{error} {error!r}"
        secret_redis.start()  # the same port, empty (no persistence)
        assert await store.claim(record("k")) is None
    finally:
        await store.close()
    logged = caplog.text + "".join(f"{r.args!r}" for r in caplog.records)
    assert "Sw0rdf1sh" not in logged


async def test_a_hung_redis_is_store_unavailable_within_the_command_timeout(
    secret_redis: RedisServer,
) -> None:
    store = open_store(DurableSettings(store=secret_redis.url))
    fresh = open_store(DurableSettings(store=secret_redis.url))  # connects while it hangs
    try:
        assert await store.claim(record("k")) is None
        secret_redis.pause()
        for call in (lambda: store.claim(record("k2")), lambda: fresh.get("alice", "k")):
            error = await within(redisstore.COMMAND_TIMEOUT + 0.5, call())
            assert isinstance(error, StoreUnavailable), error
            assert "Timeout" in error.message and "***@127.0.0.1" in error.message
        secret_redis.resume()
        assert (await store.claim(record("k"))) is not None  # the same server, back
    finally:
        secret_redis.resume()
        await store.close()
        await fresh.close()


async def test_a_redis_password_never_reaches_a_message_or_a_log_line(
    secret_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    right = secret_redis.url
    wrong = right.replace("Sw0rdf1sh-secret", "Wr0ng-secret")
    seen: list[str] = []
    store = open_store(DurableSettings(store=right))
    try:
        await store.beat("g/p1")
        assert await store.alive("g/p1")
        seen += [store.url, repr(store), repr(DurableSettings(store=right))]
    finally:
        await store.close()
    bad = open_store(DurableSettings(store=wrong))
    try:
        error = await within(2.5, bad.claim(record("k")))
        assert isinstance(error, StoreUnavailable), error
        seen += [str(error), repr(error), bad.url, repr(bad)]
    finally:
        await bad.close()
    typo = right.replace(f":{secret_redis.port}/", ":port/")  # not a URL redis-py takes
    with pytest.raises(ConfigError) as info:
        open_store(DurableSettings(store=typo)).url  # noqa: B018
    seen.append(str(info.value))
    seen += [caplog.text, *(f"{r.args!r} {r.exc_text}" for r in caplog.records)]
    for text in seen:
        assert "Sw0rdf1sh" not in text and "Wr0ng" not in text, text
    assert any("redis://***@127.0.0.1" in text for text in seen)


async def test_an_unreachable_redis_is_not_touched_until_the_first_call(tmp_path: Path) -> None:
    port = free_port()
    store = open_store(DurableSettings(store=f"redis://127.0.0.1:{port}/0"))
    try:
        assert await store.count() == 0  # nothing asked of redis yet
        error = await within(2.5, store.get("alice", "k"))
        assert isinstance(error, StoreUnavailable), error
        assert f"redis://127.0.0.1:{port}/0 cannot be used: Error 111" in error.message
    finally:
        await store.close()


def test_a_redis_store_without_the_redis_package_says_how_to_add_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [m for m in sys.modules if m == "redis" or m.startswith("redis.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.delitem(sys.modules, "server.redisstore", raising=False)
    monkeypatch.delattr(server, "redisstore", raising=False)  # `from . import` looks here first
    with pytest.raises(ConfigError, match=r"durable\.store: redis://\*\*\*@h/0 needs") as info:
        open_store(DurableSettings(store="redis://:pw@h/0"))
    assert "pip install 'scout[redis]'" in str(info.value)
    assert "pw" not in str(info.value).replace("pip", "")
