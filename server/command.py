"""One remote command on one SSH channel: open it, feed it, watch it end, or stop it.

Built on asyncssh's session callbacks rather than its process streams, so output is
handled once, where it arrives (server.output caps, counts and queues it).

A command that may have started is stopped on every way out that is not its own end:
`stop()` sends TERM, KILL after the grace, then closes the channel, each step bounded, so
"the command has been stopped" is true by the time a caller hears it. Failures are named
for what a caller may conclude (docs/architecture.md, "Statuses"): before the channel is
open nothing reached the host
(ChannelRefused, ConnectionDead); once it is open, the exec request may have.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncssh

from .errors import CommandAborted, ConnectionDead, HostRejected, not_opened

KILL_WAIT = 1.0  # after KILL, how long to wait before closing the channel anyway
CLOSE_WAIT = 0.5  # after closing the channel, how long to wait for the server's close

Sink = Callable[[int, bytes], None]  # (STDOUT or STDERR, data)


@dataclass(frozen=True)
class CommandSpec:
    """A validated command, ready to send."""

    host: str
    command: str  # the final command line, environment and directory applied
    stdin: bytes = b""
    close_stdin: bool = True  # EOF right after stdin (Stream: only when asked)
    pty: bool = False
    term_size: tuple[int, int] = (80, 24)
    max_output_bytes: int = 0  # 0: no cap
    kill_grace: float = 2.0

    def full_stop(self) -> float:
        """The longest a stop can take: TERM grace, KILL wait, close wait."""
        return self.kill_grace + KILL_WAIT + CLOSE_WAIT


@dataclass
class ExitInfo:
    """How the command ended."""

    exit_code: int = -1
    signal: str = ""
    core_dumped: bool = False
    started: float = 0.0
    ended: float = 0.0
    has_status: bool = False  # the server sent an exit status or signal


class CommandSession(asyncssh.SSHClientSession[bytes]):
    """asyncssh callbacks for one command: route output, note the exit, tell when closed."""

    def __init__(self, out: Sink) -> None:
        self._out = out
        self.exit = ExitInfo(started=time.monotonic())
        self.chan: asyncssh.SSHClientChannel[bytes] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.error: Exception | None = None  # why the connection died under the channel
        self.abandoned = False  # set before the channel opens: close it, send nothing
        self._writable = asyncio.Event()
        self._writable.set()

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        """The channel is open; the exec request follows, unless nobody wants it any more."""
        self.chan = chan
        if self.abandoned:
            chan.close()
            raise OpenAbandoned("the channel opened after its caller gave up; closed unused")

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        """Output arrived: stderr is extended data, everything else is stdout."""
        self._out(2 if datatype == asyncssh.EXTENDED_DATA_STDERR else 1, data)

    def exit_status_received(self, status: int) -> None:
        """The command exited with a status."""
        self.exit.exit_code = status
        self.exit.has_status = True

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        """A signal ended the command."""
        self.exit.exit_code = -1
        self.exit.signal = signal
        self.exit.core_dumped = core_dumped
        self.exit.has_status = True

    def pause_writing(self) -> None:
        """The channel's send window is full: hold stdin."""
        self._writable.clear()

    def resume_writing(self) -> None:
        """Room again for stdin."""
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        """The channel closed; exc is set when the connection died under it."""
        self.exit.ended = time.monotonic()
        self.error = exc
        if not self.closed.done():
            self.closed.set_result(None)  # never an exception: nobody may be waiting
        self._writable.set()

    async def drain(self) -> None:
        """Wait until stdin may be written again."""
        await self._writable.wait()


