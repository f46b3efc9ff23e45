"""Opening SSH connections to inventory hosts, and naming what went wrong.

Host keys are verified against known_hosts. When a host offers a key that is not there,
the message tells an unknown key (never seen: add it) from a changed one (the file lists
another: check before trusting), with the offered key's fingerprint. known_hosts files and
client keys are read at start and again when they change (server.sshfiles), so adding or
revoking a key takes effect without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import asyncssh

from .config import HostConfig, PoolSettings, SSHSettings
from .errors import FileError, HostRejected, HostUnavailable, ScoutError
from .live import LiveConfig
from .pool import Pool, Reservation
from .sshfiles import KeyFiles, KnownHostsFiles, fingerprint

log = logging.getLogger(__name__)

DEFAULT_KNOWN_HOSTS = Path("~/.ssh/known_hosts")

# AES-GCM first: one AEAD call per packet, where asyncssh's chacha20-poly1305 builds
# several cipher contexts per packet (a quarter of the server's CPU per command).
CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)


async def round_trip(conn: asyncssh.SSHClientConnection) -> None:
    """One request the server must answer, after everything sent before it: OpenSSH's
    own keepalive (`keepalive@openssh.com`, answered with a failure by most servers).
    asyncssh sends it on its keepalive timer only, through this method of its own."""
    await conn._make_global_request(b"keepalive@openssh.com")


class _Client(asyncssh.SSHClient):
    """Tells the pool when the connection closes; notes a host key it did not trust."""

    def __init__(self, on_lost: Callable[[], None]) -> None:
        self._on_lost = on_lost
        self.offered: asyncssh.SSHKey | None = None

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        """Called only for a key known_hosts does not trust: remember it, refuse it."""
        self.offered = key
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        """Called by asyncssh once the connection is gone."""
        self._on_lost()


class Connector:
    """Connects to hosts with options built from the current known_hosts and keys, and
    the `[ssh]` and `[pool]` settings of the config in force."""

    def __init__(self, live: LiveConfig) -> None:
        self._live = live
        self.pool: Pool[asyncssh.SSHClientConnection] | None = None  # for jump hosts
        self.known_hosts = KnownHostsFiles()
        self.keys = KeyFiles()

    @property
    def _ssh(self) -> SSHSettings:
        return self._live.current.ssh

    @property
    def _pool(self) -> PoolSettings:
        return self._live.current.pool

    def known_hosts_path(self, host: HostConfig, ssh: SSHSettings | None = None) -> Path:
        """The known_hosts file that vouches for host (under ssh, default: in force)."""
        default = (ssh or self._ssh).known_hosts
        return (host.known_hosts or default or DEFAULT_KNOWN_HOSTS).expanduser()

    def key_paths(self, host: HostConfig, ssh: SSHSettings | None = None) -> list[Path]:
        """The client keys scout offers host (empty: asyncssh's default ~/.ssh/id_*)."""
        if host.identity_file:
            return [host.identity_file]
        return list(host.identity_files or (ssh or self._ssh).client_keys)

    def uses(self, host: HostConfig, paths: set[Path]) -> bool:
        """Whether host relies on one of these known_hosts or key files."""
        if not host.insecure_accept_any_host_key and self.known_hosts_path(host) in paths:
            return True
        return not paths.isdisjoint(self.key_paths(host))

    def hosts_with_jumps(self, hosts: Iterable[HostConfig]) -> list[HostConfig]:
        """The hosts and every jump host they go through."""
        seen: dict[str, HostConfig] = {}
        for host in hosts:
            hop: HostConfig | None = host
            while hop is not None and hop.name not in seen:
                seen[hop.name] = hop
                hop = hop.jump
        return list(seen.values())

    def preload(self, hosts: Iterable[HostConfig], ssh: SSHSettings | None = None) -> None:
        """Read the hosts' known_hosts files and keys now, each file once; FileError names
        a bad one. ssh: the `[ssh]` settings they will be used under (default: in force)."""
        known: dict[Path, None] = {}
        keys: dict[Path, None] = {}
        for host in self.hosts_with_jumps(hosts):
            if not host.insecure_accept_any_host_key:
                known[self.known_hosts_path(host, ssh)] = None
            keys.update(dict.fromkeys(self.key_paths(host, ssh)))
        for path in known:
            self.known_hosts.load(path)
        for path in keys:
            self.keys.load(path)

    def reload(self) -> list[Path]:
        """Re-read the files that changed (SIGHUP, or the periodic check); return them."""
        return self.known_hosts.changed() + self.keys.changed()

    async def __call__(
        self, host: HostConfig, on_lost: Callable[[], None]
    ) -> asyncssh.SSHClientConnection:
        """Open an authenticated connection to host, or raise a ScoutError.

        Through a jump host (ProxyJump), the tunnel is a channel on a pooled connection
        to that hop, held for as long as this connection lives: a hop is pooled, shared
        and bounded like any host.
        """
        hop = await self._hop(host) if host.jump is not None else None
        if hop is None:
            return await self._connect(host, _Client(on_lost), None)

        def lost() -> None:
            on_lost()
            hop.release()

        try:
            return await self._connect(host, _Client(lost), hop.conn)
        except BaseException:
            hop.release()
            raise

    async def _hop(self, host: HostConfig) -> Reservation[asyncssh.SSHClientConnection]:
        """A channel's place on a pooled connection to host's last jump host."""
        assert host.jump is not None and self.pool is not None
        try:
            return await self.pool.reserve(host.jump, time.monotonic() + self._pool.connect_timeout)
        except ScoutError as exc:
            raise HostUnavailable(
                f"{host.name}: through jump host {host.jump.name}: {exc.message}",
                host.name,
                mentions=host.via,
            ) from None

    async def _connect(
        self,
        host: HostConfig,
        client: _Client,
        tunnel: asyncssh.SSHClientConnection | None,
    ) -> asyncssh.SSHClientConnection:
        try:
            known = (
                None
                if host.insecure_accept_any_host_key
                else self.known_hosts.get(self.known_hosts_path(host))
            )
            keys = [self.keys.get(p) for p in self.key_paths(host)]
            return await asyncssh.connect(
                host.address,
                host.port,
                tunnel=tunnel,
                options=self._options(host, known, keys),
                config=None,
                client_factory=lambda: client,
            )
        except FileError as exc:
            raise HostRejected(f"{host.name}: {exc}", host.name) from None
        except ScoutError:
            raise
        except Exception as exc:
            raise self.classify(host, exc, client.offered) from exc

    def _options(
        self, host: HostConfig, known: asyncssh.SSHKnownHosts | None, keys: list[asyncssh.SSHKey]
    ) -> asyncssh.SSHClientConnectionOptions:
        """Options for one connect: its key, known hosts and the pool's timers."""
        settings = self._pool
        interval = host.keepalive_interval
        if interval is None:
            interval = settings.keepalive_interval
        return asyncssh.SSHClientConnectionOptions(
            username=host.user,
            client_keys=keys or (),
            known_hosts=known,
            agent_path=self._ssh.agent or os.environ.get("SSH_AUTH_SOCK") or None,
            password=None,
            kbdint_auth=False,
            keepalive_interval=interval or None,
            keepalive_count_max=host.keepalive_count_max or settings.keepalive_count_max,
            connect_timeout=settings.connect_timeout,
            login_timeout=settings.connect_timeout,
            encryption_algs=CIPHERS,
            config=None,
        )

    def classify(
        self, host: HostConfig, exc: BaseException, offered: asyncssh.SSHKey | None
    ) -> ScoutError:
        """Name a failed connect: the host's fault (retry later) or ours (fix the config)."""
        where = f"{host.name} ({host.user}@{host.address}:{host.port})"
        if isinstance(exc, asyncssh.HostKeyNotVerifiable):
            return self._untrusted(host, where, exc, offered)
        if isinstance(exc, asyncssh.PermissionDenied):
            return HostRejected(
                f"{where}: SSH authentication refused for user {host.user!r}; check the "
                "gateway's client key is in the host's authorized_keys",
                host.name,
            )
        if isinstance(exc, asyncio.TimeoutError | TimeoutError):
            return HostUnavailable(
                f"{where}: SSH connect timed out after {self._pool.connect_timeout:g}s",
                host.name,
            )
        if isinstance(exc, asyncssh.Error):
            return HostUnavailable(f"{where}: SSH connection failed: {exc.reason}", host.name)
        if isinstance(exc, OSError):
            reason = exc.strerror or str(exc) or type(exc).__name__
            return HostUnavailable(f"{where}: cannot connect: {reason}", host.name)
        log.error("unexpected connect error for %s", host.name, exc_info=exc)
        return HostUnavailable(f"{where}: SSH connection failed", host.name)

    def _untrusted(
        self,
        host: HostConfig,
        where: str,
        exc: asyncssh.HostKeyNotVerifiable,
        offered: asyncssh.SSHKey | None,
    ) -> HostRejected:
        """Unknown key, changed key, or revoked key: each says what to do."""
        path = self.known_hosts_path(host)
        if offered is None:
            return HostRejected(
                f"{where}: host key not trusted ({exc.reason}), per {path}", host.name
            )
        known = self.known_hosts.get(path)
        port = host.port if host.port != 22 else None
        listed = known.match(host.address, "", port)[0]
        entry = f"[{host.address}]:{host.port}" if port else host.address
        if listed:
            return HostRejected(
                f"{where}: HOST KEY CHANGED: the host offered {fingerprint(offered)}, but {path} "
                f"lists another key for {entry}. If the change is expected, replace that line "
                "after checking the fingerprint; otherwise someone may be intercepting",
                host.name,
            )
        return HostRejected(
            f"{where}: host key unknown: the host offered {fingerprint(offered)} and {path} "
            f"has no key for {entry}; add it there after checking the fingerprint "
            f"(ssh-keyscan -p {host.port} {host.address})",
            host.name,
        )
