"""Starting a command on a host, and making sure it is over before its channel's place is free.

    async with launcher.run(host, spec, output, bounds, call) as run:
        ...                        # run.command: write stdin; run.bounded(...): wait
    info = run.outcome()           # recorded in call, as the bytes out are

The way in: reserve a channel's place from the pool, open the channel within
`channel_open_timeout`, and retry what is safe to retry (docs/architecture.md, pool
rule 7): a refused channel (that connection is full), a connection that died before the
channel opened, a channel open that hangs (the connection is retired and keepalive
decides its fate). Nothing is retried once the exec request may have reached the host,
and no exec request goes out once the command's time is up (a warm connection answers at
once, however late).

The same way in opens an SFTP channel (server.sftpchannel) for files: `open()` takes
any `ChannelOpening`, so an SFTP session takes its place in the channel budget, with the
same bounded waits and retries, exactly as a command does.

The way out, on every path: a command that has not ended by itself is stopped (TERM,
KILL, close) in a task of its own, shielded from the caller's cancellation, and its
place is released only when the channel is closed. An open that finishes after its
caller gave up is *adopted*: a channel that opens after that is closed before the exec
request (the caller may have been told nothing ran); a command that did start is stopped
and closed; then the place is released.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import asyncssh

from .audit import CallRecord
from .command import CommandSpec, ExitInfo, Opening, RunningCommand
from .config import HostConfig, PoolSettings
from .errors import (
    ChannelRefused,
    CommandTimeout,
    ConnectionDead,
    HostRejected,
    HostUnavailable,
    PoolExhausted,
    ScoutError,
)
from .output import Output
from .pool import Pool, Reservation

log = logging.getLogger(__name__)

REFUSAL_BACKOFF = (0.005, 0.2)  # first and largest pause after a refused channel
OPEN_SHARE = 1 / 3  # at most this share of the time left goes to one channel open, so a
#                     hung open still leaves time to retry on another connection
STUCK_LIMIT = 30.0  # a channel that will not close after a stop: how long to keep its place
SSHConn = asyncssh.SSHClientConnection
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
OpenedT = TypeVar("OpenedT", bound="Opened")


@dataclass(frozen=True)
class Bounds:
    """When the command must be over, and how long stopping it may then take."""

    run_until: float  # time.monotonic(): past this the command is stopped
    stop_within: float  # seconds the stop may take after run_until
    cause: str  # what set run_until, for the message: "its timeout (10s)"


STOP_SHARE = 0.25  # of the time to the RPC deadline, kept for stopping the command
MIN_STOP_RESERVE = 0.1  # seconds kept for the stop however near the deadline is
ANSWER_MARGIN = 0.05  # seconds between the end of the stop and the caller's deadline


def bounds_for(
    spec: CommandSpec, timeout: float, cause: str, rpc_remaining: float | None
) -> Bounds:
    """When the command must end, leaving time before the RPC deadline to stop it;
    `cause` names the timeout for the message (server.requests.timeout_of)."""
    now = time.monotonic()
    full = spec.full_stop()
    bounds = Bounds(now + timeout, full, cause)
    if rpc_remaining is None:
        return bounds
    rpc_end = now + rpc_remaining
    reserve = min(full, max(MIN_STOP_RESERVE, rpc_remaining * STOP_SHARE))
    run_until, cause = bounds.run_until, bounds.cause
    if rpc_end - reserve < run_until:
        run_until, cause = rpc_end - reserve, "the RPC deadline"
    within = min(full, max(rpc_end - run_until - ANSWER_MARGIN, 0.05))
    return Bounds(run_until, within, cause)


class ChannelOpening(Protocol[T_co]):
    """Opening one channel on a reserved place, as a task that may outlive its caller."""

    @property
    def committed(self) -> bool:
        """A request that acts may have reached the host: a hang now is not retried."""

    @property
    def closed(self) -> asyncio.Future[None] | None:
        """The channel's close, once the channel is open."""

    def abandon(self) -> None:
        """The caller no longer waits: a channel that opens from now on does nothing."""

    async def run(self, conn: SSHConn) -> T_co:
        """Open the channel (and start what it is for); name what failed."""


