"""Opening SSH connections to inventory hosts, and naming what went wrong.

Options (keys, known hosts, keepalive, timeouts) are built once per host and reused,
so a connect reads no file. Host keys are verified against known_hosts by default.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import asyncssh

from .config import HostConfig, PoolSettings, SSHSettings
from .errors import HostRejected, HostUnavailable, ScoutError

log = logging.getLogger(__name__)

# AES-GCM first: one AEAD call per packet, where asyncssh's chacha20-poly1305 builds
# several cipher contexts per packet (a quarter of the server's CPU per command).
CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes256-ctr",
)


class _LossWatcher(asyncssh.SSHClient):
    """Tells the pool the moment a connection closes, whatever closed it."""

    def __init__(self, on_lost: Callable[[], None]) -> None:
        self._on_lost = on_lost

    def connection_lost(self, exc: Exception | None) -> None:
        """Called by asyncssh once the connection is gone."""
        self._on_lost()


class Connector:
    """Connects to hosts with per-host options built on first use."""

    def __init__(self, ssh: SSHSettings, pool: PoolSettings) -> None:
        self._ssh = ssh
        self._pool = pool
        self._options: dict[str, asyncssh.SSHClientConnectionOptions] = {}
        self._keys: dict[Path, asyncssh.SSHKey] = {}
        self._known: dict[Path, asyncssh.SSHKnownHosts] = {}

    async def __call__(
        self, host: HostConfig, on_lost: Callable[[], None]
    ) -> asyncssh.SSHClientConnection:
        """Open an authenticated connection to host, or raise a ScoutError."""
        try:
            options = self._options.get(host.name) or self._build(host)
            return await asyncssh.connect(
                host.address,
                host.port,
                options=options,
                config=None,
                client_factory=lambda: _LossWatcher(on_lost),
            )
        except ScoutError:
            raise
        except Exception as exc:
            raise classify_connect_error(host, exc) from exc

    def _build(self, host: HostConfig) -> asyncssh.SSHClientConnectionOptions:
        """Options for one host: its key, known hosts and the pool's timers."""
        keys = [host.identity_file] if host.identity_file else list(self._ssh.client_keys)
        known = host.known_hosts or self._ssh.known_hosts or Path("~/.ssh/known_hosts")
        settings = self._pool
        options = asyncssh.SSHClientConnectionOptions(
            username=host.user,
            client_keys=[self._key(p, host) for p in keys] if keys else (),
            known_hosts=self._known_hosts(known.expanduser(), host),
            agent_path=None,
            password=None,
            kbdint_auth=False,
            keepalive_interval=settings.keepalive_interval or None,
            keepalive_count_max=settings.keepalive_count_max,
            connect_timeout=settings.connect_timeout,
            login_timeout=settings.connect_timeout,
            encryption_algs=CIPHERS,
            config=None,
        )
        self._options[host.name] = options
        return options

    def _key(self, path: Path, host: HostConfig) -> asyncssh.SSHKey:
        """A private key, read once."""
        key = self._keys.get(path)
        if key is None:
            try:
                key = self._keys[path] = asyncssh.read_private_key(path)
            except (OSError, asyncssh.KeyImportError) as exc:
                raise HostRejected(
                    f"{host.name}: cannot read the client key {path}: {exc}", host.name
                ) from exc
        return key

    def _known_hosts(self, path: Path, host: HostConfig) -> asyncssh.SSHKnownHosts:
        """The known_hosts file, read once."""
        known = self._known.get(path)
        if known is None:
            try:
                known = self._known[path] = asyncssh.read_known_hosts(str(path))
            except (OSError, ValueError) as exc:
                raise HostRejected(
                    f"{host.name}: cannot read known_hosts {path}: {exc}; host keys are "
                    "verified, so scout needs the host's key there",
                    host.name,
                ) from exc
        return known


def classify_connect_error(host: HostConfig, exc: BaseException) -> ScoutError:
    """Name a failed connect: the host's fault (retry later) or ours (fix the config)."""
    where = f"{host.name} ({host.user}@{host.address}:{host.port})"
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return HostRejected(
            f"{where}: host key not trusted ({exc.reason}); add the host's key to known_hosts "
            "if it is expected to have changed",
            host.name,
        )
    if isinstance(exc, asyncssh.PermissionDenied):
        return HostRejected(
            f"{where}: SSH authentication refused for user {host.user!r}; check the "
            "gateway's client key is in the host's authorized_keys",
            host.name,
        )
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return HostUnavailable(f"{where}: SSH connect timed out", host.name)
    if isinstance(exc, asyncssh.Error):
        return HostUnavailable(f"{where}: SSH connection failed: {exc.reason}", host.name)
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
        return HostUnavailable(f"{where}: cannot connect: {reason}", host.name)
    log.error("unexpected connect error for %s", host.name, exc_info=exc)
    return HostUnavailable(f"{where}: SSH connection failed", host.name)
