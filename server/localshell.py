"""The local shell SSH server: `scout-server --demo`'s host, and the base of the test servers.

A real asyncssh server on loopback that runs each `exec` request as `/bin/sh -c COMMAND` on
this machine, as the current user, in its own process group. It accepts one client key
(public-key auth only), so scout talks to it exactly as to a remote host.

Objects, from the outside in:

    ShellHost          one listening address: acceptor, connections, ServerStats, close()
      LocalShellServer   one SSH connection (asyncssh's server_factory): auth, session cap
        LocalShellSession  one channel: a child process wired to the channel
          _Child             the process group: exit status, signals, stop, reap

Flow control: asyncssh calls `pause_writing()` on a session when the channel's send buffer
passes its high-water mark (the peer's window is spent) and `resume_writing()` when it
drains. The session then pauses/resumes reading the child's pipes, so a slow client slows
the command down and memory stays bounded. The other way, the stdin pipe's own
pause/resume pauses the channel (asyncssh then stops adjusting the client's window).

Files: the `sftp` subsystem runs OpenSSH's own sftp-server program (Debian's
openssh-sftp-server) as the session's command, so the demo host and the tests' servers
serve SFTP exactly as an OpenSSH host does (and count its sessions in ServerStats).

Limits (a demo, not sshd): no env/agent/forwarding/breaks, no subsystem but sftp; pty modes are
ignored (kernel defaults); channel EOF on a pty is ignored (as sshd); the pty becomes the
controlling terminal through util-linux `setsid --ctty` (without it, typed ^C does nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import getpass
import logging
import os
import shlex
import shutil
import signal
import struct
import subprocess
import termios
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from signal import Signals
from typing import IO, Any, Self

import asyncssh

from .config import HostConfig, host_entry
from .keyfiles import ShellKeys

log = logging.getLogger(__name__)

KILL_GRACE = 1.0  # seconds between TERM and KILL when a session ends under a running command
SFTP_SERVERS = (
    "/usr/lib/openssh/sftp-server",  # Debian, Ubuntu
    "/usr/libexec/openssh/sftp-server",  # Fedora, RHEL
    "/usr/libexec/sftp-server",  # macOS, BSDs
    "/usr/lib/ssh/sftp-server",  # Arch
)
SFTP_SERVER = next((p for p in SFTP_SERVERS if os.access(p, os.X_OK)), None)
_SETSID = shutil.which("setsid")  # util-linux; `setsid --ctty` makes the pty the ctty
_ExitStatus = tuple[int | None, str | None, bool]  # exit code, or signal name and core dumped
_Pipes = tuple[subprocess.Popen[bytes], list[tuple[IO[bytes], int | None]], IO[bytes]]


@dataclass
class ServerStats:
    """Counters of one listener, so tests (and people) can see what the server accepted."""

    accepted: int = 0  # TCP connections accepted, in total
    open: int = 0  # connections open now
    peak_open: int = 0
    sessions_opened: int = 0  # channels accepted, in total
    sessions_refused: int = 0  # channel opens refused (session cap)
    exec_requests: int = 0  # commands asked to run, in total
    sftp_sessions: int = 0  # sftp subsystems started, in total
    sftp_open: int = 0  # sftp sessions open now
    peak_sftp_open: int = 0


def _set_winsize(fd: int, size: tuple[int, int, int, int]) -> None:
    """Give a pty the client's size (kernel then sends SIGWINCH to its foreground group)."""
    width, height, pixwidth, pixheight = size
    packed = struct.pack("HHHH", height, width, pixwidth, pixheight)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, packed)


def _signal_name(signum: int) -> str:
    """SSH names signals without the SIG prefix (RFC 4254 section 6.10)."""
    try:
        return signal.Signals(signum).name.removeprefix("SIG")
    except ValueError:
        return str(signum)


