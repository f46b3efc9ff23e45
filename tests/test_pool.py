"""The pool's rules, exactly, with a scripted connection factory (no network).

Real SSH servers exercise the pool in test_pool_ssh.py, and the assignment step alone is
checked in test_poolstate.py; here the async pool (reservations, waiters, connect tasks,
timeouts, cancellation) is checked rule by rule, and hypothesis checks the invariants
over random workloads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from server import pool as pool_module
from server.config import HostConfig, PoolSettings
from server.errors import HostRejected, HostUnavailable, PoolExhausted
from server.pool import Pool, Reservation


class FakeConn:
    """A connection that records its channels and complains if closed while busy."""

    def __init__(self, factory: Factory, host: str) -> None:
        self.factory = factory
        self.host = host
        self.closed = False
        self.active = 0
        self.refuse_above: int | None = None
        self.dead = False

    def is_closed(self) -> bool:
        return self.closed

    def close(self) -> None:
        if self.active:
            self.factory.violations.append(f"closed {self.host} with {self.active} channels")
        if not self.closed:
            self.closed = True
            self.factory.live -= 1

    async def wait_closed(self) -> None:
        await asyncio.sleep(0)


class Factory:
    """Scripted connects: counts, delays, failures, limits observed."""

    def __init__(self, delay: float = 0.0, fail: BaseException | None = None) -> None:
        self.delay = delay
        self.fail = fail
        self.connects = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.live = 0
        self.peak_live = 0
        self.conns: list[FakeConn] = []
        self.violations: list[str] = []
        self.per_conn_peak = 0

    async def __call__(self, host: HostConfig, on_lost: Callable[[], None]) -> FakeConn:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
            if self.fail is not None:
                raise self.fail
        finally:
            self.in_flight -= 1
        self.connects += 1
        self.live += 1
        self.peak_live = max(self.peak_live, self.live)
        conn = FakeConn(self, host.name)
        self.conns.append(conn)
        return conn

    def open(self, res: Reservation[FakeConn]) -> str:
        """Open a channel on the reserved connection as a server would: ok, full or dead."""
        conn = res.conn
        if conn.dead or conn.closed:
            conn.closed = True
            return "dead"
        if conn.refuse_above is not None and conn.active >= conn.refuse_above:
            return "refused"
        conn.active += 1
        self.per_conn_peak = max(self.per_conn_peak, conn.active)
        return "ok"


def host(name: str) -> HostConfig:
    return HostConfig(name=name, address="127.0.0.1", port=22, user="u")


def make_pool(factory: Factory, **overrides: float) -> Pool[FakeConn]:
    base = PoolSettings(
        shards=4,
        max_connections=10,
        max_connections_per_host=4,
        max_sessions_per_connection=4,
        max_concurrent_handshakes=4,
        idle_timeout=60,
        max_age=600,
    )
    return Pool(dataclasses.replace(base, **overrides), factory)  # type: ignore[arg-type]


def deadline(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


async def holding(
    pool: Pool[FakeConn], factory: Factory, name: str, hold: float
) -> asyncio.Task[FakeConn]:
    """A caller that has its channel (after a moment to get it) and keeps it for hold seconds."""
    task = asyncio.create_task(use(pool, factory, name, hold=hold))
    await asyncio.sleep(0.05)
    return task


async def use(
    pool: Pool[FakeConn], factory: Factory, name: str, hold: float = 0.0, wait: float = 5.0
) -> FakeConn:
    """One command: reserve, open a channel (retrying as server.launch does), hold, close."""
    until = deadline(wait)
    retried = False
    while True:
        res = await pool.reserve(host(name), until)
        outcome = factory.open(res)
        if outcome == "ok":
            break
        if outcome == "refused":
            res.refused()
            await asyncio.sleep(0.005)
        else:
            res.dead()
            assert not retried, "a dead connection is retried once"
            retried = True
    try:
        await asyncio.sleep(hold)
    finally:
        res.conn.active -= 1
        res.release()
    return res.conn


async def test_sequential_commands_reuse_one_connection() -> None:
    factory = Factory()
    pool = make_pool(factory)
    conns = {id(await use(pool, factory, "a")) for _ in range(100)}
    assert factory.connects == 1 and len(conns) == 1
    assert pool.stats.reuses == 99
    await pool.close()


async def test_a_connect_in_flight_holds_no_shard_lock() -> None:
    """The seed's fault: its one lock was held across connect(), so a cold host stalled all."""
    gate = asyncio.Event()

    class Gated(Factory):
        async def __call__(self, h: HostConfig, on_lost: Callable[[], None]) -> FakeConn:
            if h.name == "cold":
                await gate.wait()
            return await super().__call__(h, on_lost)

    factory = Gated()
    pool = make_pool(factory, shards=1)  # both hosts behind the one lock
    await use(pool, factory, "warm")
    cold = asyncio.create_task(use(pool, factory, "cold"))
    await asyncio.sleep(0.05)
    assert factory.in_flight == 0 and not cold.done()  # the cold connect waits on the gate
    started = time.perf_counter()
    for _ in range(20):  # a bounded wait: a lock held by the connect never frees
        await asyncio.wait_for(use(pool, factory, "warm"), 5)
    await asyncio.sleep(0.3)
    gate.set()
    await cold
    gated_for = time.perf_counter() - started
    timings = pool._shards[0].timings
    assert timings.hold.count >= 22
    # every section together held the lock for a sliver of the time the connect took
    assert timings.hold.sum < gated_for / 2
    await pool.close()


