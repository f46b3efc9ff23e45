"""An SFTP session on a pooled connection, in a channel place like any command's.

An SFTP session is a session channel with the `sftp` subsystem, so it counts against
the host's MaxSessions like a command does: `Launcher.open()` reserves its place, opens
it within `channel_open_timeout`, and retries what is safe (server.launch). Nothing a
file operation does happens before the channel is open and the SFTP version exchange is
over, so every failure up to then is safe to retry: `committed` stays False. The
channel is opened here rather than by asyncssh's `start_sftp_client()`, so that its
close is visible: the place is released only when the channel is closed.

    async with sftp_session(launcher, host, until) as sftp:
        ...  # sftp.client: asyncssh's SFTPClient
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncssh
from asyncssh.sftp import MIN_SFTP_VERSION, SFTPClient
from asyncssh.sftp import start_sftp_client as _start_sftp_client
from asyncssh.stream import SSHClientStreamSession

from .config import HostConfig
from .errors import ConnectionDead, HostRejected, HostUnavailable, not_opened
from .launch import Launcher

CLOSE_WAIT = 1.0  # after EOF and a channel close, how long to wait for the server's close


class _SFTPStreamSession(SSHClientStreamSession[bytes]):
    """asyncssh's stream session, telling when the channel is closed."""

    def __init__(self, abandoned: bool) -> None:
        super().__init__()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.abandoned = abandoned
        self.chan: asyncssh.SSHClientChannel[bytes] | None = None

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:  # type: ignore[override]
        super().connection_made(chan)
        self.chan = chan
        if self.abandoned:
            chan.close()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self.closed.done():
            self.closed.set_result(None)


class SFTPChannel:
    """An open SFTP session: asyncssh's client, and the channel under it."""

    def __init__(self, host: str, client: SFTPClient, session: _SFTPStreamSession) -> None:
        self.host = host
        self.client = client
        self.session = session

    @property
    def ended(self) -> bool:
        """The channel is closed."""
        return self.session.closed.done()

    async def stop(self, within: float | None = None) -> None:
        """EOF, then close the channel; wait (bounded) for the server's close."""
        if self.ended:
            return
        with contextlib.suppress(OSError, asyncssh.Error):
            self.client.exit()
        chan = self.session.chan
        if chan is not None:
            chan.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.session.closed), within or CLOSE_WAIT)

    async def wait_closed(self) -> None:
        """Until the channel is closed."""
        await asyncio.shield(self.session.closed)


class SFTPOpening:
    """Opening an SFTP channel; as server.command.Opening, for the launcher."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.session: _SFTPStreamSession | None = None
        self._abandoned = False

    @property
    def committed(self) -> bool:
        """Never: a file operation starts only after the open returned."""
        return False

    @property
    def closed(self) -> asyncio.Future[None] | None:
        """The channel's close, once it is open."""
        return None if self.session is None else self.session.closed

    def abandon(self) -> None:
        """The caller no longer waits: a channel that opens from now on is closed."""
        self._abandoned = True
        if self.session is not None:
            self.session.abandoned = True

    def _factory(self) -> _SFTPStreamSession:
        self.session = _SFTPStreamSession(self._abandoned)
        return self.session

    async def run(self, conn: asyncssh.SSHClientConnection) -> SFTPChannel:
        """Open the channel, ask for the sftp subsystem, exchange versions."""
        try:
            chan, _ = await conn.create_session(self._factory, subsystem="sftp", encoding=None)
        except asyncssh.ChannelOpenError as exc:
            if self.session is None:
                raise not_opened(exc.reason, connection_closed=conn.is_closed()) from exc
            if conn.is_closed():
                raise HostUnavailable(
                    f"{self.host}: SSH connection lost opening SFTP", self.host
                ) from exc
            raise HostRejected(
                f"{self.host}: the SSH server refused the sftp subsystem ({exc.reason})", self.host
            ) from exc
        except (asyncssh.Error, OSError) as exc:
            if self.session is None:
                raise ConnectionDead(str(exc) or type(exc).__name__) from exc
            raise HostUnavailable(
                f"{self.host}: SSH connection lost opening SFTP ({exc})", self.host
            ) from exc
        session = self.session
        assert session is not None
        writer = asyncssh.SSHWriter[bytes](session, chan)
        reader = asyncssh.SSHReader[bytes](session, chan)
        try:
            client = await _start_sftp_client(
                conn,
                asyncio.get_running_loop(),
                "strict",
                reader,
                writer,
                "utf-8",
                "strict",
                MIN_SFTP_VERSION,
            )
        except (asyncssh.Error, OSError, asyncio.IncompleteReadError) as exc:
            chan.close()
            raise HostRejected(
                f"{self.host}: the SSH server has no working SFTP server ({exc})", self.host
            ) from exc
        return SFTPChannel(self.host, client, session)


@contextlib.asynccontextmanager
async def sftp_session(
    launcher: Launcher, host: HostConfig, until: float
) -> AsyncIterator[SFTPChannel]:
    """An SFTP channel in a reserved place; closed, then its place released, on exit."""
    res, channel = await launcher.open(host, lambda: SFTPOpening(host.name), until)
    try:
        yield channel
    finally:
        stop = launcher.finish(res, channel, None)
        if stop is not None:
            await asyncio.shield(stop)
