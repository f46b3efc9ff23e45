"""The sharded SSH connection pool: channel reservations on warm connections, bounded.

`await pool.reserve(host, deadline)` gives the caller a `Reservation`: one channel's place
on a connection to the host. The caller opens the channel itself and gives the place back
with `release()` once the channel is closed, or tells the pool what went wrong
(`refused()`, `dead()`, `retire()`). What to do after each event is decided by
`poolstate.assign()` (docs/architecture.md, "Pool rules"); this module runs the events,
the connects and closes, and the timers.

Shards and their locks. Hosts live in `N` shards chosen by a stable hash of the host name
(crc32, the same in every process, so a shard is also what maps a host to a worker or a
replica). A shard's lock guards its hosts' states: their connection lists, waiters and
backoffs. A *section* is one event applied to one host followed by `assign()`, and it
never awaits: an await under the lock would let another checkout see a half-changed
state, and would hold every host of the shard up behind one host's I/O (the seed's
global lock held across `connect()` serialised every cold host). So the lock is held for
microseconds; `LockTimings` measures how long callers wait for it and how long they hold
it. A checkout enters with `async with shard.lock`; a callback that cannot await (a
channel given back in a `finally`, asyncssh's connection_lost, a timer) enters directly,
which is correct only because the lock is always free between sections; `_Section`
checks that. The budget (`max_connections`) is pool-wide and touched only inside
sections, which never interleave in one event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Generic

from .config import HostConfig, PoolSettings
from .counters import MICROSECONDS, Histogram, Tally
from .errors import HostUnavailable, PoolExhausted, ScoutError
from .poolstate import (
    Budget,
    C,
    ConnState,
    HostState,
    Plan,
    PooledConnection,
    Waiter,
    assign,
    connect_error,
    connect_failed,
    connected,
    drain,
    give_back_channel,
    refused,
    remove,
    take_channel,
)

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 5.0  # bound on waiting for one closing connection

# connect(host, on_lost) opens a connection; on_lost is called when it closes.
ConnectFn = Callable[[HostConfig, Callable[[], None]], Awaitable[C]]
SettleFn = Callable[[C], Awaitable[object]]
SETTLE_LIMIT = 1.0  # the longest a closed channel's place waits for the server's word


class LockTimings:
    """How long sections waited for a shard's lock, and held it (microseconds, we hope)."""

    def __init__(self) -> None:
        self.wait = Histogram(MICROSECONDS)
        self.hold = Histogram(MICROSECONDS)

    def record(self, wait: float, hold: float) -> None:
        """Count one section."""
        self.wait.observe(wait)
        self.hold.observe(hold)


@dataclass
class PoolStats:
    """Counters of everything the pool does (exported as metrics)."""

    checkouts: int = 0
    reuses: int = 0
    waits: int = 0
    wait_seconds: Histogram = field(default_factory=Histogram)
    connects: Tally = field(default_factory=Tally)  # by result: ok, error
    connect_seconds: Histogram = field(default_factory=Histogram)
    refusals: int = 0
    retries: int = 0
    settles: int = 0  # places handed on only after a round trip (see Reservation.release)
    evictions: Tally = field(default_factory=Tally)  # by reason