class _Child:
    """A spawned command's process group: its exit status, signals, stop and reaping.

    The exit status is read with waitid(WNOWAIT), which leaves the leader a zombie until
    stop(): while it is one, its pid (the group id) cannot be reused, so signalling the
    group never hits a stranger.
    """

    def __init__(self, popen: subprocess.Popen[bytes], on_exit: Callable[[], None]) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.status: _ExitStatus | None = None
        self.exited = asyncio.Event()
        self._on_exit = on_exit
        self._loop = asyncio.get_running_loop()
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # not Linux >= 5.3: poll instead
            self._loop.call_later(0.05, self._check)
        else:
            self._loop.add_reader(self._pidfd, self._check)

    def _check(self) -> None:
        """Record the exit status once the leader exits, without reaping it."""
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped behind our back: no status to tell
            self._exited((255, None, False))
            return
        if info is None:
            if self._pidfd is None:
                self._loop.call_later(0.05, self._check)
        elif info.si_code == os.CLD_EXITED:
            self._exited((info.si_status, None, False))
        else:
            dumped = info.si_code == os.CLD_DUMPED
            self._exited((None, _signal_name(info.si_status), dumped))

    def _exited(self, status: _ExitStatus) -> None:
        """Stop watching and tell the session."""
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        self.status = status
        self.exited.set()
        self._on_exit()

    def signal(self, signum: int) -> None:
        """Signal the whole process group (the leader alone if its setsid has not run yet)."""
        if self.popen.returncode is not None:
            return
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    async def stop(self, grace: float) -> None:
        """TERM the group, KILL it after grace, reap: no command outlives its channel."""
        self.signal(signal.SIGTERM)
        if not self.exited.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.exited.wait(), grace)
        self.signal(signal.SIGKILL)  # a stubborn leader, or stragglers it left behind
        await self.exited.wait()
        self.popen.wait()  # a zombie by now: returns at once


class _OutputPipe(asyncio.Protocol):
    """Forwards one output pipe of the child (stdout, stderr or the pty) to the channel."""

    def __init__(self, session: LocalShellSession, datatype: int | None) -> None:
        self._session = session
        self._datatype = datatype

    def data_received(self, data: bytes) -> None:
        """Pass output on; flow control pauses this pipe, not the data."""
        self._session.output(data, self._datatype)

    def connection_lost(self, exc: Exception | None) -> None:
        """EOF; a pty master reports the end of its last writer as EIO."""
        if exc is not None and not (isinstance(exc, OSError) and exc.errno == errno.EIO):
            log.warning("output pipe of a shell session failed: %s", exc)
        self._session.output_closed()


class _InputPipe(asyncio.BaseProtocol):
    """The child's stdin: its buffer pressure pauses the channel, its loss drops input."""

    def __init__(self, session: LocalShellSession) -> None:
        self._session = session

    def pause_writing(self) -> None:
        """The child reads stdin slower than the client sends: stop taking channel data."""
        self._session.pause_channel(True)

    def resume_writing(self) -> None:
        """The child caught up: take channel data again, on the next loop turn.

        Not at once: asyncssh would deliver input and EOF inside this call, and asyncio's
        pipe transport, which calls us mid-flush, then closes with that input unsent.
        """
        asyncio.get_running_loop().call_soon(self._session.pause_channel, False)

    def connection_lost(self, exc: Exception | None) -> None:
        """The child closed stdin (or exited): later input is discarded, as sshd does."""
        self._session.input_closed()


