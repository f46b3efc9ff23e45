"""The pool's state, and the one assignment step that changes it: no I/O, no awaits.

Two words, kept apart:

- a *channel* is one SSH session channel on a connection; a connection carries at most
  `cap` of them (`max_sessions_per_connection`, lowered for a while after a refusal);
- the *budget* is the places under `max_connections`: one per connection that is
  connecting, open or draining, pool-wide.

A host's connections are one list, whatever their state: a connect in flight is a
connection in state CONNECTING, so "single flight" and "counts against the bounds" are
read off the list itself. After every event (a checkout, a channel given back, a connect
done or failed, a connection lost, a timer) the pool calls `assign()` for the host
concerned. It looks at the host's whole state and decides, in one place: which waiting
caller gets which channel, which connections expire, drain or close, whether to connect
(within the per-host bound, the handshake bound, the backoff and the budget), and whom
to fail. It returns a `Plan` of connects and closes; the pool does that I/O afterwards.

The budget is pool-wide. A host that needs a connection when the budget is spent either
takes the place of the least recently used idle connection of any host (closing it: the
one write outside the host's own shard, safe because an idle connection carries nothing),
or joins the FIFO of hosts waiting for budget, served as places free.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from .config import HostConfig, PoolSettings
from .errors import HostUnavailable, ScoutError

if TYPE_CHECKING:
    import asyncio

FIRST_BACKOFF = 0.5  # seconds before the second connect attempt after a failure
MAX_BACKOFF = 30.0  # the longest pause between connect attempts to one host
CAP_RECOVERY = 30.0  # a cap lowered by a refusal returns to the setting after this long


class Connection(Protocol):
    """What the pool needs of a connection (asyncssh.SSHClientConnection has it)."""

    def is_closed(self) -> bool:
        """Whether the connection has closed."""

    def close(self) -> None:
        """Start closing the connection."""

    async def wait_closed(self) -> None:
        """Wait until the connection has closed."""


C = TypeVar("C", bound=Connection)


class ConnState(enum.Enum):
    """Where a pooled connection is in its life."""

    CONNECTING = "connecting"  # a connect in flight: counts against every bound
    OPEN = "open"  # takes new channels
    DRAINING = "draining"  # no new channels; closed when its last one ends
    CLOSED = "closed"  # out of the pool


class PooledConnection(Generic[C]):
    """One SSH connection (or a connect in flight) and its channel accounting."""

    _ids = itertools.count(1)

    def __init__(self, host: HostState[C], cap: int, now: float) -> None:
        self.id = next(self._ids)
        self.host = host
        self.state = ConnState.CONNECTING
        self.conn: C | None = None
        self.cap = cap
        self.cap_restore_at: float | None = None
        self.channels = 0
        self.peak_channels = 0
        self.created = now
        self.last_used = now

    def is_closed(self) -> bool:
        """The SSH connection has closed (asyncssh tells the pool, but may be late)."""
        return self.conn is not None and self.conn.is_closed()

    def is_available(self) -> bool:
        """Open, and below its channel cap."""
        return self.state is ConnState.OPEN and self.channels < self.cap and not self.is_closed()

    def is_idle(self) -> bool:
        """Open, and no channel on it."""
        return self.state is ConnState.OPEN and self.channels == 0

    def has_expired(self, now: float, settings: PoolSettings) -> bool:
        """Past its maximum age, or idle for longer than the idle timeout."""
        if now - self.created >= settings.max_age:
            return True
        return self.channels == 0 and now - self.last_used >= settings.idle_timeout

    def __repr__(self) -> str:
        return f"<conn #{self.id} {self.host.name} {self.state.value} {self.channels}/{self.cap}>"


class Waiter(Generic[C]):
    """A caller waiting for a channel on one host."""

    __slots__ = ("future", "since")

    def __init__(self, future: asyncio.Future[PooledConnection[C]], since: float) -> None:
        self.future = future
        self.since = since


@dataclass
class Backoff:
    """Connects to a host failed: when the next attempt may start, and the last error."""

    failures: int
    until: float
    error: ScoutError

    def __repr__(self) -> str:
        return f"<backoff failures={self.failures} until={self.until:g}>"


class HostState(Generic[C]):
    """A host's connections (in every state), its waiting callers and its connect backoff."""

    def __init__(self, config: HostConfig, shard: int = 0) -> None:
        self.config = config
        self.shard = shard  # which shard holds this host (the pool's stable hash)
        self.conns: list[PooledConnection[C]] = []
        self.waiters: deque[Waiter[C]] = deque()
        self.backoff: Backoff | None = None
        self.queued = False  # in the budget's FIFO of hosts waiting for a place
        self.wake: asyncio.TimerHandle | None = None  # the pool's timer for the backoff

    @property
    def name(self) -> str:
        """The inventory name."""
        return self.config.name

    def count(self, *states: ConnState) -> int:
        """How many of the host's connections are in one of these states."""
        return sum(1 for pc in self.conns if pc.state in states)

    def best_available(self) -> PooledConnection[C] | None:
        """The fullest connection that still has room: keeps others idle, so they expire."""
        best: PooledConnection[C] | None = None
        for pc in self.conns:
            if pc.is_available() and (best is None or pc.channels > best.channels):
                best = pc
        return best

    def is_unused(self) -> bool:
        """Nothing to keep: no connection, no waiter, not queued, no backoff in force."""
        return not (self.conns or self.waiters or self.queued or self.backoff)

    def __repr__(self) -> str:
        return (
            f"<host {self.name} conns={self.conns} waiters={len(self.waiters)} "
            f"backoff={self.backoff} queued={self.queued}>"
        )


