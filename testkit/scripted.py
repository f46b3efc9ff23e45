"""Scripted in-process SSH servers: the demo's local shell server, steerable by tests.

A ScriptedServer is a server.localshell.ShellHost (real SSH, real keys, real /bin/sh commands)
whose behaviour a test changes while it runs:

    handshake_delay     seconds the server waits before it starts authenticating a user
    max_sessions        refuse channel opens beyond this many open sessions on a connection
                        (like sshd's MaxSessions: the client sees ChannelOpenError "open failed")
    open_delay          seconds before the server confirms a channel open
    refuse_first        refuse the first N channel opens (then behave)
    hang() / unhang()   stop reading from every connection, new ones too: a peer that no
                        longer answers (keepalives time out), without closing anything
    drop_connections()  abort every connection now, as a crash or a cut cable would

Per command, a directive in front of it chooses adversarial timing, as asyncssh's own tests
choose server behaviour by the command string:

    @late-exec=SECS CMD      answer the exec request SECS late (CMD starts only then)
    @no-exit-status CMD      run CMD, then close the channel without an exit status

Large or slow output needs no knob: the commands are real (`head -c 10M /dev/zero`,
`sleep 1; echo`). Counters are in `server.stats` (accepted, open, peak_open,
sessions_opened, sessions_refused) and `server.channels_per_connection()`.

Many servers are cheap: they share one ShellKeys (one known_hosts file for all), and
start_fleet() starts them concurrently on many ports or many 127.0.0.x addresses.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncssh

from server.config import Config, HostConfig, SSHSettings
from server.keyfiles import ShellKeys
from server.localshell import LocalShellServer, LocalShellSession, ShellHost, _ExitStatus

DIRECTIVE = re.compile(r"@(late-exec|no-exit-status)(?:=([0-9.]+))?\s+(.*)", re.DOTALL)


class ScriptedSession(LocalShellSession):
    """A session that obeys the directive in front of its command."""

    _no_status = False

    def exec_requested(self, command: str) -> bool | None:  # type: ignore[override]
        """Run the command; with @late-exec, answer the request only after the delay."""
        match = DIRECTIVE.fullmatch(command)
        if match is None:
            return super().exec_requested(command)
        directive, value, rest = match.groups()
        super().exec_requested(rest)
        if directive == "no-exit-status":
            self._no_status = True
            return True
        loop = asyncio.get_running_loop()
        loop.call_later(float(value or 1), self._answer_exec)
        return None  # asyncssh waits for our answer (and starts the session after it)

    def _answer_exec(self) -> None:
        chan = self._chan
        if chan is not None and not chan.is_closing():
            # asyncssh has no public call for a late answer; this is what it calls itself.
            chan._report_response(True)

    def report_exit(self, chan: asyncssh.SSHServerChannel[bytes], status: _ExitStatus) -> None:
        """@no-exit-status: close without telling how the command ended."""
        if self._no_status:
            chan.close()
        else:
            super().report_exit(chan, status)


class ScriptedConnection(LocalShellServer):
    """One connection to a ScriptedServer: the knobs are read at the moment they apply."""

    host: ScriptedServer

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        """Count the connection; a hung server does not read from it either."""
        super().connection_made(conn)
        self.host.changed.set()
        if self.host.hung:
            self.pause(True)

    def connection_lost(self, exc: Exception | None) -> None:
        """Count the connection out and wake wait_open()."""
        super().connection_lost(exc)
        self.host.changed.set()

    async def begin_auth(self, username: str) -> bool:
        """Stall the handshake by handshake_delay before authentication can complete."""
        if self.host.handshake_delay > 0:
            await asyncio.sleep(self.host.handshake_delay)
        return True

    def session_requested(  # type: ignore[override]  # asyncssh accepts an awaitable
        self,
    ) -> LocalShellSession | Awaitable[LocalShellSession]:
        """Refuse a channel the way sshd does (beyond max_sessions, or the first N), else
        open it, open_delay seconds late if asked."""
        host = self.host
        cap = host.max_sessions
        if (cap is not None and self.open_sessions >= cap) or host.refuse_first > 0:
            host.refuse_first = max(host.refuse_first - 1, 0)
            host.stats.sessions_refused += 1
            # sshd 9.2's exact refusal: reason 2 (connect failed), "open failed"
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "open failed")
        if host.open_delay > 0:
            return self._open_later(host.open_delay)
        return super().session_requested()

    async def _open_later(self, delay: float) -> LocalShellSession:
        await asyncio.sleep(delay)
        return super().session_requested()

    def pause(self, paused: bool) -> None:
        """Stop or restart reading this connection's socket (nothing is answered meanwhile)."""
        # asyncssh has no public handle on its transport; this is the asyncio one.
        transport = self.conn._transport if self.conn is not None else None
        if transport is None or transport.is_closing():
            return
        if paused:
            transport.pause_reading()
        else:
            transport.resume_reading()