class LocalShellSession(asyncssh.SSHServerSession[bytes]):
    """One SSH session channel running one local command, wired with flow control."""

    def __init__(self, server: LocalShellServer) -> None:
        self._server = server
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._command: str | None = None
        self._term: tuple[str, tuple[int, int, int, int]] | None = None
        self._master: int | None = None
        self.child: _Child | None = None
        self._outputs: list[asyncio.ReadTransport] = []
        self._open_outputs = 0
        self._stdin: asyncio.WriteTransport | None = None
        self._early: list[bytes] | None = []  # input before stdin was wired (one packet)
        self._signals: list[Signals] = []  # signals that came before the child existed
        self._eof = False
        self._paused = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._sftp = False

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        """Keep the channel: the child's output goes there."""
        self._chan = chan

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: object
    ) -> bool:
        """Accept a pty; the command then runs on one of this size (modes ignored)."""
        self._term = (term_type, term_size)
        return True

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        """Resize the running pty, as a window-change request asks."""
        if self._term is not None:
            self._term = (self._term[0], (width, height, pixwidth, pixheight))
        if self._master is not None:
            with contextlib.suppress(OSError):
                _set_winsize(self._master, (width, height, pixwidth, pixheight))

    def exec_requested(self, command: str) -> bool:
        """Accept any command; it runs under /bin/sh -c once the session starts."""
        self._server.host.stats.exec_requests += 1
        self._command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        """sftp, served by OpenSSH's sftp-server as the session's command; nothing else."""
        command = self._server.host.sftp_command()
        if subsystem != "sftp" or command is None or self._term is not None:
            return False
        stats = self._server.host.stats
        stats.sftp_sessions += 1
        stats.sftp_open += 1
        stats.peak_sftp_open = max(stats.peak_sftp_open, stats.sftp_open)
        self._sftp = True
        self._command = command
        return True

    def shell_requested(self) -> bool:
        """Accept a plain shell too, so `ssh -p PORT 127.0.0.1` works against the demo."""
        return True

    def session_started(self) -> None:
        """Spawn the command; input that comes before its pipes are wired is kept."""
        assert self._chan is not None
        self._task = asyncio.create_task(self._start(self._chan))

    def _spawn(self) -> _Pipes:
        """Start /bin/sh in a new process group, on pipes or on a pty."""
        argv = ["/bin/sh", "-c", self._command] if self._command is not None else ["/bin/sh"]
        host = self._server.host
        env = dict(os.environ)
        if self._term is None:
            pipe = subprocess.PIPE
            popen = subprocess.Popen(
                argv, stdin=pipe, stdout=pipe, stderr=pipe, cwd=host.cwd, env=env,
                start_new_session=True,
            )  # fmt: skip
            assert popen.stdin and popen.stdout and popen.stderr
            stderr = asyncssh.EXTENDED_DATA_STDERR
            return popen, [(popen.stdout, None), (popen.stderr, stderr)], popen.stdin
        env["TERM"] = self._term[0] or "dumb"
        master, slave = os.openpty()
        try:
            _set_winsize(slave, self._term[1])
            prefix = [_SETSID, "--ctty"] if _SETSID else []
            popen = subprocess.Popen(
                [*prefix, *argv], stdin=slave, stdout=slave, stderr=slave, cwd=host.cwd, env=env,
                start_new_session=not prefix,
            )  # fmt: skip
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        self._master = master
        reader, writer = os.fdopen(master, "rb", 0), os.fdopen(os.dup(master), "wb", 0)
        return popen, [(reader, None)], writer

    async def _start(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        """Spawn the child and connect its pipes to the event loop."""
        loop = asyncio.get_running_loop()
        if self._closed:
            return
        try:
            popen, outputs, stdin = self._spawn()
        except OSError as exc:
            if not self._closed:
                chan.write_stderr(f"scout demo: cannot start /bin/sh: {exc}\n".encode())
                chan.exit(127)
            return
        self.child = _Child(popen, self._maybe_finish)
        for signum in self._signals:
            self.child.signal(signum)
        self._open_outputs = len(outputs)
        for pipe, datatype in outputs:
            factory = functools.partial(_OutputPipe, self, datatype)
            transport, _ = await loop.connect_read_pipe(factory, pipe)
            self._outputs.append(transport)
            if self._paused:
                transport.pause_reading()
        self._stdin, _ = await loop.connect_write_pipe(lambda: _InputPipe(self), stdin)
        early, self._early = self._early or [], None
        if self._closed:
            self._close_pipes()
            return
        for data in early:
            self.data_received(data, None)
        if self._eof:
            self.eof_received()
        elif early:
            chan.resume_reading()  # paused by the first early chunk

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        """Client input goes to the child's stdin (or the pty)."""
        if self._early is not None:  # stdin not wired yet: hold this, pause the rest
            self._early.append(data)
            if self._chan is not None:
                self._chan.pause_reading()
        elif self._stdin is not None and not self._stdin.is_closing():
            self._stdin.write(data)

    def eof_received(self) -> bool:
        """Close the child's stdin after what was sent; keep the channel half open."""
        self._eof = True
        if self._stdin is not None and self._master is None:
            self._stdin.close()  # flushes first
        return True  # False would make asyncssh send our EOF too

    def signal_received(self, signal: str) -> None:
        """Deliver the client's `signal` request (e.g. "INT") to the process group."""
        signum = Signals.__members__.get("SIG" + signal)
        if signum is None:
            log.info("ignoring signal request %r", signal)
        elif self.child is None:
            self._signals.append(signum)
        else:
            self.child.signal(signum)

    def pause_writing(self) -> None:
        """The client's window is full: stop reading the child's output."""
        self._paused = True
        for transport in self._outputs:
            transport.pause_reading()

    def resume_writing(self) -> None:
        """The channel drained: read the child's output again."""
        self._paused = False
        for transport in self._outputs:
            transport.resume_reading()

    def output(self, data: bytes, datatype: int | None) -> None:
        """Send child output unless the channel is already closing."""
        if self._chan is not None and not self._chan.is_closing():
            self._chan.write(data, datatype)

    def output_closed(self) -> None:
        """One output reached EOF; the session ends when all have and the child exited."""
        self._open_outputs -= 1
        self._maybe_finish()

    def input_closed(self) -> None:
        """The child's stdin is gone: never leave the channel paused for its sake."""
        self._stdin = None
        if self._chan is not None and not self._closed:
            self._chan.resume_reading()

    def pause_channel(self, paused: bool) -> None:
        """Stop or restart taking client data, for stdin backpressure."""
        if self._chan is not None and not self._closed:
            if paused:
                self._chan.pause_reading()
            else:
                self._chan.resume_reading()

    def _maybe_finish(self) -> None:
        """Report the exit status once the child exited and all its output was sent."""
        child, chan = self.child, self._chan
        if child is None or child.status is None or self._open_outputs > 0 or chan is None:
            return
        if chan.is_closing():
            return
        self.report_exit(chan, child.status)

    def report_exit(self, chan: asyncssh.SSHServerChannel[bytes], status: _ExitStatus) -> None:
        """Send the exit status (or signal) and close the channel."""
        code, signame, core = status
        if code is not None:
            chan.exit(code)
        else:
            assert signame is not None
            chan.exit_with_signal(signame, core)

    def _close_pipes(self) -> None:
        """Close every pipe to the child (closing the transports closes the fds)."""
        for transport in self._outputs:
            transport.close()
        if self._stdin is not None:
            self._stdin.close()

    def connection_lost(self, exc: Exception | None) -> None:
        """Channel closed or connection dropped: stop the command and forget the session."""
        self._closed = True
        if self._sftp:
            self._sftp = False
            self._server.host.stats.sftp_open -= 1
        self._close_pipes()
        if self.child is not None:
            self._server.host.track(self.child.stop(self._server.host.kill_grace))
        self._server.session_closed()


class LocalShellServer(asyncssh.SSHServer):
    """One SSH connection: public-key auth for one key and user, then shell sessions."""

    def __init__(self, host: ShellHost) -> None:
        self.host = host
        self.conn: asyncssh.SSHServerConnection | None = None
        self.number = 0
        self.open_sessions = 0

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        """Count the connection where it is accepted (before the SSH handshake)."""
        self.conn = conn
        self.host.connection_made(self)

    def connection_lost(self, exc: Exception | None) -> None:
        """Count the connection out; its sessions clean up on their own."""
        self.host.connection_lost(self)

    def begin_auth(self, username: str) -> bool | Awaitable[bool]:
        """Always authenticate (a subclass may delay here to slow the handshake)."""
        return True

    def public_key_auth_supported(self) -> bool:
        """Public keys are the only method offered."""
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        """Only the host's user, only with the one authorized client key."""
        authorized = self.host.keys.client_key.public_data
        return username == self.host.user and key.public_data == authorized

    def session_requested(self) -> LocalShellSession:
        """Open a session (a subclass may refuse with ChannelOpenError first)."""
        self.open_sessions += 1
        self.host.stats.sessions_opened += 1
        return self.host.session_class(self)

    def session_closed(self) -> None:
        """A session of this connection ended."""
        self.open_sessions -= 1


@dataclass(eq=False)
class ShellHost:
    """One listening address of the local shell server, with its connections and counters."""

    keys: ShellKeys
    user: str = field(default_factory=getpass.getuser)
    cwd: Path = field(default_factory=Path.home)
    kill_grace: float = KILL_GRACE
    server_class: type[LocalShellServer] = LocalShellServer
    session_class: type[LocalShellSession] = LocalShellSession
    sftp: bool = True  # serve the sftp subsystem
    # (directory, path): the sftp-server sees directory at path, in a mount namespace of
    # its own (needs root and util-linux unshare): tests give each in-process host its
    # own files under one path, as separate machines would have
    sftp_view: tuple[Path, Path] | None = None
    address: str = field(init=False, default="")
    port: int = field(init=False, default=0)
    stats: ServerStats = field(init=False, default_factory=ServerStats)
    connections: dict[int, LocalShellServer] = field(init=False, default_factory=dict)
    _acceptor: asyncssh.SSHAcceptor | None = field(init=False, default=None)
    _tasks: set[asyncio.Task[None]] = field(init=False, default_factory=set)

    @property
    def identity_file(self) -> Path:
        """The client's private key file."""
        return self.keys.identity_file

    @property
    def known_hosts(self) -> Path:
        """A known_hosts file with this host's key for its address and port."""
        return self.keys.known_hosts

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> Self:
        """Listen (port 0: the kernel picks, no probe-then-bind race) and trust the address."""
        self._acceptor = await asyncssh.create_server(
            lambda: self.server_class(self),
            host,
            port,
            server_host_keys=[self.keys.host_key],
            encoding=None,
            line_editor=False,  # asyncssh's default would echo and edit pty input itself
            allow_scp=False,
            agent_forwarding=False,
            x11_forwarding=False,
        )
        self.address, self.port = self._acceptor.get_addresses()[0][:2]
        self.keys.trust(self.address, self.port)
        return self

    def connection_made(self, server: LocalShellServer) -> None:
        """Number and count a new connection."""
        self.stats.accepted += 1
        self.stats.open += 1
        self.stats.peak_open = max(self.stats.peak_open, self.stats.open)
        server.number = self.stats.accepted
        self.connections[server.number] = server

    def connection_lost(self, server: LocalShellServer) -> None:
        """Count a connection out."""
        if self.connections.pop(server.number, None) is not None:
            self.stats.open -= 1

    def channels_per_connection(self) -> dict[int, int]:
        """Open sessions of each open connection, by connection number."""
        return {n: s.open_sessions for n, s in self.connections.items()}

    def open_sessions(self) -> int:
        """Sessions open now, over every connection."""
        return sum(s.open_sessions for s in self.connections.values())

    def sftp_command(self) -> str | None:
        """The shell line that serves an sftp session, or None when there is none."""
        if not self.sftp or SFTP_SERVER is None:
            return None
        if self.sftp_view is None:
            return f"exec {SFTP_SERVER}"
        source, target = (shlex.quote(str(p)) for p in self.sftp_view)
        inner = shlex.quote(f"mount --bind {source} {target} && exec {SFTP_SERVER}")
        return f"exec unshare --mount --propagation private sh -c {inner}"

    def track(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a cleanup in the background; close() waits for it."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def host_config(self, name: str = "local") -> HostConfig:
        """A scout inventory entry that reaches this listener."""
        return host_entry(name, self)

    async def close(self) -> None:
        """Stop listening, drop every connection, and wait until their commands are gone."""
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
        for server in list(self.connections.values()):
            if server.conn is not None:
                server.conn.abort()
                await server.conn.wait_closed()
        while self._tasks:
            await asyncio.gather(*self._tasks)