async def test_concurrent_misses_share_one_connect() -> None:
    factory = Factory(delay=0.05)
    pool = make_pool(factory)
    await asyncio.gather(*(use(pool, factory, "a") for _ in range(4)))
    assert factory.connects == 1
    await pool.close()


async def test_full_connections_open_more_up_to_the_host_limit() -> None:
    factory = Factory(delay=0.01)
    pool = make_pool(factory, max_connections_per_host=3)
    await asyncio.gather(*(use(pool, factory, "a", hold=0.05) for _ in range(30)))
    assert factory.connects == 3
    assert factory.per_conn_peak <= 4
    assert not factory.violations
    await pool.close()


async def test_bounded_total_with_many_hosts() -> None:
    factory = Factory(delay=0.01)
    pool = make_pool(factory, max_connections=5, max_connections_per_host=2)
    await asyncio.gather(*(use(pool, factory, f"h{i % 20}", hold=0.01) for i in range(200)))
    assert factory.peak_live <= 5
    assert not factory.violations
    assert "waiters=0" in repr(pool)
    await pool.close()


async def test_lru_idle_connection_makes_room_at_the_cap() -> None:
    factory = Factory()
    pool = make_pool(factory, max_connections=2)
    first = await use(pool, factory, "a")
    await use(pool, factory, "b")
    await use(pool, factory, "c")
    assert first.closed  # "a" was least recently used
    assert pool.stats.evictions == {"lru": 1}
    assert factory.live == 2
    await pool.close()


async def test_busy_connection_is_never_closed_to_make_room() -> None:
    factory = Factory()
    pool = make_pool(factory, max_connections=1)
    holder = await holding(pool, factory, "a", 0.5)
    with pytest.raises(PoolExhausted, match="b: no SSH channel became free"):
        await use(pool, factory, "b", wait=0.1)
    busy = await holder
    assert not busy.closed and not factory.violations
    assert "waiters=0" in repr(pool) and "budget_queue=0" in repr(pool)
    await use(pool, factory, "b")  # now "a" is idle and gives way
    assert busy.closed
    await pool.close()


async def test_waiters_are_served_in_fifo_order() -> None:
    factory = Factory()
    pool = make_pool(factory, max_connections=1, max_sessions_per_connection=1)
    order: list[int] = []

    async def job(i: int) -> None:
        res = await pool.reserve(host("a"), deadline())
        order.append(i)
        await asyncio.sleep(0.01)
        res.release()

    tasks = []
    for i in range(5):
        tasks.append(asyncio.create_task(job(i)))
        await asyncio.sleep(0.001)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    await pool.close()


