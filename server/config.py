"""The configuration's shape: one frozen value per section, with the defaults.

The TOML file is read and checked in `server.configfile`; here are the types, the
limits they imply, and the rule for exposing scout off loopback (`check_exposure`).
"""

from __future__ import annotations

import getpass
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

DEFAULT_LISTEN = "127.0.0.1:50051"
HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,253}")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_EXEC_LINE = 100 * 1024  # the final command line: well under sshd's 256 KiB packet and
#                            Linux's 128 KiB limit on one argument (the login shell's -c)
MAX_ENV_BYTES = 64 * 1024  # names and values of one request's environment, before quoting
MAX_WORKING_DIR_BYTES = 4096  # PATH_MAX
MESSAGE_OVERHEAD = 64 * 1024  # room in a gRPC message beyond its payload fields


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


@dataclass(frozen=True)
class SSHSettings:
    """How the gateway authenticates to hosts and verifies them, and where hosts come from."""

    known_hosts: Path | None = None  # None: ~/.ssh/known_hosts
    client_keys: tuple[Path, ...] = ()  # empty: asyncssh's defaults (~/.ssh/id_*)
    config_files: tuple[Path, ...] = ()  # OpenSSH client config files: every concrete Host
    agent: str | None = None  # ssh-agent socket; None: $SSH_AUTH_SOCK when set
    allow_match_exec: bool = False  # `Match exec` in config_files runs commands here: loud


@dataclass(frozen=True)
class PoolSettings:
    """Bounds of the SSH connection pool (docs/architecture.md, pool rules 1-8)."""

    shards: int = 16
    max_connections: int = 256
    max_connections_per_host: int = 8
    max_sessions_per_connection: int = 8
    max_concurrent_handshakes: int = 8
    idle_timeout: float = 300.0
    max_age: float = 3600.0
    keepalive_interval: float = 15.0
    keepalive_count_max: int = 3
    connect_timeout: float = 10.0
    channel_open_timeout: float = 2.0  # and at most a third of the time a request has left


@dataclass(frozen=True)
class ExecSettings:
    """Limits on the commands themselves."""

    default_timeout: float = 300.0  # Execute, when a request sets none
    stream_default_timeout: float = 3600.0  # Stream, when a request sets none
    stream_start_timeout: float = 5.0  # a Stream that sends no `start` by then is refused
    stream_messages_per_second: float = 1000.0  # one Stream's messages: paced beyond
    max_timeout: float = 3600.0
    # Execute, per stream. A response holds both streams and, with `text`, a copy of each
    # (capped alike): 4 x 1,000,000 bytes stays under the 4 MiB that default gRPC clients
    # (grpcurl, Go, Node, Java) accept.
    max_output_bytes: int = 1_000_000
    max_buffered_output_bytes: int = 256 * 1024 * 1024  # Execute output held, server-wide
    kill_grace: float = 2.0
    max_command_bytes: int = 64 * 1024
    max_stdin_bytes: int = 16 * 1024 * 1024
    export_request_id: bool = False  # the command sees SCOUT_REQUEST_ID

    def receive_limit(self) -> int:
        """The gRPC receive limit: the largest request these limits allow."""
        return (
            self.max_stdin_bytes
            + self.max_command_bytes
            + MAX_ENV_BYTES
            + MAX_WORKING_DIR_BYTES
            + MESSAGE_OVERHEAD
        )

    def send_limit(self) -> int:
        """The gRPC send limit: the largest response (two streams and their text copies)."""
        return max(4 * self.max_output_bytes, 2 * 1024 * 1024) + MESSAGE_OVERHEAD


@dataclass(frozen=True)
class HostConfig:
    """One SSH host of the inventory."""

    name: str
    address: str
    port: int = 22
    user: str = field(default_factory=getpass.getuser)
    identity_file: Path | None = None
    known_hosts: Path | None = None  # overrides [ssh] known_hosts for this host
    insecure_accept_any_host_key: bool = False  # no host key check: loud at start
    identity_files: tuple[Path, ...] = ()  # from ssh_config IdentityFile, after identity_file
    # not compared: two configs that differ only in labels connect the same way (a reload
    # that relabels a host keeps its connections)
    labels: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    jump: HostConfig | None = None  # the last ProxyJump hop (its own jump is the one before)
    keepalive_interval: float | None = None  # ssh_config ServerAliveInterval
    keepalive_count_max: int | None = None  # ssh_config ServerAliveCountMax

    @property
    def via(self) -> tuple[str, ...]:
        """The jump hosts' names, first hop first."""
        hops: list[str] = []
        hop = self.jump
        while hop is not None:
            hops.insert(0, hop.name)
            hop = hop.jump
        return tuple(hops)