class Shard(Generic[C]):
    """A slice of the hosts, with its own lock and its lock's timings."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.lock = asyncio.Lock()
        self.hosts: dict[str, HostState[C]] = {}
        self.timings = LockTimings()


class Reservation(Generic[C]):
    """One channel's place on a pooled connection, held until the channel is closed."""

    __slots__ = ("_done", "_pool", "pc")

    def __init__(self, pool: Pool[C], pc: PooledConnection[C]) -> None:
        self._pool = pool
        self.pc = pc
        self._done = False

    @property
    def conn(self) -> C:
        """The connection to open the channel on."""
        assert self.pc.conn is not None
        return self.pc.conn

    def release(self) -> None:
        """The channel is closed (or was never opened): free its place.

        When callers wait for the host, the place goes to one of them, whose channel
        open follows our close at once. sshd frees a session only after the packets it
        has read are all handled, so an open that arrives with the close (or with two
        more, under load) meets a full session table and is refused. A round trip on the
        connection first (the pool's `settle`) proves sshd has handled the close.
        """
        if self._done:
            return
        self._done = True
        pool, pc = self._pool, self.pc
        if pool._settle is not None and pc.host.waiters and pc.conn is not None:
            pool.stats.settles += 1
            pool._spawn(pool._settle_then_free(pc, pool._settle))
        else:
            pool._event(pc.host, lambda now, plan: None, pc)

    def refused(self) -> int:
        """The server refused the channel: lower the connection's cap; free the place.

        Returns how many other channels the connection carried: none means the server
        refuses sessions outright, not that the connection is full.
        """
        others = self.pc.channels - 1
        self._pool.stats.refusals += 1
        log.debug("channel refused on %r (%d other channels on it)", self.pc, others)
        if not self._done:
            self._done = True
            self._pool._event(self.pc.host, lambda now, plan: refused(self.pc, now), self.pc)
        return others

    def dead(self) -> None:
        """The connection died before the channel opened: evict it; free the place."""
        if not self._done:
            self._done = True
            pool = self._pool
            self._pool._event(
                self.pc.host, lambda now, plan: remove(self.pc, pool.budget, plan, "dead"), self.pc
            )

    def retire(self) -> None:
        """Stop choosing this connection (a channel open hung on it); keep the place held."""
        pool = self._pool
        pool._event(self.pc.host, lambda now, plan: drain(self.pc, pool.budget, plan, "stalled"))


