"""The TOML configuration: parsed once at start, every key checked, every value bounded.

Unknown keys and bad values stop the server with a message that names the key, so a
typo cannot silently fall back to a default.
"""

from __future__ import annotations

import getpass
import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_LISTEN = "127.0.0.1:50051"
HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,253}")
EXEC_LINE_MAX = 100 * 1024  # the final command line: well under sshd's 256 KiB packet and
#                            Linux's 128 KiB limit on one argument (the login shell's -c)
MAX_ENV_BYTES = 64 * 1024  # names and values of one request's environment, before quoting
MAX_WORKING_DIR_BYTES = 4096  # PATH_MAX
MESSAGE_OVERHEAD = 64 * 1024  # room in a gRPC message beyond its payload fields


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


@dataclass(frozen=True)
class SSHSettings:
    """How the gateway authenticates to hosts and verifies them."""

    known_hosts: Path | None = None  # None: ~/.ssh/known_hosts
    client_keys: tuple[Path, ...] = ()  # empty: asyncssh's defaults (~/.ssh/id_*)


@dataclass(frozen=True)
class PoolSettings:
    """Bounds of the SSH connection pool (DESIGN.md, pool rules 1-8)."""

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
    max_timeout: float = 3600.0
    # Execute, per stream. A response holds both streams and, with `text`, a copy of each
    # (capped alike): 4 x 1,000,000 bytes stays under the 4 MiB that default gRPC clients
    # (grpcurl, Go, Node, Java) accept.
    max_output_bytes: int = 1_000_000
    max_buffered_output_bytes: int = 256 * 1024 * 1024  # Execute output held, server-wide
    kill_grace: float = 2.0
    max_command_bytes: int = 64 * 1024
    max_stdin_bytes: int = 16 * 1024 * 1024

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


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    listen: str = DEFAULT_LISTEN
    shutdown_grace: float = 10.0
    max_concurrent_rpcs: int = 4096
    ssh: SSHSettings = field(default_factory=SSHSettings)
    pool: PoolSettings = field(default_factory=PoolSettings)
    exec: ExecSettings = field(default_factory=ExecSettings)
    hosts: dict[str, HostConfig] = field(default_factory=dict)


# key -> (type, lowest allowed, highest allowed); None: unbounded
_Bounds = dict[str, tuple[type, float | None, float | None]]

_POOL_BOUNDS: _Bounds = {
    "shards": (int, 1, 4096),
    "max_connections": (int, 1, 100_000),
    "max_connections_per_host": (int, 1, 10_000),
    "max_sessions_per_connection": (int, 1, 1024),
    "max_concurrent_handshakes": (int, 1, 1024),
    "idle_timeout": (float, 0.1, None),
    "max_age": (float, 0.1, None),
    "keepalive_interval": (float, 0, 3600),
    "keepalive_count_max": (int, 1, 100),
    "connect_timeout": (float, 0.1, 600),
    "channel_open_timeout": (float, 0.1, 600),
}
_EXEC_BOUNDS: _Bounds = {
    "default_timeout": (float, 0.001, None),
    "stream_default_timeout": (float, 0.001, None),
    "stream_start_timeout": (float, 0.01, 600),
    "max_timeout": (float, 0.001, None),
    "max_output_bytes": (int, 1, 512 * 1024 * 1024),
    "max_buffered_output_bytes": (int, 1, 2**40),
    "kill_grace": (float, 0, 60),
    "max_command_bytes": (int, 1, EXEC_LINE_MAX),
    "max_stdin_bytes": (int, 0, 1024 * 1024 * 1024),
}
_TOP_BOUNDS: _Bounds = {
    "shutdown_grace": (float, 0, 3600),
    "max_concurrent_rpcs": (int, 1, 1_000_000),
}


def is_loopback(listen: str) -> bool:
    """Whether a HOST:PORT listen address is on this machine's loopback only."""
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _number(key: str, value: Any, kind: type, low: float | None, high: float | None) -> Any:
    """Check one number against its type and bounds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if kind is int and not isinstance(value, int):
        raise ConfigError(f"{key}: expected a whole number, got {value!r}")
    if low is not None and value < low:
        raise ConfigError(f"{key}: must be at least {low}, got {value!r}")
    if high is not None and value > high:
        raise ConfigError(f"{key}: must be at most {high}, got {value!r}")
    return kind(value)


def _section(prefix: str, raw: Any, bounds: _Bounds) -> dict[str, Any]:
    """Check a table whose keys are all bounded numbers."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix}: expected a table")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in bounds:
            raise ConfigError(f"{prefix}.{key}: unknown key (known: {', '.join(sorted(bounds))})")
        out[key] = _number(f"{prefix}.{key}", value, *bounds[key])
    return out