class RunningCommand:
    """An open channel running one command."""

    def __init__(self, spec: CommandSpec, session: CommandSession) -> None:
        assert session.chan is not None
        self.spec = spec
        self.chan: asyncssh.SSHClientChannel[bytes] = session.chan
        self.session = session

    @property
    def ended(self) -> bool:
        """The channel is closed: the command is over (or its connection is gone)."""
        return self.session.closed.done()

    async def write(self, data: bytes) -> None:
        """Send stdin bytes, waiting while the remote side is not reading."""
        if data and not self.chan.is_closing():
            self.chan.write(data)
            await self.session.drain()

    def close_stdin(self) -> None:
        """Send EOF to the command's stdin."""
        if not self.chan.is_closing():
            with contextlib.suppress(OSError, asyncssh.Error):
                self.chan.write_eof()

    def signal(self, name: str) -> None:
        """Send a signal by name ("INT", "TERM", ...); allowed after stdin's EOF too."""
        if not self.ended:
            with contextlib.suppress(OSError, asyncssh.Error):
                self.chan.send_signal(name)

    def resize(self, columns: int, rows: int) -> None:
        """Tell the remote pty its new size."""
        if self.spec.pty and not self.ended:
            with contextlib.suppress(OSError, asyncssh.Error):
                self.chan.change_terminal_size(columns, rows)

    async def wait_closed(self) -> None:
        """Until the channel is closed (the command ended, or its connection died)."""
        await asyncio.shield(self.session.closed)

    def outcome(self) -> ExitInfo:
        """How the command ended, once the channel is closed."""
        error, info = self.session.error, self.session.exit
        if error is not None:
            raise CommandAborted(
                f"{self.spec.host}: SSH connection lost while the command ran; it may have "
                f"had effects, so it was not retried ({error})",
                self.spec.host,
            )
        if not info.has_status:
            raise CommandAborted(
                f"{self.spec.host}: the SSH server closed the channel without an exit status; "
                "the command may have run",
                self.spec.host,
            )
        return info

    async def stop(self, within: float | None = None) -> None:
        """Stop the command: TERM, KILL after the grace, then close the channel.

        `within` bounds the whole stop (a deadline leaves only so much); the grace and
        waits shrink to fit it. Returns when the channel is closed or the bound passed.
        """
        budget = self.spec.full_stop() if within is None else max(within, 0.0)
        grace = min(self.spec.kill_grace, budget * 0.5)
        kill_wait = min(KILL_WAIT, budget * 0.3)
        close_wait = max(budget - grace - kill_wait, 0.05)
        closed = self.session.closed
        for sig, wait in (("TERM", grace), ("KILL", kill_wait)):
            if closed.done():
                return
            self.signal(sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(closed), wait)
        if not closed.done():
            self.chan.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(closed), close_wait)


class OpenAbandoned(Exception):
    """A channel opened after its caller gave up: closed before any request went out."""


class Opening:
    """Opening a channel and starting the command on it, as a task that may outlive its
    caller. Once the caller gives up (`abandon()`), a channel that opens later is closed
    before the exec request: the caller was told nothing ran, so nothing may run. One
    that opened before is past that point (the exec goes out in the same step): it is
    stopped and closed.
    """

    def __init__(self, spec: CommandSpec, out: Sink) -> None:
        self.spec = spec
        self.out = out
        self.session: CommandSession | None = None  # set once the channel is open
        self._abandoned = False

    def abandon(self) -> None:
        """The caller no longer waits: a channel that opens from now on runs nothing."""
        self._abandoned = True

    @property
    def committed(self) -> bool:
        """The exec request may have reached the host (the channel is open)."""
        return self.session is not None

    @property
    def closed(self) -> asyncio.Future[None] | None:
        """The channel's close, once it is open."""
        return None if self.session is None else self.session.closed

    def _factory(self) -> CommandSession:
        # asyncssh calls this when the open is confirmed, before it sends any request
        self.session = CommandSession(self.out)
        self.session.abandoned = self._abandoned
        return self.session

    async def run(self, conn: asyncssh.SSHClientConnection) -> RunningCommand:
        """Open the session channel and send the exec request; name what failed."""
        spec = self.spec
        try:
            await conn.create_session(
                self._factory,
                spec.command,
                encoding=None,
                request_pty=spec.pty,
                term_type="xterm" if spec.pty else None,
                term_size=spec.term_size if spec.pty else None,
            )
        except asyncssh.ChannelOpenError as exc:
            if self.session is None:
                raise not_opened(exc.reason, connection_closed=conn.is_closed()) from exc
            if conn.is_closed():
                raise _lost_while_starting(spec) from exc
            raise HostRejected(
                f"{spec.host}: the SSH server refused to start the command ({exc.reason})",
                spec.host,
            ) from exc
        except (asyncssh.Error, OSError) as exc:
            if self.session is None:
                raise ConnectionDead(str(exc) or type(exc).__name__) from exc
            raise _lost_while_starting(spec) from exc
        assert self.session is not None
        return RunningCommand(spec, self.session)


def _lost_while_starting(spec: CommandSpec) -> CommandAborted:
    return CommandAborted(
        f"{spec.host}: SSH connection lost while starting the command; it may have "
        "started, so it was not retried",
        spec.host,
    )