@dataclass(eq=False)
class ScriptedServer(ShellHost):
    """A local shell SSH server whose handshake, session cap and liveness tests control."""

    handshake_delay: float = 0.0
    max_sessions: int | None = None
    open_delay: float = 0.0
    refuse_first: int = 0
    server_class: type[LocalShellServer] = ScriptedConnection
    session_class: type[LocalShellSession] = ScriptedSession
    hung: bool = field(init=False, default=False)
    changed: asyncio.Event = field(init=False, default_factory=asyncio.Event)

    def scripted(self) -> list[ScriptedConnection]:
        """The open connections, typed as the scripted kind they are."""
        return [c for c in self.connections.values() if isinstance(c, ScriptedConnection)]

    def hang(self) -> None:
        """Stop answering on every connection, and on new ones, until unhang()."""
        self.hung = True
        for conn in self.scripted():
            conn.pause(True)

    def unhang(self) -> None:
        """Answer again; what the peers sent meanwhile is processed now."""
        self.hung = False
        for conn in self.scripted():
            conn.pause(False)

    def drop_connections(self) -> int:
        """Abort every open connection at once (no SSH disconnect message); return how many."""
        dropped = 0
        for conn in self.scripted():
            if conn.conn is not None:
                conn.conn.abort()
                dropped += 1
        return dropped

    async def wait_open(self, count: int) -> None:
        """Wait until exactly count connections are open (closes are seen asynchronously)."""
        while self.stats.open != count:
            self.changed.clear()
            await self.changed.wait()


async def start_scripted(
    keys: ShellKeys, host: str = "127.0.0.1", port: int = 0, **knobs: Any
) -> ScriptedServer:
    """Start one scripted server on host:port (port 0: any free port)."""
    server = ScriptedServer(keys, **knobs)
    return await server.start(host, port)


async def start_fleet(
    keys: ShellKeys,
    count: int,
    spread: Literal["ports", "addresses"] = "ports",
    **knobs: Any,
) -> list[ScriptedServer]:
    """Start count servers at once: on 127.0.0.1 ports, or on 127.0.0.2, 127.0.0.3, ..."""
    if spread == "addresses" and count > 250:
        raise ValueError("one /24 of loopback addresses: at most 250 servers")
    hosts = (
        ["127.0.0.1"] * count if spread == "ports" else [f"127.0.0.{i + 2}" for i in range(count)]
    )
    started = await asyncio.gather(
        *(start_scripted(keys, h, **knobs) for h in hosts), return_exceptions=True
    )
    servers = [s for s in started if isinstance(s, ScriptedServer)]
    errors = [e for e in started if isinstance(e, BaseException)]
    if errors:
        await close_all(servers)
        raise errors[0]
    return servers


async def close_all(servers: Iterable[ShellHost]) -> None:
    """Close many servers concurrently."""
    await asyncio.gather(*(s.close() for s in servers))


@asynccontextmanager
async def scripted_server(keys: ShellKeys, **knobs: Any) -> AsyncIterator[ScriptedServer]:
    """One scripted server for the block (start_scripted), closed on every way out."""
    server = await start_scripted(keys, **knobs)
    try:
        yield server
    finally:
        await server.close()


@asynccontextmanager
async def scripted_fleet(
    keys: ShellKeys, count: int, **options: Any
) -> AsyncIterator[list[ScriptedServer]]:
    """count scripted servers for the block (start_fleet), closed on every way out."""
    servers = await start_fleet(keys, count, **options)
    try:
        yield servers
    finally:
        await close_all(servers)


def inventory(servers: Iterable[ShellHost], prefix: str = "host") -> Config:
    """A scout Config whose hosts are these servers, named prefix0, prefix1, ..."""
    hosts = {f"{prefix}{i}": s.host_config(f"{prefix}{i}") for i, s in enumerate(servers)}
    known = next(iter(hosts.values())).known_hosts if hosts else None
    return Config(hosts=hosts, ssh=SSHSettings(known_hosts=known))


async def connect(host: HostConfig, **options: Any) -> asyncssh.SSHClientConnection:
    """A plain asyncssh client connection to an inventory host (binary I/O by default)."""
    options.setdefault("encoding", None)
    options.setdefault("config", None)  # not the user's ~/.ssh/config
    return await asyncssh.connect(
        host.address,
        host.port,
        username=host.user,
        client_keys=[str(host.identity_file)] if host.identity_file else (),
        known_hosts=str(host.known_hosts) if host.known_hosts else (),
        **options,
    )
