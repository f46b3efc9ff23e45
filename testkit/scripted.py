"""Scripted in-process SSH servers: the demo's local shell server, steerable by tests.

A ScriptedServer is a server.demo.ShellHost (real SSH, real keys, real /bin/sh commands)
whose behaviour a test changes while it runs:

    handshake_delay     seconds the server waits before it starts authenticating a user
    max_sessions        refuse channel opens beyond this many open sessions on a connection
                        (like sshd's MaxSessions: the client sees ChannelOpenError "open failed")
    hang() / unhang()   stop reading from every connection, new ones too: a peer that no
                        longer answers (keepalives time out), without closing anything
    drop_connections()  abort every connection now, as a crash or a cut cable would

Large or slow output needs no knob: the commands are real (`head -c 10M /dev/zero`,
`sleep 1; echo`). Counters are in `server.stats` (accepted, open, peak_open,
sessions_opened, sessions_refused) and `server.channels_per_connection()`.

Many servers are cheap: they share one ShellKeys (one known_hosts file for all), and
start_fleet() starts them concurrently on many ports or many 127.0.0.x addresses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncssh

from server.config import Config, HostConfig, SSHSettings
from server.keyfiles import ShellKeys
from server.localshell import LocalShellServer, LocalShellSession, ShellHost


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

    def session_requested(self) -> LocalShellSession:
        """Refuse a channel beyond max_sessions the way sshd does, else open it."""
        cap = self.host.max_sessions
        if cap is not None and self.open_sessions >= cap:
            self.host.stats.sessions_refused += 1
            # sshd 9.2's exact refusal: reason 2 (connect failed), "open failed"
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "open failed")
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
    server_class: type[LocalShellServer] = ScriptedConnection
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