class Opened(Protocol):
    """What an opening gives: something that can be stopped and waited closed."""

    @property
    def ended(self) -> bool:
        """The channel is closed."""

    async def stop(self, within: float | None = None) -> None:
        """End it and close the channel, within the bound."""

    async def wait_closed(self) -> None:
        """Until the channel is closed."""


class Launcher:
    """Runs commands on pooled connections; tracks the stops and adoptions in flight."""

    def __init__(self, pool: Pool[SSHConn], settings: PoolSettings) -> None:
        self.pool = pool
        self.open_timeout = settings.channel_open_timeout
        self._tasks: set[asyncio.Task[None]] = set()

    def run(
        self, host: HostConfig, spec: CommandSpec, output: Output, bounds: Bounds, call: CallRecord
    ) -> Run:
        """An async context: the running command in, a stopped-and-released one out; what
        it did goes into `call` (for the audit line and the metrics)."""
        return Run(self, host, spec, output, bounds, call)

    async def open(
        self, host: HostConfig, make: Callable[[], ChannelOpening[OpenedT]], until: float
    ) -> tuple[Reservation[SSHConn], OpenedT]:
        """Reserve a place and open a channel in it (`make` gives a new opening per try),
        with the safe retries (docs/architecture.md, pool rule 7): a refused channel backs
        off and tries again; a connection that hung or died is tried once more, on another.
        The caller must finish() what this returns."""
        retried = False
        pause = REFUSAL_BACKOFF[0]
        while True:
            res = await self._reserve(host, until)
            try:
                return res, await self.open_once(host, res, make(), until)
            except ChannelRefused:  # that connection is full: back off
                wait = min(pause * random.uniform(0.5, 1.0), until - time.monotonic())
                if wait <= 0:
                    raise PoolExhausted(
                        f"{host.name}: every SSH connection is at the server's session limit "
                        "(sshd MaxSessions) and none freed before the deadline",
                        host.name,
                    ) from None
                await asyncio.sleep(wait)
                pause = min(pause * 2, REFUSAL_BACKOFF[1])
            except _Unopened as failed:  # nothing reached the host: one more try
                if retried or until - time.monotonic() < failed.margin:
                    raise failed.error from failed.__cause__
                retried = True
                self.pool.stats.retries += 1

    async def _reserve(self, host: HostConfig, until: float) -> Reservation[SSHConn]:
        """A place on a connection to host, before `until` (else nothing was started)."""
        if until <= time.monotonic():
            raise _no_time_left(host)
        res = await self.pool.reserve(host, until)
        if until <= time.monotonic():  # a place came at the very end of the wait
            res.release()
            raise _no_time_left(host)
        return res

    async def open_once(
        self,
        host: HostConfig,
        res: Reservation[SSHConn],
        opening: ChannelOpening[OpenedT],
        until: float,
    ) -> OpenedT:
        """Open what `opening` opens in the reserved place, within the time left.

        Raises ChannelRefused (the connection is full; try again later), _Unopened (the
        connection hung or died before anything reached the host; another may serve), or
        the error to give the caller. On every raise the place is taken care of:
        released, retired, or adopted until the channel is closed.
        """
        now = time.monotonic()
        task = asyncio.get_running_loop().create_task(opening.run(res.conn))
        try:
            hang_limit = min(self.open_timeout, max((until - now) * OPEN_SHARE, 0.1))
            limit = min(hang_limit, until - now)  # no exec may go out past `until`
            opened = await _settled(task, now + limit)
            if not opened and opening.committed:
                opened = await _settled(task, until)  # the exec is out: wait for its reply
        except BaseException:
            self._adopt(task, res, opening)  # the caller was cancelled meanwhile
            raise
        if not opened:
            self._adopt(task, res, opening)
            if opening.committed:
                raise CommandTimeout(
                    f"{host.name}: the SSH server did not confirm the command before the "
                    "deadline; it may have started, and has been stopped",
                    host.name,
                )
            if limit < hang_limit:  # the time ran out, not the connection's patience
                raise _no_time_left(host)
            res.retire()  # the open hangs there: nothing reached the host yet
            raise _Unopened(
                HostUnavailable(
                    f"{host.name}: the SSH server did not open a channel within "
                    f"{limit:.3g}s (the connection is not answering)",
                    host.name,
                ),
                margin=0.05,
            )
        error = task.exception()
        if error is None:
            return task.result()
        if isinstance(error, ChannelRefused):
            if res.refused() == 0:
                raise HostRejected(
                    f"{host.name}: the SSH server refused a session channel on a "
                    f"connection carrying no other ({error}); it does not allow "
                    "sessions for this user",
                    host.name,
                ) from error
            raise error
        if isinstance(error, ConnectionDead):
            res.dead()
            raise _Unopened(
                HostUnavailable(
                    f"{host.name}: SSH connection lost before the command started: {error}",
                    host.name,
                ),
                margin=0.0,
            ) from error
        self._adopt(task, res, opening)  # failed after the channel opened: close it first
        raise error

    def finish(
        self, res: Reservation[SSHConn], command: Opened, within: float | None
    ) -> asyncio.Future[None] | None:
        """Release at once if the command ended; else stop it in a task and release after.

        Returns the stop task (await it shielded), or None when there was nothing to stop.
        """
        if command.ended:
            res.release()
            return None
        return self._track(self._stop_then_release(res, command, within))

    async def _stop_then_release(
        self, res: Reservation[SSHConn], command: Opened, within: float | None
    ) -> None:
        """Stop the command, then free its place, whatever the stop raised: a place
        never freed would shrink the pool for good. A stop that failed retires the
        connection, since the command may still run on it."""
        try:
            await command.stop(within)
            if not command.ended:
                log.warning(
                    "%s: a channel did not close after its stop (a command: TERM, KILL and a "
                    "close; a root login ignores signals, see the README); retiring its "
                    "connection",
                    res.pc,
                )
                res.retire()
                with _quiet():
                    await asyncio.wait_for(command.wait_closed(), STUCK_LIMIT)
        except asyncio.CancelledError:  # shutting down: the connection goes too
            res.retire()
            raise
        except Exception:
            log.exception("%s: stopping a command failed; retiring its connection", res.pc)
            res.retire()
        finally:
            res.release()

    def _adopt(
        self,
        task: asyncio.Task[OpenedT],
        res: Reservation[SSHConn],
        opening: ChannelOpening[OpenedT],
    ) -> None:
        """An open its caller gave up on: stop whatever it started, then release."""
        opening.abandon()
        self._track(self._settle_adopted(task, res, opening))

    async def _settle_adopted(
        self,
        task: asyncio.Task[OpenedT],
        res: Reservation[SSHConn],
        opening: ChannelOpening[OpenedT],
    ) -> None:
        """Wait for an abandoned open; stop what it started; free its place on every path."""
        try:
            async with asyncio.timeout(STUCK_LIMIT):
                command = await asyncio.shield(task)
        except TimeoutError:
            log.warning("%s: a channel open never finished; retiring its connection", res.pc)
            res.retire()
            task.cancel()
        except Exception:  # nothing started, or the server refused: wait for the close
            try:
                if opening.closed is not None:
                    with _quiet():
                        await asyncio.wait_for(asyncio.shield(opening.closed), STUCK_LIMIT)
            finally:
                res.release()
            return
        except BaseException:  # cancelled (shutting down): the connection goes too
            res.retire()
            res.release()
            raise
        else:
            await self._stop_then_release(res, command, None)
            return
        res.release()

    def track(self, work: Awaitable[None]) -> asyncio.Future[None]:
        """Keep a cleanup running until it ends; wait_stopped() waits for it at shutdown."""
        future = asyncio.ensure_future(work)
        self._tasks.add(future)
        future.add_done_callback(self._tasks.discard)
        return future

    def _track(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def wait_stopped(self, within: float) -> None:
        """Wait (bounded) for the stops and adoptions in flight (at shutdown)."""
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=within)