async def test_a_place_handed_to_a_waiter_waits_for_the_settling_round_trip(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A closed channel's place goes to a waiter only once `settle` has answered (sshd
    may not have freed the session yet); with nobody waiting it is free at once; and a
    settle that never answers holds the place for SETTLE_LIMIT, no longer."""
    monkeypatch.setattr(pool_module, "SETTLE_LIMIT", 0.3)
    factory = Factory()
    gates: list[asyncio.Event] = []

    async def settle(conn: FakeConn) -> None:
        gate = asyncio.Event()
        gates.append(gate)
        await gate.wait()

    base = make_pool(factory, max_connections=1, max_sessions_per_connection=1)
    pool = Pool(base.settings, factory, settle=settle)
    first = await pool.reserve(host("a"), deadline())
    first.release()  # nobody waits: free at once, no round trip
    held = await pool.reserve(host("a"), deadline())
    assert (pool.stats.settles, gates) == (0, [])

    waiter = asyncio.create_task(pool.reserve(host("a"), deadline()))
    await asyncio.sleep(0.02)
    held.release()  # a waiter: the place is held for the round trip
    await asyncio.sleep(0.05)
    assert not waiter.done() and len(gates) == 1 and pool.stats.settles == 1
    gates[0].set()
    second = await asyncio.wait_for(waiter, 1.0)

    late = asyncio.create_task(pool.reserve(host("a"), deadline()))
    await asyncio.sleep(0.02)
    started = time.monotonic()
    second.release()  # this round trip is never answered
    third = await asyncio.wait_for(late, 2.0)
    assert 0.25 <= time.monotonic() - started < 1.5 and len(gates) == 2
    third.release()
    await pool.close()


async def test_cancelled_waiter_leaves_no_trace() -> None:
    factory = Factory()
    pool = make_pool(factory, max_connections=1, max_sessions_per_connection=1)
    holder = await holding(pool, factory, "a", 0.2)
    waiter = asyncio.create_task(use(pool, factory, "a"))
    await asyncio.sleep(0.01)
    assert "waiters=1" in repr(pool)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert "waiters=0" in repr(pool)
    await holder
    assert "channels=0" in repr(pool)
    await pool.close()


async def test_channel_granted_at_cancellation_goes_to_the_next_waiter() -> None:
    factory = Factory()
    pool = make_pool(factory, max_connections=1, max_sessions_per_connection=1)
    held = await pool.reserve(host("a"), deadline())
    first = asyncio.create_task(use(pool, factory, "a"))
    second = asyncio.create_task(use(pool, factory, "a"))
    await asyncio.sleep(0.01)
    assert "waiters=2" in repr(pool)
    # In one step: the channel is released and granted to `first`, which is then
    # cancelled before it can run. The channel must move on to `second`.
    held.release()
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert first.cancelled()
    await asyncio.wait_for(second, 1)
    assert "channels=0" in repr(pool) and "waiters=0" in repr(pool)
    await pool.close()


async def test_refused_channel_lowers_the_cap_and_retries_elsewhere() -> None:
    factory = Factory()
    pool = make_pool(factory, max_sessions_per_connection=4, max_connections_per_host=4)
    first = await use(pool, factory, "a")
    first.refuse_above = 2  # the server allows 2 sessions, the pool assumes 4
    await asyncio.gather(*(use(pool, factory, "a", hold=0.05) for _ in range(8)))
    assert pool.stats.refusals >= 1
    assert min(pc.cap for pc in pool.connections()) <= 2
    assert not factory.violations
    await pool.close()


async def test_dead_connection_is_evicted_and_the_next_reservation_connects_anew() -> None:
    factory = Factory()
    pool = make_pool(factory)
    first = await use(pool, factory, "a")
    first.dead = True
    second = await use(pool, factory, "a")  # use() saw "dead" once and reserved again
    assert second is not first and factory.connects == 2
    assert pool.stats.evictions == {"dead": 1}
    await pool.close()


async def test_a_retired_connection_takes_no_new_channels_and_closes_when_free() -> None:
    factory = Factory()
    pool = make_pool(factory)
    res = await pool.reserve(host("a"), deadline())
    res.retire()  # a channel open hung on it
    other = await pool.reserve(host("a"), deadline())
    assert other.conn is not res.conn and factory.connects == 2
    other.release()
    res.release()
    await asyncio.sleep(0)
    assert res.conn.closed and not other.conn.closed
    assert pool.stats.evictions == {"stalled": 1, "drained": 1}
    await pool.close()


async def test_connect_failure_reaches_every_waiter_once_and_the_host_backs_off() -> None:
    factory = Factory(delay=0.01, fail=HostUnavailable("a: connection refused", "a"))
    pool = make_pool(factory)
    results = await asyncio.gather(
        *(use(pool, factory, "a") for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, HostUnavailable) for r in results)
    assert len({id(r) for r in results}) == 3  # each caller has its own exception
    assert pool.stats.connects == {"error": 1}  # one connect for all, not retried
    with pytest.raises(HostUnavailable, match="connection refused"):
        await use(pool, factory, "a")  # in the backoff: the same error, at once
    assert pool.stats.connects == {"error": 1}
    assert "total=0/" in repr(pool)
    await pool.close()


async def test_failing_connects_beside_a_full_connection_back_off_instead_of_looping() -> None:
    """A host with one full connection and failing new connects: a few tries, not hundreds."""
    factory = Factory()
    pool = make_pool(factory, max_sessions_per_connection=1)
    holder = await holding(pool, factory, "a", 1.5)
    factory.fail = HostUnavailable("a: cannot connect: MaxStartups", "a")
    started = time.monotonic()
    with pytest.raises(HostUnavailable, match="MaxStartups") as info:
        await use(pool, factory, "a", wait=1.0)
    assert 0.9 < time.monotonic() - started < 1.5  # it waited for a channel, within its deadline
    assert "stayed busy" in info.value.message
    assert pool.stats.connects["error"] <= 3  # backoff: 0.5 s, then 1 s
    await holder
    await pool.close()


async def test_rejected_host_is_not_retried() -> None:
    factory = Factory(fail=HostRejected("a: host key not trusted", "a"))
    pool = make_pool(factory)
    with pytest.raises(HostRejected):
        await use(pool, factory, "a")
    assert pool.stats.retries == 0
    await pool.close()


async def test_handshakes_per_host_are_limited() -> None:
    factory = Factory(delay=0.05)
    pool = make_pool(
        factory,
        max_connections=50,
        max_connections_per_host=10,
        max_sessions_per_connection=1,
        max_concurrent_handshakes=2,
    )
    await asyncio.gather(*(use(pool, factory, "a", hold=0.05) for _ in range(10)))
    assert factory.peak_in_flight <= 2
    await pool.close()


async def test_idle_and_old_connections_expire() -> None:
    factory = Factory()
    pool = make_pool(factory, idle_timeout=0.05, max_age=10)
    conn = await use(pool, factory, "a")
    await asyncio.sleep(0.1)
    pool.reap()
    await asyncio.sleep(0)
    assert conn.closed and pool.stats.evictions == {"expired": 1}
    assert "open=0" in repr(pool)
    await pool.close()


async def test_old_busy_connection_retires_after_its_last_channel() -> None:
    factory = Factory()
    pool = make_pool(factory, idle_timeout=60, max_age=0.05)
    task = asyncio.create_task(use(pool, factory, "a", hold=0.2))
    await asyncio.sleep(0.1)
    pool.reap()
    (conn,) = factory.conns
    assert not conn.closed  # still carries a channel
    await task
    await asyncio.sleep(0)
    assert conn.closed and not factory.violations
    assert pool.stats.evictions == {"expired": 1, "drained": 1}
    await pool.close()


@settings(max_examples=60, deadline=None)
@given(
    jobs=st.lists(
        st.tuples(
            st.integers(0, 7),  # host
            st.floats(0, 0.01),  # hold
            st.booleans(),  # cancel while waiting
        ),
        min_size=1,
        max_size=40,
    ),
    max_total=st.integers(1, 6),
    cap=st.integers(1, 4),
    refuse=st.one_of(st.none(), st.integers(1, 3)),
)
@example(
    jobs=[(6, 0.0001, False), (5, 0.0, False), (2, 0.007, True), (2, 0.0, True)],
    max_total=2,
    cap=1,
    refuse=1,
)
def test_invariants_hold_under_random_load(
    jobs: list[tuple[int, float, bool]], max_total: int, cap: int, refuse: int | None
) -> None:
    """connections <= max total; channels per connection <= cap; busy ones never closed."""

    async def run() -> None:
        factory = Factory(delay=0.001)
        pool = make_pool(
            factory,
            max_connections=max_total,
            max_connections_per_host=max_total,
            max_sessions_per_connection=cap,
        )
        real_call = factory.__call__

        async def connect(h: HostConfig, on_lost: Callable[[], None]) -> FakeConn:
            conn = await real_call(h, on_lost)
            conn.refuse_above = refuse
            return conn

        pool._connect = connect
        tasks = [
            asyncio.create_task(use(pool, factory, f"h{h}", hold=hold, wait=2))
            for h, hold, _ in jobs
        ]
        await asyncio.sleep(0.002)
        for task, (_, _, cancel) in zip(tasks, jobs, strict=True):
            if cancel:
                task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for r in results:
            assert isinstance(r, FakeConn | asyncio.CancelledError), r
        assert factory.peak_live <= max_total
        assert factory.per_conn_peak <= cap
        assert not factory.violations
        for _ in range(200):  # a connect started for a caller who gave up may still run
            if pool.gauges()["connections_opening"] == 0:
                break
            await asyncio.sleep(0.005)
        g = pool.gauges()
        assert g["channels_in_use"] == 0 and g["waiters"] == 0
        assert g["connections_opening"] == 0
        assert g["connections_total"] == g["connections_open"] <= max_total
        await pool.close()
        assert factory.live == 0

    asyncio.run(run())


async def test_waiter_that_gives_up_leaves_no_slot_request_behind() -> None:
    factory = Factory()
    pool = make_pool(factory, max_connections=1)
    holder = await holding(pool, factory, "a", 0.3)
    with pytest.raises(PoolExhausted):
        await use(pool, factory, "b", wait=0.05)
    assert "waiters=0" in repr(pool) and "budget_queue=0" in repr(pool)
    await holder
    await pool.close()