class Budget(Generic[C]):
    """The places under `max_connections`, the idle connections by age of use, the FIFO."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.channels = 0  # channel places reserved by callers, on every connection
        self.idle: OrderedDict[PooledConnection[C], None] = OrderedDict()  # least recent first
        self.queue: deque[HostState[C]] = deque()

    def has_room(self) -> bool:
        """A place is free, or an idle connection could give up its place."""
        return self.used < self.limit or bool(self.idle)

    def __repr__(self) -> str:
        return (
            f"<budget {self.used}/{self.limit} channels={self.channels} idle={list(self.idle)} "
            f"queue={[h.name for h in self.queue]}>"
        )


@dataclass
class Plan(Generic[C]):
    """The I/O an assignment step asks for: connects to start, connections to close."""

    connect: list[PooledConnection[C]] = field(default_factory=list)
    close: list[C] = field(default_factory=list)
    evicted: list[tuple[PooledConnection[C], str]] = field(default_factory=list)
    wake_at: float | None = None


# ---- the events' small state changes (each followed by assign()) ---------------------


def take_channel(pc: PooledConnection[C], budget: Budget[C], now: float) -> None:
    """Reserve one channel on pc."""
    pc.channels += 1
    budget.channels += 1
    pc.peak_channels = max(pc.peak_channels, pc.channels)
    pc.last_used = now
    budget.idle.pop(pc, None)


def give_back_channel(pc: PooledConnection[C], budget: Budget[C], now: float) -> None:
    """A channel on pc is closed: free its place on the connection."""
    pc.channels -= 1
    budget.channels -= 1
    pc.last_used = now
    if pc.is_idle():
        budget.idle[pc] = None
        budget.idle.move_to_end(pc)


def remove(pc: PooledConnection[C], budget: Budget[C], plan: Plan[C], reason: str) -> None:
    """Take pc out of the pool, free its budget place, and close it if it is still open."""
    if pc.state is ConnState.CLOSED:
        return
    pc.state = ConnState.CLOSED
    budget.idle.pop(pc, None)
    budget.used -= 1
    if pc in pc.host.conns:
        pc.host.conns.remove(pc)
    if pc.conn is not None and not pc.conn.is_closed():
        plan.close.append(pc.conn)
    plan.evicted.append((pc, reason))


def drain(pc: PooledConnection[C], budget: Budget[C], plan: Plan[C], reason: str) -> None:
    """No new channels on pc; it closes as soon as it carries none."""
    if pc.state is not ConnState.OPEN:
        return
    if pc.channels == 0:
        remove(pc, budget, plan, reason)
    else:
        pc.state = ConnState.DRAINING
        budget.idle.pop(pc, None)
        plan.evicted.append((pc, reason))


def connected(pc: PooledConnection[C], conn: C, budget: Budget[C], now: float) -> None:
    """A connect finished: the connection takes channels; the host's backoff ends."""
    pc.conn = conn
    pc.state = ConnState.OPEN
    pc.created = pc.last_used = now
    pc.host.backoff = None
    budget.idle[pc] = None