@dataclass(eq=False, slots=True)
class Run:
    """`async with launcher.run(...)`: a started command, stopped and released on exit.

    The one recorder of "a command ran": entering marks the call as run and attaches the
    channel to the output; `outcome()` records the exit code or signal; leaving records
    the bytes out. Execute, Stream and ExecuteMany all go through it, so their audit lines
    and metrics are filled in alike.
    """

    launcher: Launcher
    host: HostConfig
    spec: CommandSpec
    output: Output
    bounds: Bounds
    call: CallRecord
    _res: Reservation[SSHConn] | None = field(default=None, init=False)
    _command: RunningCommand | None = field(default=None, init=False)

    async def __aenter__(self) -> Run:
        output = self.output
        try:
            self._res, command = await self.launcher.open(
                self.host, lambda: Opening(self.spec, output.feed), self.bounds.run_until
            )
        except BaseException:
            self._count_output()
            raise
        self._command = command
        self.call.ran = True
        output.attach(command.chan)
        command.session.closed.add_done_callback(lambda _: output.close())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._res is not None and self._command is not None
        timed_out = isinstance(exc_info[1], CommandTimeout)
        within = self.bounds.stop_within if timed_out else None
        try:
            stop = self.launcher.finish(self._res, self._command, within)
            if stop is not None:
                await asyncio.shield(stop)
        finally:
            self._count_output()

    def _count_output(self) -> None:
        self.call.stdout_bytes = self.output.stdout.total
        self.call.stderr_bytes = self.output.stderr.total

    @property
    def command(self) -> RunningCommand:
        """The running command."""
        assert self._command is not None
        return self._command

    def outcome(self) -> ExitInfo:
        """How the command ended (CommandAborted if the channel closed without a status),
        recorded in the call."""
        info = self.command.outcome()
        self.call.exit_code, self.call.signal = info.exit_code, info.signal
        return info

    async def bounded(self, work: Awaitable[T]) -> T:
        """Await work until `run_until`; then raise CommandTimeout (the exit stops it)."""
        try:
            async with asyncio.timeout(self.bounds.run_until - time.monotonic()):
                return await work
        except TimeoutError:
            raise CommandTimeout(
                f"{self.spec.host}: the command ran past {self.bounds.cause} and was stopped",
                self.spec.host,
            ) from None


class _Unopened(Exception):
    """The channel did not open (the connection hung or died): nothing reached the host,
    so another connection may be tried; `error` is what to raise when none may."""

    def __init__(self, error: ScoutError, *, margin: float) -> None:
        super().__init__(error.message)
        self.error = error
        self.margin = margin  # seconds that must be left for one more try


def _no_time_left(host: HostConfig) -> CommandTimeout:
    """The command's time ran out before it could start: nothing reached the host."""
    return CommandTimeout(
        f"{host.name}: the command's time ran out before a channel was ready to start it; "
        "nothing was started",
        host.name,
        started=False,
    )


async def _settled(task: asyncio.Task[Any], until: float) -> bool:
    """Wait for task to finish, at most until `until`; never cancel it. Whether it did."""
    if task.done():
        return True
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    task.add_done_callback(wake)
    timer = loop.call_later(max(until - time.monotonic(), 0.0), wake)
    try:
        await waiter
    finally:
        timer.cancel()
        task.remove_done_callback(wake)
    return task.done()


class _quiet:
    """Suppress a bounded wait's timeout (and errors of a channel that died meanwhile)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> bool:
        return exc_type is not None and issubclass(exc_type, TimeoutError | asyncssh.Error)
