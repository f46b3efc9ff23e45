"""The sharded SSH connection pool: warm connections, bounded, shared fairly.

A checkout (`async with pool.session(host, opener, deadline) as channel`) reserves one
channel slot on a connection to the host, lets `opener` open the channel, and gives
the slot back on exit. The rules (DESIGN.md, "Pool rules"):

- Hosts live in `N` shards picked by a stable hash of the host name. Each shard's
  `asyncio.Lock` is taken by checkouts on its hosts; every state change is a synchronous
  section that never awaits, and connects and closes run as tasks outside them. Because
  the sections never await, they may also touch the few pool-wide values (total count,
  the LRU of idle connections, the FIFO of hosts waiting for a slot) without another
  lock. Giving a channel back is such a section run as a plain call, not under
  `async with`: an await there would be a point where cancellation could leak the slot.
- A connection carries at most `cap` channels (`max_sessions_per_connection`, lowered
  when the server refuses a channel on a live connection). When every connection of a
  host is full, another opens, up to `max_connections_per_host`, with at most
  `max_concurrent_handshakes` handshakes in flight per host (sshd's MaxStartups).
- Single flight: a connect in flight counts as `cap` channels to come, so concurrent
  misses for one host share it instead of each opening their own.
- Never more than `max_connections` connections, open or opening. At the cap, the least
  recently used idle connection (no open channel) is closed to make room; a connection
  that carries a channel is never closed by the pool. Hosts that still need a slot wait
  in FIFO order; callers wait for a channel within their deadline.
- A caller that is cancelled or passes its deadline leaves no trace: its waiter is
  removed, and a channel granted to it at that moment goes to the next waiter.
- A refused channel on a live connection means "full": lower that connection's cap and
  try again after a short backoff. On a closed connection it means "dead": evict it and
  retry once on a fresh connection. Failures that may have reached the host are never
  retried here.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from .config import HostConfig, PoolSettings
from .errors import HostUnavailable, PoolExhausted, ScoutError

log = logging.getLogger(__name__)

_REFUSAL_BACKOFF = (0.005, 0.2)  # first and largest pause after a refused channel
_CLOSE_TIMEOUT = 5.0  # bound on waiting for a closing connection


class Connection(Protocol):
    """What the pool needs of a connection (asyncssh.SSHClientConnection has it)."""

    def is_closed(self) -> bool:
        """Whether the connection has closed."""

    def close(self) -> None:
        """Start closing the connection."""

    async def wait_closed(self) -> None:
        """Wait until the connection has closed."""


C = TypeVar("C", bound=Connection)
T = TypeVar("T")

# connect(host, on_lost) opens a connection; on_lost is called when it closes.
ConnectFn = Callable[[HostConfig, Callable[[], None]], Awaitable[C]]


class ChannelRefused(Exception):
    """The server refused a channel on a live connection: that connection is full."""


class ConnectionDead(Exception):
    """The connection died before the command reached the host."""


@dataclass
class PoolStats:
    """Counters of everything the pool does; gauges are computed by `Pool.gauges()`."""

    checkouts: int = 0
    reuses: int = 0
    waits: int = 0
    wait_seconds: float = 0.0
    wait_timeouts: int = 0
    connects: int = 0
    connect_failures: int = 0
    connect_seconds: float = 0.0
    refusals: int = 0
    retries: int = 0
    evictions: dict[str, int] = field(default_factory=dict)

    def evicted(self, reason: str) -> None:
        """Count one eviction by its reason."""
        self.evictions[reason] = self.evictions.get(reason, 0) + 1


class PooledConnection(Generic[C]):
    """One SSH connection and its channel accounting."""

    _ids = itertools.count(1)

    def __init__(self, entry: HostEntry[C], conn: C, cap: int, now: float) -> None:
        self.id = next(self._ids)
        self.entry = entry
        self.conn = conn
        self.cap = cap
        self.channels = 0
        self.peak_channels = 0
        self.created = now
        self.last_used = now
        self.retired = False  # no new channels; closed once idle

    def is_closed(self) -> bool:
        """Whether the SSH connection has closed (a method call, not an attribute)."""
        return self.conn.is_closed()

    def is_idle(self) -> bool:
        """No channel is open on this connection."""
        return self.channels == 0

    def is_available(self) -> bool:
        """Open, not retired, and below its channel cap."""
        return not self.retired and self.channels < self.cap and not self.is_closed()

    def has_expired(self, now: float, settings: PoolSettings) -> bool:
        """Past its maximum age, or idle for longer than the idle timeout."""
        if now - self.created >= settings.max_age:
            return True
        return self.is_idle() and now - self.last_used >= settings.idle_timeout

    def __repr__(self) -> str:
        state = "retired" if self.retired else "closed" if self.is_closed() else "open"
        return (
            f"<conn #{self.id} {self.entry.host.name} {state} channels={self.channels}/{self.cap}>"
        )


class Waiter(Generic[C]):
    """A caller waiting for a channel on one host."""

    __slots__ = ("future", "since")

    def __init__(self, future: asyncio.Future[PooledConnection[C]], since: float) -> None:
        self.future = future
        self.since = since


class HostEntry(Generic[C]):
    """A host's connections, connects in flight and waiting callers."""

    def __init__(self, host: HostConfig, shard: Shard[C]) -> None:
        self.host = host
        self.shard = shard
        self.conns: list[PooledConnection[C]] = []
        self.connecting = 0
        self.waiters: deque[Waiter[C]] = deque()
        self.slot_queued = False  # in the pool's FIFO of hosts waiting for a slot

    def available(self) -> PooledConnection[C] | None:
        """The fullest connection that still has room: keeps others idle to expire."""
        best: PooledConnection[C] | None = None
        for pc in self.conns:
            if pc.is_available() and (best is None or pc.channels > best.channels):
                best = pc
        return best

    def __repr__(self) -> str:
        return (
            f"<host {self.host.name} conns={len(self.conns)} connecting={self.connecting} "
            f"waiters={len(self.waiters)}>"
        )