def connect_failed(
    pc: PooledConnection[C], error: ScoutError, budget: Budget[C], plan: Plan[C], now: float
) -> None:
    """A connect failed: free its place and back off before the next attempt."""
    remove(pc, budget, plan, "connect_failed")
    host = pc.host
    failures = host.backoff.failures + 1 if host.backoff else 1
    pause = min(FIRST_BACKOFF * 2 ** (failures - 1), MAX_BACKOFF)
    host.backoff = Backoff(failures, now + pause, error)


def refused(pc: PooledConnection[C], now: float) -> None:
    """The server refused a channel on live pc: it is full at one less than it carries."""
    pc.cap = max(1, pc.channels - 1)
    pc.cap_restore_at = now + CAP_RECOVERY


def _again(error: ScoutError) -> ScoutError:
    """A fresh copy of an error for one waiter: one exception object is never shared."""
    copy = type(error)(error.message, error.host, started=error.started, mentions=error.mentions)
    copy.__cause__ = error.__cause__
    return copy


# ---- the assignment step ---------------------------------------------------------------


def assign(host: HostState[C], budget: Budget[C], settings: PoolSettings, now: float) -> Plan[C]:
    """Look at the host's whole state after an event; decide everything; return the I/O."""
    plan: Plan[C] = Plan()
    for pc in list(host.conns):
        if pc.state is ConnState.CONNECTING:
            continue
        if pc.is_closed():
            remove(pc, budget, plan, "lost")
        elif pc.state is ConnState.OPEN and pc.has_expired(now, settings):
            drain(pc, budget, plan, "expired")
        elif pc.state is ConnState.DRAINING and pc.channels == 0:
            remove(pc, budget, plan, "drained")
        if pc.cap_restore_at is not None and now >= pc.cap_restore_at:
            pc.cap, pc.cap_restore_at = settings.max_sessions_per_connection, None
    if host.backoff is not None and now >= host.backoff.until and not host.waiters:
        host.backoff = None  # nobody is waiting to learn from it any more
    while host.waiters and host.waiters[0].future.done():
        host.waiters.popleft()  # gave up; its own code already cleaned up
    while host.waiters:
        best = host.best_available()
        if best is None:
            break
        waiter = host.waiters.popleft()
        if waiter.future.done():
            continue
        take_channel(best, budget, now)
        waiter.future.set_result(best)
    if host.waiters:
        _connect_for_waiters(host, budget, settings, now, plan)
    elif host.queued:  # nobody left to connect for: leave the budget's queue
        host.queued = False
        budget.queue.remove(host)
    return plan


def _connect_for_waiters(
    host: HostState[C], budget: Budget[C], settings: PoolSettings, now: float, plan: Plan[C]
) -> None:
    """Open connections for waiters no connection (open or opening) will serve, or fail them."""
    backoff = host.backoff
    if backoff is not None and now < backoff.until:
        if host.count(ConnState.CONNECTING, ConnState.OPEN) == 0:
            _fail_waiters(host, backoff.error)  # nothing will serve them before the pause ends
        else:
            plan.wake_at = backoff.until  # busy connections may still free a channel
        return
    cap = settings.max_sessions_per_connection
    connecting = host.count(ConnState.CONNECTING)
    live = connecting + host.count(ConnState.OPEN)  # draining ones are on their way out
    need = math.ceil(len(host.waiters) / cap) - connecting
    while (
        need > 0
        and live < settings.max_connections_per_host
        and connecting < settings.max_concurrent_handshakes
    ):
        if not _take_budget(budget, plan):
            if not host.queued:
                host.queued = True
                budget.queue.append(host)
            return
        host.conns.append(PooledConnection(host, cap, now))
        plan.connect.append(host.conns[-1])
        need, live, connecting = need - 1, live + 1, connecting + 1


def _take_budget(budget: Budget[C], plan: Plan[C]) -> bool:
    """One place under max_connections: a free one, or the least recently used idle one's."""
    if budget.used < budget.limit:
        budget.used += 1
        return True
    if budget.idle:
        victim = next(iter(budget.idle))
        remove(victim, budget, plan, "lru")
        budget.used += 1
        return True
    return False


def _fail_waiters(host: HostState[C], error: ScoutError) -> None:
    """Tell every waiter of host why it will not get a channel, each with its own error."""
    while host.waiters:
        future = host.waiters.popleft().future
        if not future.done():
            future.set_exception(_again(error))


def connect_error(host: HostState[C], exc: BaseException) -> ScoutError:
    """The error waiters see for a failed connect: the connector's own, or a generic one."""
    if isinstance(exc, ScoutError):
        return exc
    return HostUnavailable(f"{host.name}: SSH connect failed", host.name)
