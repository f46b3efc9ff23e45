"""One remote command on one SSH channel: open, feed stdin, collect or pump output, stop.

Built on asyncssh's session callbacks rather than its process streams so that output is
handled once, where it arrives: Execute counts and caps it in place, Stream queues it
with a bound and pauses the channel (the SSH window) while the caller is behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import asyncssh

from .errors import CommandAborted, HostUnavailable
from .pool import ChannelRefused, ConnectionDead

STDOUT, STDERR = 1, 2
_HIGH_WATER = 1024 * 1024  # Stream: pause the channel above this many buffered bytes
_LOW_WATER = 256 * 1024  # ... and resume below this
_MAX_MESSAGE = 256 * 1024  # Stream: merge chunks of one kind up to this size
_KILL_WAIT = 1.0  # after KILL, how long to wait before closing the channel anyway


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


@dataclass
class ExitInfo:
    """How the command ended."""

    exit_code: int = -1
    signal: str = ""
    core_dumped: bool = False
    started: float = 0.0
    ended: float = 0.0


class CappedBuffer:
    """Counts output against `cap` bytes (0: no cap); collects the part under it if asked."""

    __slots__ = ("cap", "chunks", "collect", "kept", "total")

    def __init__(self, cap: int, *, collect: bool = True) -> None:
        self.cap = cap
        self.collect = collect
        self.chunks: list[bytes] = []
        self.kept = 0
        self.total = 0

    def feed(self, data: bytes) -> bytes:
        """Count everything; keep and return the part that fits under the cap."""
        self.total += len(data)
        if self.cap and self.kept + len(data) > self.cap:
            data = data[: self.cap - self.kept]
        if data:
            self.kept += len(data)
            if self.collect:
                self.chunks.append(data)
        return data

    @property
    def truncated(self) -> bool:
        """Whether bytes were discarded."""
        return self.total > self.kept

    def value(self) -> bytes:
        """The kept bytes."""
        return b"".join(self.chunks)


class OutputQueue:
    """Stream output between the SSH reader and the gRPC writer, bounded in bytes.

    Above the high-water mark the channel stops reading, so the SSH window closes and
    the remote command blocks on its writes: a slow caller slows the command down.

    On resume, asyncssh hands over what it buffered while paused and, with the first
    piece, grants the peer a full window again. If we paused again in the middle of that
    hand-over, the rest would stay in asyncssh's buffer, uncounted by the next grant, and
    that buffer would grow by up to a window per cycle. So the hand-over is taken whole
    (at most one window), and the pause decision waits until it is done.
    """

    def __init__(self, cap: int) -> None:
        self._items: deque[tuple[int, bytes]] = deque()
        self._buffered = 0
        self._ready = asyncio.Event()
        self._eof = False
        self._chan: asyncssh.SSHClientChannel[bytes] | None = None
        self._paused = False
        self._resuming = False
        self.stdout = CappedBuffer(cap, collect=False)  # counts and caps; the queue keeps
        self.stderr = CappedBuffer(cap, collect=False)

    def attach(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        """The channel to pause and resume."""
        self._chan = chan

    def feed(self, kind: int, data: bytes) -> None:
        """Queue a chunk (cut at the cap), pausing the channel when too much is waiting."""
        data = (self.stdout if kind == STDOUT else self.stderr).feed(data)
        if not data:
            return
        self._items.append((kind, data))
        self._buffered += len(data)
        self._ready.set()
        if not self._resuming:
            self._maybe_pause()

    def _maybe_pause(self) -> None:
        """Stop reading the channel while too much output waits for the caller."""
        if self._buffered > _HIGH_WATER and not self._paused and self._chan is not None:
            self._paused = True
            self._chan.pause_reading()

    def close(self) -> None:
        """No more output will come."""
        self._eof = True
        self._ready.set()

    async def get(self) -> tuple[int, bytes] | None:
        """The next chunk, merged with queued chunks of the same kind; None at the end."""
        while not self._items:
            if self._eof:
                return None
            self._ready.clear()
            await self._ready.wait()
        kind, data = self._items.popleft()
        if self._items and self._items[0][0] == kind and len(data) < _MAX_MESSAGE:
            parts = [data]
            size = len(data)
            while self._items and self._items[0][0] == kind and size < _MAX_MESSAGE:
                more = self._items.popleft()[1]
                parts.append(more)
                size += len(more)
            data = b"".join(parts)
        self._buffered -= len(data)
        if self._paused and self._buffered < _LOW_WATER and self._chan is not None:
            self._paused = False
            self._resuming = True
            try:
                self._chan.resume_reading()  # delivers everything asyncssh buffered
            finally:
                self._resuming = False
            self._maybe_pause()
        return kind, data


class CommandSession(asyncssh.SSHClientSession[bytes]):
    """asyncssh callbacks for one command: route output, note the exit, tell when done."""

    def __init__(self, out: Callable[[int, bytes], None]) -> None:
        self._out = out
        self.exit = ExitInfo(started=time.monotonic())
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writable = asyncio.Event()
        self._writable.set()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        """Output arrived: stderr is extended data, everything else is stdout."""
        self._out(STDERR if datatype == asyncssh.EXTENDED_DATA_STDERR else STDOUT, data)

    def exit_status_received(self, status: int) -> None:
        """The command exited with a status."""
        self.exit.exit_code = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        """A signal ended the command."""
        self.exit.exit_code = -1
        self.exit.signal = signal
        self.exit.core_dumped = core_dumped

    def pause_writing(self) -> None:
        """The channel's send window is full: hold stdin."""
        self._writable.clear()

    def resume_writing(self) -> None:
        """Room again for stdin."""
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        """The channel closed; exc is set when the connection died under it."""
        self.exit.ended = time.monotonic()
        if not self.done.done():
            if exc is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(exc)
        self._writable.set()

    async def drain(self) -> None:
        """Wait until stdin may be written again."""
        await self._writable.wait()