def _path(key: str, value: Any, base: Path) -> Path:
    """A path, relative to the config file's folder, with ~ expanded."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a path string, got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _ssh(raw: Any, base: Path) -> SSHSettings:
    if not isinstance(raw, dict):
        raise ConfigError("ssh: expected a table")
    known = {"known_hosts", "client_keys"}
    for key in raw:
        if key not in known:
            raise ConfigError(f"ssh.{key}: unknown key (known: {', '.join(sorted(known))})")
    keys = raw.get("client_keys", [])
    if not isinstance(keys, list):
        raise ConfigError("ssh.client_keys: expected a list of paths")
    return SSHSettings(
        known_hosts=_path("ssh.known_hosts", raw["known_hosts"], base)
        if "known_hosts" in raw
        else None,
        client_keys=tuple(_path("ssh.client_keys", k, base) for k in keys),
    )


def _host(name: str, raw: Any, base: Path) -> HostConfig:
    prefix = f"hosts.{name}"
    if not HOST_NAME.fullmatch(name):
        raise ConfigError(f"{prefix}: a host name is letters, digits, '.', '_' and '-'")
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix}: expected a table")
    known = {"address", "port", "user", "identity_file", "known_hosts"}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{prefix}.{key}: unknown key (known: {', '.join(sorted(known))})")
    address = raw.get("address")
    if not isinstance(address, str) or not address:
        raise ConfigError(f"{prefix}.address: required, a host name or IP address")
    args: dict[str, Any] = {"name": name, "address": address}
    if "port" in raw:
        args["port"] = _number(f"{prefix}.port", raw["port"], int, 1, 65535)
    if "user" in raw:
        if not isinstance(raw["user"], str) or not raw["user"]:
            raise ConfigError(f"{prefix}.user: expected a user name")
        args["user"] = raw["user"]
    for key in ("identity_file", "known_hosts"):
        if key in raw:
            args[key] = _path(f"{prefix}.{key}", raw[key], base)
    return HostConfig(**args)


def parse(raw: dict[str, Any], base: Path) -> Config:
    """Build a Config from parsed TOML; relative paths are taken from base."""
    known = {"listen", "ssh", "pool", "exec", "hosts"} | set(_TOP_BOUNDS)
    for key in raw:
        if key not in known:
            raise ConfigError(f"{key}: unknown key (known: {', '.join(sorted(known))})")
    listen = raw.get("listen", DEFAULT_LISTEN)
    if not isinstance(listen, str) or ":" not in listen:
        raise ConfigError(f"listen: expected HOST:PORT, got {listen!r}")
    top = {k: _number(k, raw[k], *_TOP_BOUNDS[k]) for k in _TOP_BOUNDS if k in raw}
    pool = PoolSettings(**_section("pool", raw.get("pool", {}), _POOL_BOUNDS))
    exec_ = ExecSettings(**_section("exec", raw.get("exec", {}), _EXEC_BOUNDS))
    for key in ("default_timeout", "stream_default_timeout"):
        if getattr(exec_, key) > exec_.max_timeout:
            raise ConfigError(f"exec.{key}: must not exceed exec.max_timeout")
    if exec_.max_buffered_output_bytes < 4 * exec_.max_output_bytes:
        raise ConfigError(
            "exec.max_buffered_output_bytes: must hold at least one full Execute response "
            f"(4 x exec.max_output_bytes = {4 * exec_.max_output_bytes})"
        )
    if pool.max_connections_per_host > pool.max_connections:
        raise ConfigError("pool.max_connections_per_host: must not exceed pool.max_connections")
    hosts_raw = raw.get("hosts", {})
    if not isinstance(hosts_raw, dict):
        raise ConfigError("hosts: expected tables [hosts.NAME]")
    hosts = {name: _host(name, value, base) for name, value in hosts_raw.items()}
    return Config(
        listen=listen,
        ssh=_ssh(raw.get("ssh", {}), base),
        pool=pool,
        exec=exec_,
        hosts=hosts,
        **top,
    )


def load(path: Path) -> Config:
    """Read and check a TOML config file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse(raw, path.parent.resolve())