class Pool(Generic[C]):
    """Warm SSH connections to many hosts, bounded in total and per host."""

    def __init__(
        self,
        settings: PoolSettings,
        connect: ConnectFn[C],
        *,
        clock: Callable[[], float] = time.monotonic,
        settle: SettleFn[C] | None = None,
    ) -> None:
        self.settings = settings
        self._connect = connect
        self._settle = settle
        self._clock = clock
        self._shards: list[Shard[C]] = [Shard(i) for i in range(settings.shards)]
        self.budget: Budget[C] = Budget(settings.max_connections)
        self._tasks: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False
        self._feeding = False
        self._all_released = asyncio.Event()
        self._all_released.set()
        self.stats = PoolStats()

    # ---- checkout ----------------------------------------------------------------

    async def reserve(self, host: HostConfig, deadline: float) -> Reservation[C]:
        """A channel's place on a connection to host, within deadline (the pool's clock).

        A connect failure fails the waiters it would have served with its own error; the
        host then backs off, and callers arriving meanwhile learn that error at once.
        """
        if self._closed:
            raise HostUnavailable("the server is shutting down", host.name)
        self._start_reaper()
        shard = self._shard(host.name)
        entered = time.perf_counter()
        async with shard.lock:
            held = time.perf_counter()
            now = self._clock()
            state = shard.hosts.get(host.name)
            if state is None:
                state = shard.hosts[host.name] = HostState(host, shard.index)
            self.stats.checkouts += 1
            pc = None if state.waiters else state.best_available()
            if pc is not None:
                take_channel(pc, self.budget, now)
                self._all_released.clear()
                self.stats.reuses += 1
                shard.timings.record(held - entered, time.perf_counter() - held)
                return Reservation(self, pc)
            waiter: Waiter[C] = Waiter(asyncio.get_running_loop().create_future(), now)
            state.waiters.append(waiter)
            self._all_released.clear()  # a grant may come from any section
            self.stats.waits += 1
            plan = assign(state, self.budget, self.settings, now)
            shard.timings.record(held - entered, time.perf_counter() - held)
        self._carry_out(state, plan)
        self._feed_budget()
        granted = False
        try:
            async with asyncio.timeout(max(deadline - now, 0)):
                pc = await waiter.future
            granted = True
        except TimeoutError:
            raise self._wait_error(state) from None
        finally:
            self.stats.wait_seconds.observe(self._clock() - now)
            if not granted:
                self._forget(state, waiter)
        return Reservation(self, pc)

    def _forget(self, state: HostState[C], waiter: Waiter[C]) -> None:
        """A waiter gave up: withdraw it; a channel granted to it that moment goes on."""
        future = waiter.future
        if not future.done():
            future.cancel()
        with suppress(ValueError):
            state.waiters.remove(waiter)
        if not future.cancelled() and future.exception() is None:
            self._event(state, lambda now, plan: None, future.result())  # give it back
        else:
            self._event(state, lambda now, plan: None)

    def _wait_error(self, state: HostState[C]) -> ScoutError:
        """Why a waiter's deadline passed: a connect error, a connect in flight, or no room."""
        name = state.name
        busy = state.count(ConnState.OPEN, ConnState.DRAINING)
        if state.backoff is not None:
            # the error may be an earlier request's: say it is the last connect's
            retry_in = max(state.backoff.until - self._clock(), 0.0)
            held = {0: "", 1: "; the one open connection stayed busy until the deadline"}.get(
                busy, f"; the {busy} open connections stayed busy until the deadline"
            )
            return HostUnavailable(
                f"{state.backoff.error.message} (the last connect attempt; the next is in "
                f"{retry_in:.1f}s{held})",
                name,
                mentions=state.backoff.error.mentions,
            )
        connecting = [pc for pc in state.conns if pc.state is ConnState.CONNECTING]
        if connecting:
            age = self._clock() - min(pc.created for pc in connecting)
            return HostUnavailable(
                f"{name}: the deadline passed while connecting to the host (connect in "
                f"flight for {age:.1f}s; connect_timeout is {self.settings.connect_timeout:g}s)",
                name,
            )
        return PoolExhausted(
            f"{name}: no SSH channel became free before the deadline ({busy} connections "
            f"busy, {self.budget.used}/{self.budget.limit} connections in the pool); "
            "retry later",
            name,
        )

    # ---- events: one section each, then the I/O it asks for ------------------------

    def _event(
        self,
        state: HostState[C],
        change: Callable[[float, Plan[C]], object],
        returned: PooledConnection[C] | None = None,
    ) -> None:
        """Apply a change (and give back `returned`'s channel) to a host, then assign."""
        shard = self._shards[state.shard]
        plan: Plan[C] = Plan()
        with _Section(shard):
            now = self._clock()
            if returned is not None:
                give_back_channel(returned, self.budget, now)
                if self.budget.channels == 0:
                    self._all_released.set()
            change(now, plan)
            step = assign(state, self.budget, self.settings, now)
        plan.connect += step.connect
        plan.close += step.close
        plan.evicted += step.evicted
        plan.wake_at = step.wake_at
        self._carry_out(state, plan)
        self._feed_budget()

    def _carry_out(self, state: HostState[C], plan: Plan[C]) -> None:
        """Start the connects and closes a section decided, and the host's backoff timer."""
        for pc, reason in plan.evicted:
            self.stats.evictions.add(reason)
            log.debug("evict %r (%s)", pc, reason)
        for pc in plan.connect:
            self._spawn(self._connect_one(pc))
        for conn in plan.close:
            self._spawn(_close(conn))
        if plan.wake_at is not None and state.wake is None:
            loop = asyncio.get_running_loop()
            delay = max(plan.wake_at - self._clock(), 0.0)
            state.wake = loop.call_later(delay, self._wake, state)

    def _wake(self, state: HostState[C]) -> None:
        """The host's backoff ended: connect again if callers still wait."""
        state.wake = None
        if not self._closed:
            self._event(state, lambda now, plan: None)

    def _feed_budget(self) -> None:
        """Serve hosts waiting for a place under max_connections, in FIFO order.

        Not re-entered: the sections it runs end by calling it again, and the outer
        loop already serves what they would.
        """
        if self._feeding:
            return
        self._feeding = True
        try:
            budget = self.budget
            while budget.queue and budget.has_room() and not self._closed:
                state = budget.queue.popleft()
                state.queued = False
                self._event(state, lambda now, plan: None)
        finally:
            self._feeding = False

    # ---- connects and closes (tasks, outside any section) --------------------------

    async def _connect_one(self, pc: PooledConnection[C]) -> None:
        """Open one connection and publish it, or record the failure."""
        state = pc.host
        config = state.config  # a reload may give the host new settings meanwhile
        started = self._clock()
        try:
            conn = await self._connect(config, lambda: self._lost(pc))
        except BaseException as exc:
            self.stats.connects.add("error")
            error = connect_error(state, exc)
            if not isinstance(exc, ScoutError | asyncio.CancelledError):
                log.exception("connect to %s failed unexpectedly", state.name, exc_info=exc)
            self._event(state, lambda now, plan: connect_failed(pc, error, self.budget, plan, now))
            if not isinstance(exc, Exception):
                raise
            return
        self.stats.connects.add("ok")
        self.stats.connect_seconds.observe(self._clock() - started)
        log.debug("connected to %s in %.3fs", state.name, self._clock() - started)

        def publish(now: float, plan: Plan[C]) -> None:
            if self._closed or pc.state is ConnState.CLOSED or conn.is_closed():
                pc.conn = conn
                remove(pc, self.budget, plan, "closed_at_once")
            elif state.config != config:  # made with settings a reload replaced
                pc.conn = conn
                remove(pc, self.budget, plan, "config_changed")
            else:
                connected(pc, conn, self.budget, now)

        self._event(state, publish)

    def _lost(self, pc: PooledConnection[C]) -> None:
        """asyncssh says the connection closed (keepalive, peer close): evict it at once."""
        if pc.conn is not None and pc.state is not ConnState.CLOSED:
            self._event(pc.host, lambda now, plan: remove(pc, self.budget, plan, "lost"))

    async def _settle_then_free(self, pc: PooledConnection[C], settle: SettleFn[C]) -> None:
        """Free a closed channel's place once the server has answered a round trip
        (bounded; a connection that fails it is seen lost by its own callback)."""
        try:
            assert pc.conn is not None
            async with asyncio.timeout(SETTLE_LIMIT):
                await settle(pc.conn)
        except Exception as exc:  # the place is freed whatever happened
            log.debug("%r: no answer to the settling round trip: %r", pc, exc)
        finally:
            self._event(pc.host, lambda now, plan: None, pc)

    def _spawn(self, coro: Awaitable[None]) -> None:
        """Run coro as a task the pool keeps until it ends."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def retire_hosts(self, names: set[str], reason: str) -> None:
        """Stop choosing the hosts' connections, and forget their connect failures: what
        they relied on changed (known_hosts, keys), so the next caller connects afresh.
        Idle connections close now, busy ones when their last channel ends."""
        for state in self.hosts():
            if state.name in names:
                self._retire(state, reason)

    def update_hosts(self, configs: Mapping[str, HostConfig], reason: str) -> set[str]:
        """A reload: each host the pool knows takes its new settings (configs: every host
        and jump host in force), and its old connections retire; a host no longer in
        configs retires its connections. Returns the names retired."""
        retired: set[str] = set()
        for state in self.hosts():
            fresh = configs.get(state.name)
            if fresh is not None:
                same = fresh == state.config  # labels aside: connects the same way
                state.config = fresh  # every connect from now on uses it
                if same:
                    continue
            self._retire(state, reason)
            retired.add(state.name)
        return retired

    def _retire(self, state: HostState[C], reason: str) -> None:
        def drain_all(now: float, plan: Plan[C]) -> None:
            state.backoff = None
            for pc in list(state.conns):
                drain(pc, self.budget, plan, reason)

        self._event(state, drain_all)

    # ---- health: idle timeout, maximum age -----------------------------------------

    def _start_reaper(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def _reap_forever(self) -> None:
        """Expire connections and forget unused hosts, periodically."""
        s = self.settings
        period = min(max(min(s.idle_timeout, s.max_age) / 4, 0.05), 30.0)
        while not self._closed:
            await asyncio.sleep(period)
            self.reap()

    def reap(self) -> None:
        """One pass of assign() over every host: expiry, lost connections, cap recovery."""
        for shard in self._shards:
            for state in list(shard.hosts.values()):
                self._event(state, lambda now, plan: None)
                if state.is_unused():
                    del shard.hosts[state.name]

    # ---- shutdown and introspection ------------------------------------------------

    async def close(self, drain_within: float = CLOSE_TIMEOUT) -> None:
        """Fail waiters, wait (bounded) for reservations to end, then close every connection.

        Reservations end when their channels close: the caller stops its command first
        (TERM, KILL, close), so a connection is never closed under a running command
        while that stop is within `drain_within` seconds.
        """
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        for shard in self._shards:
            for state in shard.hosts.values():
                for w in state.waiters:
                    if not w.future.done():
                        w.future.set_exception(
                            HostUnavailable("the server is shutting down", state.name)
                        )
                state.waiters.clear()
                if state.wake is not None:
                    state.wake.cancel()
        with suppress(TimeoutError):
            async with asyncio.timeout(drain_within):
                await self._all_released.wait()
        plan: Plan[C] = Plan()
        for shard in self._shards:
            for state in shard.hosts.values():
                for pc in list(state.conns):
                    remove(pc, self.budget, plan, "shutdown")
        for conn in plan.close:
            self._spawn(_close(conn))
        tasks = list(self._tasks)
        if self._reaper is not None:
            tasks.append(self._reaper)
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT + 1)

    @property
    def reserved(self) -> int:
        """Channel places held by callers right now."""
        return self.budget.channels

    def _shard(self, name: str) -> Shard[C]:
        """The shard of a host: a stable hash, the same in every process."""
        return self._shards[shard_of(name, len(self._shards))]

    @property
    def shards(self) -> list[Shard[C]]:
        """Every shard (for metrics)."""
        return self._shards

    def hosts(self) -> list[HostState[C]]:
        """Every host the pool knows now."""
        return [h for s in self._shards for h in s.hosts.values()]

    def host_view(self, name: str) -> tuple[int, int]:
        """One host's connections open and channels in use (ListHosts)."""
        state = self._shard(name).hosts.get(name)
        if state is None:
            return 0, 0
        live = [pc for pc in state.conns if pc.state is not ConnState.CONNECTING]
        return len(live), sum(pc.channels for pc in live)

    def connections(self) -> list[PooledConnection[C]]:
        """Every connection in the pool, in every state but closed."""
        return [pc for h in self.hosts() for pc in h.conns]

    def gauges(self) -> dict[str, int]:
        """Current sizes: connections by state, channels, waiters."""
        conns = self.connections()
        hosts = self.hosts()
        return {
            "connections_total": self.budget.used,
            "connections_open": sum(pc.state is ConnState.OPEN for pc in conns),
            "connections_opening": sum(pc.state is ConnState.CONNECTING for pc in conns),
            "connections_draining": sum(pc.state is ConnState.DRAINING for pc in conns),
            "connections_idle": len(self.budget.idle),
            "channels_in_use": sum(pc.channels for pc in conns),
            "waiters": sum(len(h.waiters) for h in hosts),
            "hosts_waiting_for_budget": len(self.budget.queue),
            "hosts": len(hosts),
        }

    def __repr__(self) -> str:
        g = self.gauges()
        return (
            f"<Pool open={g['connections_open']} opening={g['connections_opening']} "
            f"draining={g['connections_draining']} "
            f"total={g['connections_total']}/{self.settings.max_connections} "
            f"channels={g['channels_in_use']} idle={g['connections_idle']} "
            f"waiters={g['waiters']} budget_queue={g['hosts_waiting_for_budget']} "
            f"hosts={g['hosts']}>"
        )


class _Section:
    """A section entered without awaiting; checks the lock is free (no section awaits)."""

    __slots__ = ("entered", "shard")

    def __init__(self, shard: Shard[C]) -> None:
        self.shard: Shard[C] = shard
        self.entered = 0.0

    def __enter__(self) -> None:
        if self.shard.lock.locked():
            raise RuntimeError("a pool section awaited while holding its shard lock")
        self.entered = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.shard.timings.record(0.0, time.perf_counter() - self.entered)


def shard_of(name: str, shards: int) -> int:
    """A host's shard number: crc32 of its name, so every process agrees."""
    return zlib.crc32(name.encode()) % shards


async def _close(conn: C) -> None:
    """Close a connection and wait, bounded, for it to finish."""
    conn.close()
    with suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await conn.wait_closed()