class RunningCommand:
    """An open channel running one command."""

    def __init__(
        self,
        spec: CommandSpec,
        chan: asyncssh.SSHClientChannel[bytes],
        session: CommandSession,
    ) -> None:
        self.spec = spec
        self.chan = chan
        self.session = session

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
        if not self.session.done.done():
            with contextlib.suppress(OSError, asyncssh.Error):
                self.chan.send_signal(name)

    def resize(self, columns: int, rows: int) -> None:
        """Tell the remote pty its new size."""
        if self.spec.pty and not self.session.done.done():
            with contextlib.suppress(OSError, asyncssh.Error):
                self.chan.change_terminal_size(columns, rows)

    async def wait(self) -> ExitInfo:
        """Wait for the channel to close; a dead connection means ABORTED."""
        try:
            await asyncio.shield(self.session.done)
        except (asyncssh.Error, OSError) as exc:
            raise CommandAborted(
                f"{self.spec.host}: SSH connection lost while the command ran; it may have "
                f"had effects, so it was not retried ({exc})",
                self.spec.host,
            ) from exc
        return self.session.exit

    async def stop(self) -> None:
        """Stop the command: TERM, then KILL after the grace, then close the channel."""
        done = self.session.done
        for sig, wait in (("TERM", self.spec.kill_grace), ("KILL", _KILL_WAIT)):
            if done.done():
                return
            self.signal(sig)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(done), wait)
        if not done.done():
            self.chan.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(done), _KILL_WAIT)


async def open_command(
    conn: asyncssh.SSHClientConnection,
    spec: CommandSpec,
    out: Callable[[int, bytes], None],
) -> RunningCommand:
    """Open a session channel and start the command; name failures for the pool's rules.

    Before the channel is open nothing reached the host: a refusal on a live connection is
    ChannelRefused (full), anything on a dead one is ConnectionDead (retry elsewhere).
    After it opened, the exec request may have reached the host: never retried.
    """
    session: CommandSession | None = None

    def factory() -> CommandSession:
        nonlocal session
        session = CommandSession(out)
        return session

    try:
        chan, _ = await conn.create_session(
            factory,
            spec.command,
            encoding=None,
            request_pty=spec.pty,
            term_type="xterm" if spec.pty else None,
            term_size=spec.term_size if spec.pty else None,
        )
    except asyncssh.ChannelOpenError as exc:
        if session is None:
            if conn.is_closed():
                raise ConnectionDead(exc.reason) from exc
            raise ChannelRefused(exc.reason) from exc
        if conn.is_closed():
            raise CommandAborted(
                f"{spec.host}: SSH connection lost while starting the command; it may have "
                "started, so it was not retried",
                spec.host,
            ) from exc
        raise HostUnavailable(
            f"{spec.host}: the SSH server refused to run the command ({exc.reason})", spec.host
        ) from exc
    except (asyncssh.Error, OSError) as exc:
        if session is None:
            raise ConnectionDead(str(exc) or type(exc).__name__) from exc
        raise CommandAborted(
            f"{spec.host}: SSH connection lost while starting the command; it may have "
            "started, so it was not retried",
            spec.host,
        ) from exc
    assert session is not None
    return RunningCommand(spec, chan, session)