class Shard(Generic[C]):
    """A slice of the hosts, with its own lock."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.hosts: dict[str, HostEntry[C]] = {}


class Pool(Generic[C]):
    """Warm SSH connections to many hosts, bounded in total and per host."""

    def __init__(
        self,
        settings: PoolSettings,
        connect: ConnectFn[C],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._connect = connect
        self._clock = clock
        self._shards: list[Shard[C]] = [Shard() for _ in range(settings.shards)]
        self._total = 0  # connections open or opening
        self._idle: OrderedDict[PooledConnection[C], None] = OrderedDict()  # LRU first
        self._slot_queue: deque[HostEntry[C]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False
        self.stats = PoolStats()

    # ---- checkout -------------------------------------------------------------

    @asynccontextmanager
    async def session(
        self,
        host: HostConfig,
        opener: Callable[[C], Awaitable[T]],
        deadline: float,
    ) -> AsyncIterator[T]:
        """Reserve a channel on a connection to host, open it with opener, release on exit.

        deadline is on the pool's clock. opener raises ChannelRefused or ConnectionDead
        for failures before the command reached the host; anything else passes through.
        """
        pc, value = await self._open(host, opener, deadline)
        try:
            yield value
        finally:
            self._give_back(pc)

    async def _open(
        self, host: HostConfig, opener: Callable[[C], Awaitable[T]], deadline: float
    ) -> tuple[PooledConnection[C], T]:
        """Check out a channel slot and open the channel, with the retry rules."""
        retried = False
        backoff = _REFUSAL_BACKOFF[0]
        while True:
            try:
                pc = await self._acquire(host, deadline)
            except HostUnavailable:
                if retried or self._clock() >= deadline:
                    raise
                retried = True
                self.stats.retries += 1
                continue
            try:
                return pc, await opener(pc.conn)
            except ChannelRefused:
                self._refused(pc)
                self.stats.refusals += 1
                pause = min(backoff * random.uniform(0.5, 1.0), deadline - self._clock())
                if pause <= 0:
                    raise PoolExhausted(
                        f"{host.name}: every SSH connection is at the server's session "
                        "limit (sshd MaxSessions) and none freed before the deadline",
                        host.name,
                    ) from None
                await asyncio.sleep(pause)
                backoff = min(backoff * 2, _REFUSAL_BACKOFF[1])
            except ConnectionDead as exc:
                self._dead(pc)
                if retried or self._clock() >= deadline:
                    raise HostUnavailable(
                        f"{host.name}: SSH connection lost before the command started: {exc}",
                        host.name,
                    ) from exc
                retried = True
                self.stats.retries += 1
            except BaseException:
                self._give_back(pc)
                raise

    async def _acquire(self, host: HostConfig, deadline: float) -> PooledConnection[C]:
        """A connection with one channel slot reserved for the caller."""
        if self._closed:
            raise HostUnavailable("the server is shutting down", host.name)
        self._start_reaper()
        shard = self._shard(host.name)
        now = self._clock()
        async with shard.lock:
            entry = shard.hosts.get(host.name)
            if entry is None:
                entry = shard.hosts[host.name] = HostEntry(host, shard)
            self.stats.checkouts += 1
            if not entry.waiters:
                pc = entry.available()
                if pc is not None:
                    self._take(pc, now)
                    self.stats.reuses += 1
                    return pc
            waiter: Waiter[C] = Waiter(asyncio.get_running_loop().create_future(), now)
            entry.waiters.append(waiter)
            self.stats.waits += 1
            self._service(entry)
        granted = False
        try:
            async with asyncio.timeout(max(deadline - now, 0)):
                pc = await waiter.future
            granted = True
            return pc
        except TimeoutError:
            self.stats.wait_timeouts += 1
            raise PoolExhausted(
                f"{host.name}: no SSH connection or channel became free before the deadline "
                f"({len(entry.conns)} connections, {entry.connecting} connecting, "
                f"{self._total}/{self.settings.max_connections} in the pool)",
                host.name,
            ) from None
        finally:
            self.stats.wait_seconds += self._clock() - now
            if not granted:
                self._forget(entry, waiter)

    def _forget(self, entry: HostEntry[C], waiter: Waiter[C]) -> None:
        """Remove a waiter that gave up; hand a channel granted at that moment on."""
        fut = waiter.future
        if not fut.done():
            fut.cancel()
        with suppress(ValueError):
            entry.waiters.remove(waiter)
        if entry.slot_queued and not self._needs_slot(entry):
            entry.slot_queued = False
            self._slot_queue.remove(entry)
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            self._give_back(fut.result())

    def _take(self, pc: PooledConnection[C], now: float) -> None:
        """Reserve one channel on pc."""
        pc.channels += 1
        pc.peak_channels = max(pc.peak_channels, pc.channels)
        pc.last_used = now
        self._idle.pop(pc, None)

    def _give_back(self, pc: PooledConnection[C]) -> None:
        """Return a channel slot, then serve the host's waiters (synchronous)."""
        pc.channels -= 1
        pc.last_used = self._clock()
        entry = pc.entry
        if pc.channels == 0:
            if pc not in entry.conns:
                if not pc.is_closed():  # evicted while it carried channels
                    self._spawn(self._close_conn(pc.conn))
            elif pc.retired or pc.is_closed():
                self._evict(pc, "retired")
            else:
                self._idle[pc] = None
                self._idle.move_to_end(pc)
        self._service(entry)
        self._feed_slots()

    def _refused(self, pc: PooledConnection[C]) -> None:
        """The server refused a channel on live pc: it is full at its current count."""
        pc.cap = max(1, pc.channels - 1)
        self._give_back(pc)

    def _dead(self, pc: PooledConnection[C]) -> None:
        """pc died under a caller: evict it and give the slot back."""
        if pc in pc.entry.conns:
            self._evict(pc, "dead")
        self._give_back(pc)

    # ---- the synchronous heart: who gets what ----------------------------------

    def _service(self, entry: HostEntry[C]) -> None:
        """Give free channels to waiters in order, then open connections for the rest."""
        now = self._clock()
        while entry.waiters:
            if entry.waiters[0].future.done():
                entry.waiters.popleft()
                continue
            pc = entry.available()
            if pc is None:
                break
            waiter = entry.waiters.popleft()
            self._take(pc, now)
            waiter.future.set_result(pc)
        cap = self.settings.max_sessions_per_connection
        while len(entry.waiters) > entry.connecting * cap and self._can_open(entry):
            if not self._reserve_slot(entry):
                break
            entry.connecting += 1
            self._spawn(self._connect_one(entry))

    def _can_open(self, entry: HostEntry[C]) -> bool:
        """Whether the host's own limits allow one more connect."""
        s = self.settings
        return (
            not self._closed
            and len(entry.conns) + entry.connecting < s.max_connections_per_host
            and entry.connecting < s.max_concurrent_handshakes
        )

    def _needs_slot(self, entry: HostEntry[C]) -> bool:
        """Whether the host has callers that no connection, open or opening, will serve."""
        cap = self.settings.max_sessions_per_connection
        return len(entry.waiters) > entry.connecting * cap and self._can_open(entry)

    def _reserve_slot(self, entry: HostEntry[C]) -> bool:
        """Count one more connection against the total, evicting an idle one if needed."""
        if self._total < self.settings.max_connections:
            self._total += 1
            return True
        if self._idle:
            victim = next(iter(self._idle))
            self._evict(victim, "lru")
            self._total += 1
            return True
        if not entry.slot_queued:
            entry.slot_queued = True
            self._slot_queue.append(entry)
        return False

    def _feed_slots(self) -> None:
        """Hand freed (or evictable) slots to hosts waiting for one, in FIFO order."""
        while self._slot_queue and (self._total < self.settings.max_connections or self._idle):
            entry = self._slot_queue.popleft()
            entry.slot_queued = False
            if self._needs_slot(entry):
                self._service(entry)

    def _evict(self, pc: PooledConnection[C], reason: str) -> None:
        """Take pc out of the pool and close it in the background if it is idle."""
        entry = pc.entry
        entry.conns.remove(pc)
        self._idle.pop(pc, None)
        pc.retired = True
        self._total -= 1
        self.stats.evicted(reason)
        log.debug("evict %r (%s)", pc, reason)
        if pc.channels == 0 or pc.is_closed():
            self._spawn(self._close_conn(pc.conn))

    # ---- connects and closes (tasks, outside any lock) ------------------------

    async def _connect_one(self, entry: HostEntry[C]) -> None:
        """Open one connection for entry and publish it, or fail the host's waiters."""
        holder: list[PooledConnection[C]] = []

        def on_lost() -> None:
            if holder:
                self._lost(holder[0])

        started = self._clock()
        try:
            conn = await self._connect(entry.host, on_lost)
        except BaseException as exc:
            async with entry.shard.lock:
                entry.connecting -= 1
                self._total -= 1
                self.stats.connect_failures += 1
                self._fail_waiters(entry, exc)
                self._service(entry)
                self._feed_slots()
            if not isinstance(exc, Exception):
                raise
            return
        now = self._clock()
        async with entry.shard.lock:
            entry.connecting -= 1
            self.stats.connects += 1
            self.stats.connect_seconds += now - started
            pc = PooledConnection(entry, conn, self.settings.max_sessions_per_connection, now)
            holder.append(pc)
            if self._closed or conn.is_closed():
                self._total -= 1
                self._spawn(self._close_conn(conn))
                self._fail_waiters(entry, HostUnavailable("connection closed at once"))
            else:
                entry.conns.append(pc)
                self._idle[pc] = None
            self._service(entry)
            self._feed_slots()

    def _fail_waiters(self, entry: HostEntry[C], exc: BaseException) -> None:
        """A connect failed: tell the waiters it would have served."""
        if entry.conns or entry.connecting:
            return  # other connections will serve them
        if not isinstance(exc, ScoutError):
            log.error("connect to %s failed unexpectedly", entry.host.name, exc_info=exc)
            exc = HostUnavailable(f"{entry.host.name}: connect failed", entry.host.name)
        while entry.waiters:
            fut = entry.waiters.popleft().future
            if not fut.done():
                fut.set_exception(exc)

    def _lost(self, pc: PooledConnection[C]) -> None:
        """The connection closed under us (keepalive, peer close): evict it at once."""
        if pc in pc.entry.conns:
            self._evict(pc, "lost")
            self._service(pc.entry)
            self._feed_slots()

    async def _close_conn(self, conn: C) -> None:
        """Close a connection and wait, bounded, for it to finish."""
        conn.close()
        with suppress(Exception):
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await conn.wait_closed()

    def _spawn(self, coro: Awaitable[None]) -> None:
        """Run coro as a task the pool keeps until it ends."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- health: idle timeout, maximum age ------------------------------------

    def _start_reaper(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def _reap_forever(self) -> None:
        """Close expired idle connections and retire old busy ones, periodically."""
        s = self.settings
        period = min(max(min(s.idle_timeout, s.max_age) / 4, 0.05), 30.0)
        while not self._closed:
            await asyncio.sleep(period)
            await self.reap()

    async def reap(self) -> None:
        """One pass of expiry over every shard."""
        now = self._clock()
        for shard in self._shards:
            async with shard.lock:
                for entry in shard.hosts.values():
                    for pc in list(entry.conns):
                        if pc.is_closed():
                            self._evict(pc, "closed")
                        elif pc.has_expired(now, self.settings):
                            if pc.is_idle():
                                self._evict(pc, "expired")
                            else:
                                pc.retired = True  # closed when its last channel ends
                    self._service(entry)
                stale = [
                    k for k, e in shard.hosts.items() if not (e.conns or e.connecting or e.waiters)
                ]
                for key in stale:
                    del shard.hosts[key]
        self._feed_slots()

    # ---- shutdown and introspection -------------------------------------------

    async def close(self) -> None:
        """Fail waiters, close every connection, and wait for them (bounded)."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        for shard in self._shards:
            async with shard.lock:
                for entry in shard.hosts.values():
                    for w in entry.waiters:
                        if not w.future.done():
                            w.future.set_exception(
                                HostUnavailable("the server is shutting down", entry.host.name)
                            )
                    entry.waiters.clear()
                    for pc in list(entry.conns):
                        entry.conns.remove(pc)
                        self._idle.pop(pc, None)
                        self._total -= 1
                        self._spawn(self._close_conn(pc.conn))
        tasks = list(self._tasks)
        if self._reaper is not None:
            tasks.append(self._reaper)
        if tasks:
            await asyncio.wait(tasks, timeout=_CLOSE_TIMEOUT + 1)

    def _shard(self, name: str) -> Shard[C]:
        """The shard of a host: a stable hash, the same in every process."""
        return self._shards[zlib.crc32(name.encode()) % len(self._shards)]

    def connections(self) -> list[PooledConnection[C]]:
        """Every connection in the pool."""
        return [pc for s in self._shards for e in s.hosts.values() for pc in e.conns]

    def gauges(self) -> dict[str, int]:
        """Current sizes: connections open and opening, channels, idle, waiters."""
        conns = self.connections()
        entries = [e for s in self._shards for e in s.hosts.values()]
        return {
            "connections_total": self._total,
            "connections_open": len(conns),
            "connections_opening": sum(e.connecting for e in entries),
            "connections_idle": len(self._idle),
            "channels_in_use": sum(pc.channels for pc in conns),
            "waiters": sum(len(e.waiters) for e in entries),
            "hosts_waiting_for_slot": len(self._slot_queue),
            "hosts": len(entries),
        }

    def host_gauges(self, name: str) -> dict[str, int]:
        """Sizes for one host."""
        entry = self._shard(name).hosts.get(name)
        if entry is None:
            return {"connections_open": 0, "connections_opening": 0, "channels_in_use": 0}
        return {
            "connections_open": len(entry.conns),
            "connections_opening": entry.connecting,
            "channels_in_use": sum(pc.channels for pc in entry.conns),
            "waiters": len(entry.waiters),
        }

    def __repr__(self) -> str:
        g = self.gauges()
        return (
            f"<Pool open={g['connections_open']} opening={g['connections_opening']} "
            f"total={g['connections_total']}/{self.settings.max_connections} "
            f"channels={g['channels_in_use']} idle={g['connections_idle']} "
            f"waiters={g['waiters']} slot_queue={g['hosts_waiting_for_slot']} "
            f"hosts={g['hosts']}>"
        )