class Endpoint(Protocol):
    """An SSH server scout starts itself (the demo's, the tests'): where, and how to log in."""

    @property
    def address(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def user(self) -> str: ...
    @property
    def identity_file(self) -> Path: ...
    @property
    def known_hosts(self) -> Path: ...


def host_entry(name: str, server: Endpoint) -> HostConfig:
    """The inventory entry that reaches server."""
    return HostConfig(
        name=name,
        address=server.address,
        port=server.port,
        user=server.user,
        identity_file=server.identity_file,
        known_hosts=server.known_hosts,
    )


@dataclass(frozen=True)
class TLSSettings:
    """The server's certificate, and the CA whose client certificates it requires."""

    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None  # set: mutual TLS, every caller shows a certificate

    @property
    def enabled(self) -> bool:
        """TLS is configured."""
        return self.cert_file is not None


@dataclass(frozen=True)
class CallerConfig:
    """One caller that may use scout, and what it may do."""

    name: str
    token_sha256: str | None = None  # hex SHA-256 of its bearer token
    cert_common_name: str | None = None  # or its mTLS client certificate's CN
    hosts: tuple[str, ...] = ()  # glob patterns over inventory names; empty: none
    # argv patterns (server.argvpolicy); set, even empty: the caller is restricted, argv
    # only (an empty list: no command at all)
    commands: tuple[str, ...] | None = None  # None (unset): any command, shell line or argv
    # None (unset): none for a restricted caller, any for another; set: only these
    env: tuple[str, ...] | None = None  # variable names it may set
    working_dirs: tuple[str, ...] | None = None  # glob patterns over working_dir
    stream: bool = False  # may use Stream (stdin, signals, pty)
    max_in_flight: int = 64
    files: str = "none"  # Upload/Download: "none", "read", "write" or "read-write"
    paths: tuple[str, ...] = ()  # globs over normalised absolute paths (server.pathpolicy)

    def may_files(self, direction: str) -> bool:
        """Whether the policy allows reading ("read") or writing ("write") files at all."""
        return self.files in ("read-write", direction)

    @property
    def restricted(self) -> bool:
        """Its policy lists commands: it may send only argv, within them."""
        return self.commands is not None


@dataclass(frozen=True)
class FanoutSettings:
    """ExecuteMany: how many hosts run at once, and how many one call may name."""

    default_parallel: int = 32
    max_parallel: int = 256
    max_targets: int = 10_000


@dataclass(frozen=True)
class MetricsSettings:
    """Prometheus /metrics: where it is served ("": not served), and per-host series."""

    listen: str = ""
    per_host: bool = True  # a label per host: fine for hundreds, off for thousands


@dataclass(frozen=True)
class AuditSettings:
    """Where the audit log goes ("": nowhere, "-": stdout) and what it holds."""

    file: str = ""
    log_commands: bool = True  # False: only each command's SHA-256


@dataclass(frozen=True)
class ServerSettings:
    """The gRPC port: HTTP/2 pings (scout's, to find callers that are gone; and how often
    callers and proxies may ping while a call is quiet), and the health Watch and
    reflection streams, which are outside max_concurrent_rpcs, bounded on their own."""

    keepalive_interval: float = 30.0  # seconds between scout's pings on a connection; 0: none
    keepalive_timeout: float = 10.0  # no answer by then: the caller is gone, its calls cancelled
    min_ping_interval: float = 0.5  # a caller's pings closer than this are strikes...
    max_ping_strikes: int = 2  # ...and one more than this many: GOAWAY "too many pings"; 0: any
    max_introspection_streams: int = 1024  # health Watch and reflection streams at once


@dataclass(frozen=True)
class FilesSettings:
    """Upload, Download and UploadMany: the largest file, and where UploadMany spools."""

    max_file_bytes: int = 1 << 30
    # None: $STATE_DIRECTORY/spool under systemd's StateDirectory=, else the system's
    # temporary directory (server.spool). Spool files are unlinked as soon as they open.
    spool_dir: Path | None = None
    chunk_bytes: int = 1024 * 1024  # bytes per Download message (SFTP requests: <= this)
    window: int = 16  # SFTP requests in flight per transfer (OpenSSH's: 255 KiB each)


@dataclass(frozen=True)
class DurableSettings:
    """Keyed commands (issue 21): where their records live, and the bounds on them."""

    # "sqlite:PATH" or "redis://HOST:PORT/DB" ("rediss://" for TLS); "": the default SQLite
    # file (server.durablestore.default_store_url). Not in repr: a redis URL may hold a
    # password (`redact` gives the form fit for a log line).
    store: str = field(default="", repr=False)
    retention: float = 86400.0  # seconds a record is kept, counted from its claim
    max_records: int = 1_000_000  # unexpired records kept; then keyed calls are refused
    max_outcome_bytes: int = 1024 * 1024  # one record's encoded outcome
    replay_buffer_bytes: int = 1024 * 1024  # output kept per command for `attach`
    max_detached: int = 1000  # commands running on with nobody attached
    max_detach_grace: float = 3600.0  # the largest `detach_grace` a request may ask


def redact(url: str) -> str:
    """A store URL fit for a log line or a message: whatever comes before the last "@"
    (user and password, however oddly written) and any query (which may carry them too)
    replaced by ***. Not parsed: a password with an unescaped "/" or "?" is hidden too."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    if "?" in rest or "#" in rest:
        rest = rest.split("?")[0].split("#")[0] + "?***"
    return f"{scheme}://{rest}"


WORKERS_AUTO = 0  # `workers = "auto"`: one per core, as many as the shared limits allow


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    listen: str = DEFAULT_LISTEN
    workers: int = 1  # processes serving the port (server.workers); WORKERS_AUTO: "auto"
    shutdown_grace: float = 10.0
    max_concurrent_rpcs: int = 4096
    allow_plaintext: bool = False  # plaintext off loopback (behind a TLS proxy only)
    allow_anonymous: bool = False  # off loopback with no [[callers]] and no mTLS
    server: ServerSettings = field(default_factory=ServerSettings)
    ssh: SSHSettings = field(default_factory=SSHSettings)
    pool: PoolSettings = field(default_factory=PoolSettings)
    exec: ExecSettings = field(default_factory=ExecSettings)
    tls: TLSSettings = field(default_factory=TLSSettings)
    callers: tuple[CallerConfig, ...] = ()
    audit: AuditSettings = field(default_factory=AuditSettings)
    fanout: FanoutSettings = field(default_factory=FanoutSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    files: FilesSettings = field(default_factory=FilesSettings)
    durable: DurableSettings = field(default_factory=DurableSettings)
    hosts: dict[str, HostConfig] = field(default_factory=dict)


def is_loopback(listen: str) -> bool:
    """Whether a HOST:PORT listen address is on this machine's loopback only."""
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(config: Config, listen: str) -> list[str]:
    """Refuse to serve off loopback without TLS or identities; return the warnings to log.

    Plaintext would carry tokens and commands in the clear; no callers and no mTLS would
    let anyone who reaches the port run anything. Each has an explicit, loud way out.
    """
    warnings = metrics_warnings(config)
    if is_loopback(listen):
        return warnings
    if not config.tls.enabled:
        if not config.allow_plaintext:
            raise ConfigError(
                f"listen: {listen} is not a loopback address and [tls] is not set, so tokens "
                "and commands would cross the network in the clear. Set [tls] cert_file and "
                "key_file, or allow_plaintext = true if a TLS-terminating proxy is in front"
            )
        warnings.append(f"allow_plaintext = true: serving {listen} WITHOUT TLS")
    if not config.callers and config.tls.client_ca_file is None:
        if not config.allow_anonymous:
            raise ConfigError(
                f"listen: {listen} is not a loopback address and no [[callers]] are "
                "configured (nor [tls] client_ca_file), so anyone who reaches it could run "
                "any command on every host. Add [[callers]], or allow_anonymous = true"
            )
        warnings.append(f"allow_anonymous = true: ANYONE who reaches {listen} can run commands")
    return warnings


def metrics_warnings(config: Config) -> list[str]:
    """/metrics off loopback: allowed (Prometheus may scrape from another machine), but said
    loudly, since it has no authentication and names every host and caller."""
    listen = config.metrics.listen
    if not listen or is_loopback(listen):
        return []
    return [
        f"[metrics] listen = {listen}: /metrics is served off loopback WITHOUT authentication "
        "or TLS; anyone who reaches it reads every host's and caller's name and call counts. "
        "Keep it on a network only Prometheus reaches"
    ]


def listening_line(config: Config, address: str, port: int) -> str:
    """What the server's "listening on" line says: where, over what, how many hosts and callers."""
    tls = config.tls
    over = "plaintext" if not tls.enabled else "mutual TLS" if tls.client_ca_file else "TLS"
    callers = f"{len(config.callers)} callers" if config.callers else "no callers (open)"
    return f"{address} (port {port}) over {over}, {len(config.hosts)} hosts, {callers}"
