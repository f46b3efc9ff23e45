"""The assignment step alone: events applied to a host's state, with a fake clock.

As httpcore's pool tests do, each test compares whole states (the host's and the
budget's `repr`), not substrings, so any change the step makes shows up.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import pytest

from server.config import HostConfig, PoolSettings
from server.errors import HostUnavailable
from server.poolstate import (
    CAP_RECOVERY,
    FIRST_BACKOFF,
    Budget,
    HostState,
    Plan,
    PooledConnection,
    Waiter,
    assign,
    connect_failed,
    connected,
    drain,
    give_back_channel,
    refused,
    take_channel,
)

SETTINGS = PoolSettings(
    max_connections=3,
    max_connections_per_host=2,
    max_sessions_per_connection=2,
    max_concurrent_handshakes=2,
    idle_timeout=60,
    max_age=600,
)


class Conn:
    """A connection that only knows whether it is closed."""

    def __init__(self) -> None:
        self.closed = False

    def is_closed(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    async def wait_closed(self) -> None:
        return None


@pytest.fixture(autouse=True)
def fresh_ids() -> Iterator[None]:
    """Number connections from 1 in every test, so states compare as text."""
    saved = PooledConnection._ids
    PooledConnection._ids = itertools.count(1)
    yield
    PooledConnection._ids = saved


def host(name: str = "a") -> HostState[Conn]:
    return HostState(HostConfig(name=name, address="127.0.0.1", port=22, user="u"))


def wait(state: HostState[Conn], now: float = 0.0) -> Waiter[Conn]:
    waiter: Waiter[Conn] = Waiter(asyncio.get_running_loop().create_future(), now)
    state.waiters.append(waiter)
    return waiter


def open_all(plan: Plan[Conn], budget: Budget[Conn], now: float) -> list[Conn]:
    """Finish every connect the plan started."""
    conns = []
    for pc in plan.connect:
        conns.append(Conn())
        connected(pc, conns[-1], budget, now)
    return conns


def served(callers: int) -> tuple[HostState[Conn], Budget[Conn], list[Waiter[Conn]]]:
    """A host whose callers were all given channels on the connections opened for them."""
    a, budget = host(), Budget[Conn](3)
    waiters = [wait(a) for _ in range(callers)]
    open_all(assign(a, budget, SETTINGS, 0.0), budget, 0.0)
    assign(a, budget, SETTINGS, 0.0)
    return a, budget, waiters


async def test_first_caller_starts_one_connect_that_the_next_shares() -> None:
    a, budget = host(), Budget[Conn](3)
    wait(a)
    plan = assign(a, budget, SETTINGS, 0.0)
    assert len(plan.connect) == 1
    wait(a)  # a second caller fits on the connection in flight (cap 2): no new connect
    assert assign(a, budget, SETTINGS, 0.0).connect == []
    assert (
        repr(a) == "<host a conns=[<conn #1 a connecting 0/2>] waiters=2 backoff=None queued=False>"
    )
    assert repr(budget) == "<budget 1/3 channels=0 idle=[] queue=[]>"


async def test_a_third_caller_opens_a_second_connection_up_to_the_host_bound() -> None:
    a, budget = host(), Budget[Conn](3)
    for _ in range(5):
        wait(a)
    plan = assign(a, budget, SETTINGS, 0.0)
    assert [repr(pc) for pc in plan.connect] == [
        "<conn #1 a connecting 0/2>",
        "<conn #2 a connecting 0/2>",
    ]
    open_all(plan, budget, 1.0)
    assign(a, budget, SETTINGS, 1.0)
    assert repr(a) == (
        "<host a conns=[<conn #1 a open 2/2>, <conn #2 a open 2/2>] waiters=1 "
        "backoff=None queued=False>"
    )
    assert repr(budget) == "<budget 2/3 channels=4 idle=[] queue=[]>"


async def test_waiters_get_channels_in_order_on_the_fullest_connection() -> None:
    _, _, (first, second) = served(2)
    assert first.future.done() and second.future.done()
    assert first.future.result() is second.future.result()


async def test_a_draining_connection_does_not_count_against_the_host_bound() -> None:
    a, budget, _ = served(4)
    old = a.conns[0]
    drain(old, budget, Plan(), "expired")  # a long Stream keeps it busy for hours
    wait(a)
    give_back_channel(a.conns[1], budget, 1.0)
    plan = assign(a, budget, SETTINGS, 1.0)
    assert [repr(pc) for pc in plan.connect] == []  # conn #2 had room for it
    wait(a)
    wait(a)
    plan = assign(a, budget, SETTINGS, 1.0)
    assert [repr(pc) for pc in plan.connect] == ["<conn #3 a connecting 0/2>"]
    assert repr(a) == (
        "<host a conns=[<conn #1 a draining 2/2>, <conn #2 a open 2/2>, "
        "<conn #3 a connecting 0/2>] waiters=2 backoff=None queued=False>"
    )


async def test_a_failed_connect_fails_its_waiters_and_backs_off() -> None:
    a, budget = host(), Budget[Conn](3)
    w1, w2 = wait(a), wait(a)
    (pc,) = assign(a, budget, SETTINGS, 0.0).connect
    error = HostUnavailable("a: cannot connect: Connection refused", "a")
    plan: Plan[Conn] = Plan()
    connect_failed(pc, error, budget, plan, 10.0)
    assign(a, budget, SETTINGS, 10.0)
    for w in (w1, w2):
        exc = w.future.exception()
        assert isinstance(exc, HostUnavailable) and exc.message == error.message
    assert w1.future.exception() is not w2.future.exception()  # one object per waiter
    assert (
        repr(a)
        == "<host a conns=[] waiters=0 backoff=<backoff failures=1 until=10.5> queued=False>"
    )
    assert repr(budget) == "<budget 0/3 channels=0 idle=[] queue=[]>"
    w3 = wait(a)  # during the backoff, a new caller learns the error at once, no connect
    assert assign(a, budget, SETTINGS, 10.2).connect == []
    assert isinstance(w3.future.exception(), HostUnavailable)
    wait(a)  # after it, the next caller connects again
    assert len(assign(a, budget, SETTINGS, 10.0 + FIRST_BACKOFF).connect) == 1


async def test_backoff_doubles_while_connects_keep_failing() -> None:
    a, budget = host(), Budget[Conn](3)
    now, pauses = 0.0, []
    error = HostUnavailable("a: SSH connect timed out", "a")
    for _ in range(4):
        wait(a)
        (pc,) = assign(a, budget, SETTINGS, now).connect
        connect_failed(pc, error, budget, Plan(), now)
        assign(a, budget, SETTINGS, now)
        assert a.backoff is not None
        pauses.append(a.backoff.until - now)
        now = a.backoff.until
    assert pauses == [0.5, 1.0, 2.0, 4.0]


async def test_with_a_full_live_connection_a_failing_host_waits_for_the_backoff() -> None:
    """The hot-loop case: connects fail while one connection is full: no retry storm."""
    a, budget, _ = served(2)
    w = wait(a)
    (pc,) = assign(a, budget, SETTINGS, 1.0).connect
    connect_failed(pc, HostUnavailable("a: MaxStartups", "a"), budget, Plan(), 1.0)
    plan = assign(a, budget, SETTINGS, 1.1)
    assert plan.connect == [] and plan.wake_at == 1.5  # a timer, not a loop
    assert not w.future.done()  # the full connection may still free a channel
    give_back_channel(a.conns[0], budget, 1.2)
    assign(a, budget, SETTINGS, 1.2)
    assert w.future.done() and w.future.result() is a.conns[0]


async def test_at_the_budget_the_least_recently_used_idle_connection_gives_way() -> None:
    budget = Budget[Conn](2)
    a, b, c = host("a"), host("b"), host("c")
    for state, t in ((a, 1.0), (b, 2.0)):
        wait(state, t)
        open_all(assign(state, budget, SETTINGS, t), budget, t)
        assign(state, budget, SETTINGS, t)
        give_back_channel(state.conns[0], budget, t)
    old_conn = a.conns[0].conn
    wait(c, 3.0)
    plan = assign(c, budget, SETTINGS, 3.0)
    assert plan.close == [old_conn] and [e[1] for e in plan.evicted] == ["lru"]
    assert repr(a) == "<host a conns=[] waiters=0 backoff=None queued=False>"
    assert repr(budget) == "<budget 2/2 channels=0 idle=[<conn #2 b open 0/2>] queue=[]>"


async def test_without_an_idle_connection_hosts_queue_for_the_budget_in_order() -> None:
    budget = Budget[Conn](1)
    a, b, c = host("a"), host("b"), host("c")
    wait(a)
    open_all(assign(a, budget, SETTINGS, 0.0), budget, 0.0)
    assign(a, budget, SETTINGS, 0.0)  # a's connection is busy now
    wait(b)
    wait(c)
    assign(b, budget, SETTINGS, 0.0)
    assign(c, budget, SETTINGS, 0.0)
    assert repr(budget) == "<budget 1/1 channels=1 idle=[] queue=['b', 'c']>"
    c.waiters.clear()  # c's caller gave up: c leaves the queue
    assign(c, budget, SETTINGS, 0.0)
    assert repr(budget) == "<budget 1/1 channels=1 idle=[] queue=['b']>"


async def test_idle_connections_expire_and_old_busy_ones_drain() -> None:
    a, budget, _ = served(3)
    give_back_channel(a.conns[1], budget, 0.0)  # conn #2 idle, conn #1 busy
    plan = assign(a, budget, SETTINGS, 61.0)
    assert [e[1] for e in plan.evicted] == ["expired"]
    plan = assign(a, budget, SETTINGS, 601.0)
    assert [e[1] for e in plan.evicted] == ["expired"]
    assert (
        repr(a) == "<host a conns=[<conn #1 a draining 2/2>] waiters=0 backoff=None queued=False>"
    )
    give_back_channel(a.conns[0], budget, 602.0)
    give_back_channel(a.conns[0], budget, 602.0)
    plan = assign(a, budget, SETTINGS, 602.0)
    assert [e[1] for e in plan.evicted] == ["drained"] and len(plan.close) == 1
    assert repr(budget) == "<budget 0/3 channels=0 idle=[] queue=[]>"


async def test_a_refusal_lowers_the_cap_for_a_while_then_it_recovers() -> None:
    a, budget, _ = served(2)
    pc = a.conns[0]
    refused(pc, 1.0)
    give_back_channel(pc, budget, 1.0)
    assign(a, budget, SETTINGS, 1.0)
    assert repr(pc) == "<conn #1 a open 1/1>"
    assign(a, budget, SETTINGS, 1.0 + CAP_RECOVERY)
    assert repr(pc) == "<conn #1 a open 1/2>"


async def test_a_lost_connection_leaves_at_once_even_while_busy() -> None:
    a, budget = host(), Budget[Conn](3)
    wait(a)
    (conn,) = open_all(assign(a, budget, SETTINGS, 0.0), budget, 0.0)
    assign(a, budget, SETTINGS, 0.0)
    conn.closed = True
    plan = assign(a, budget, SETTINGS, 1.0)
    assert [e[1] for e in plan.evicted] == ["lost"] and plan.close == []
    assert repr(a) == "<host a conns=[] waiters=0 backoff=None queued=False>"
    assert repr(budget) == "<budget 0/3 channels=1 idle=[] queue=[]>"  # its holder gives back


async def test_take_and_give_back_keep_the_idle_list_exact() -> None:
    a, budget = host(), Budget[Conn](3)
    wait(a)
    open_all(assign(a, budget, SETTINGS, 0.0), budget, 0.0)
    assign(a, budget, SETTINGS, 0.0)
    pc = a.conns[0]
    assert repr(budget) == "<budget 1/3 channels=1 idle=[] queue=[]>"
    take_channel(pc, budget, 1.0)
    give_back_channel(pc, budget, 1.0)
    give_back_channel(pc, budget, 1.0)
    assert repr(budget) == "<budget 1/3 channels=0 idle=[<conn #1 a open 0/2>] queue=[]>"
