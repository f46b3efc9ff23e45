"""Reading the TOML configuration: every key checked, every value bounded, once at start.

Unknown keys and bad values stop the server with a message that names the key, so a
typo cannot silently fall back to a default. Relative paths are taken from the config
file's folder.
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import inventory
from .argvpolicy import PatternError, split_pattern, startup_reason
from .config import (
    DEFAULT_LISTEN,
    ENV_NAME,
    HOST_NAME,
    MAX_EXEC_LINE,
    WORKERS_AUTO,
    AuditSettings,
    CallerConfig,
    Config,
    ConfigError,
    DurableSettings,
    ExecSettings,
    FanoutSettings,
    FilesSettings,
    HostConfig,
    MetricsSettings,
    PoolSettings,
    ServerSettings,
    SSHSettings,
    TLSSettings,
    redact,
)
from .pathpolicy import check_pattern

log = logging.getLogger(__name__)

LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,251}[A-Za-z0-9])?")
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?")
CALLER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")

# key -> (type, lowest allowed, highest allowed); None: unbounded
_Bounds = dict[str, tuple[type, float | None, float | None]]

_POOL: _Bounds = {
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
_EXEC: _Bounds = {
    "default_timeout": (float, 0.001, None),
    "stream_default_timeout": (float, 0.001, None),
    "stream_start_timeout": (float, 0.01, 600),
    "stream_messages_per_second": (float, 1, 1_000_000),
    "max_timeout": (float, 0.001, None),
    "max_output_bytes": (int, 1, 512 * 1024 * 1024),
    "max_buffered_output_bytes": (int, 1, 2**40),
    "kill_grace": (float, 0, 60),
    "max_command_bytes": (int, 1, MAX_EXEC_LINE),
    "max_stdin_bytes": (int, 0, 1024 * 1024 * 1024),
}
_FANOUT: _Bounds = {
    "default_parallel": (int, 1, 100_000),
    "max_parallel": (int, 1, 100_000),
    "max_targets": (int, 1, 1_000_000),
}
_SERVER: _Bounds = {
    "keepalive_interval": (float, 0, 86_400),
    "keepalive_timeout": (float, 0.1, 3600),
    "min_ping_interval": (float, 0, 3600),
    "max_ping_strikes": (int, 0, 1000),
    "max_introspection_streams": (int, 1, 1_000_000),
}
_FILES: _Bounds = {
    "max_file_bytes": (int, 1, 2**44),
    "chunk_bytes": (int, 4096, 4 * 1024 * 1024),
    "window": (int, 1, 64),
}
_DURABLE: _Bounds = {
    "retention": (float, 1, 10 * 365 * 86400),
    "max_records": (int, 1, 1_000_000_000),
    "max_outcome_bytes": (int, 1024, 64 * 1024 * 1024),
    "replay_buffer_bytes": (int, 0, 1024 * 1024 * 1024),
    "max_detached": (int, 0, 1_000_000),
    "max_detach_grace": (float, 0, 30 * 86400),
}
FILES_MODES = ("none", "read", "write", "read-write")
_TOP: _Bounds = {
    "shutdown_grace": (float, 0, 3600),
    "max_concurrent_rpcs": (int, 1, 1_000_000),
}
MAX_WORKERS = 1024


def available_cores() -> int:
    """The cores this process may run on: its affinity mask, which taskset and cpusets narrow
    (what os.process_cpu_count() reads from Python 3.13 on). A CPU quota (`docker --cpus`)
    is time, not cores, and is not seen here: set workers to the quota yourself."""
    return len(os.sched_getaffinity(0))


def workers_value(name: str, value: Any) -> int:
    """`workers`: a whole number from 1, or "auto" (WORKERS_AUTO; server.workers.count)."""
    if value == "auto":
        return WORKERS_AUTO
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        raise ConfigError(
            f'{name}: expected a whole number from 1 to {MAX_WORKERS} or "auto", got {value!r}'
        )
    return value


class _Table:
    """One TOML table being read: only known keys, each value checked as it is taken."""

    def __init__(self, prefix: str, raw: Any, known: set[str], base: Path) -> None:
        if not isinstance(raw, dict):
            raise ConfigError(f"{prefix}: expected a table")
        for key in raw:
            if key not in known:
                where = f"{prefix}.{key}" if prefix else key
                raise ConfigError(f"{where}: unknown key (known: {', '.join(sorted(known))})")
        self.prefix = prefix
        self.raw: dict[str, Any] = raw
        self.base = base

    def key(self, key: str) -> str:
        """The key's full name, for messages."""
        return f"{self.prefix}.{key}" if self.prefix else key

    def number(self, key: str, kind: type, low: float | None, high: float | None) -> Any:
        """A number within bounds."""
        value = self.raw[key]
        name = self.key(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        if kind is int and not isinstance(value, int):
            raise ConfigError(f"{name}: expected a whole number, got {value!r}")
        if low is not None and value < low:
            raise ConfigError(f"{name}: must be at least {low}, got {value!r}")
        if high is not None and value > high:
            raise ConfigError(f"{name}: must be at most {high}, got {value!r}")
        return kind(value)

    def numbers(self, bounds: _Bounds) -> dict[str, Any]:
        """Every bounded number present in the table."""
        return {k: self.number(k, *bounds[k]) for k in bounds if k in self.raw}

    def string(
        self, key: str, default: str | None = None, pattern: re.Pattern[str] | None = None
    ) -> Any:
        """A non-empty string, matching pattern if given."""
        if key not in self.raw:
            return default
        value = self.raw[key]
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self.key(key)}: expected a non-empty string, got {value!r}")
        if pattern is not None and not pattern.fullmatch(value):
            raise ConfigError(f"{self.key(key)}: {value!r} does not match {pattern.pattern}")
        return value

    def flag(self, key: str, default: bool = False) -> bool:
        """true or false."""
        value = self.raw.get(key, default)
        if not isinstance(value, bool):
            raise ConfigError(f"{self.key(key)}: expected true or false, got {value!r}")
        return value

    def path(self, key: str) -> Path | None:
        """A path, relative to the config file's folder, with ~ expanded."""
        if key not in self.raw:
            return None
        return _path(self.key(key), self.raw[key], self.base)

    def strings(self, key: str) -> tuple[str, ...]:
        """A list of non-empty strings."""
        value = self.raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{self.key(key)}: expected a list of strings")
        return tuple(value)

    def table(self, key: str) -> Any:
        """A sub-table (empty when absent)."""
        return self.raw.get(key, {})


def _path(key: str, value: Any, base: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a path string, got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _paths(t: _Table, key: str) -> tuple[Path, ...]:
    value = t.raw.get(key, [])
    if not isinstance(value, list):
        raise ConfigError(f"{t.key(key)}: expected a list of paths")
    return tuple(_path(t.key(key), item, t.base) for item in value)


def _ssh(raw: Any, base: Path) -> SSHSettings:
    known = {"known_hosts", "client_keys", "config_files", "agent", "allow_match_exec"}
    t = _Table("ssh", raw, known, base)
    agent = t.path("agent")
    return SSHSettings(
        known_hosts=t.path("known_hosts"),
        client_keys=_paths(t, "client_keys"),
        config_files=_paths(t, "config_files"),
        agent=str(agent) if agent else None,
        allow_match_exec=t.flag("allow_match_exec"),
    )


def _labels(t: _Table, key: str) -> dict[str, str]:
    value = t.raw.get(key, {})
    if not isinstance(value, dict) or not all(
        LABEL.fullmatch(k) and isinstance(v, str) and LABEL_VALUE.fullmatch(v)
        for k, v in value.items()
    ):
        raise ConfigError(f'{t.key(key)}: expected a table of labels (name = "value")')
    return dict(value)


def _host_table(name: str, raw: Any, base: Path) -> dict[str, Any]:
    """The values a [hosts.NAME] table sets (over what ssh_config says, if it knows NAME)."""
    prefix = f"hosts.{name}"
    if not HOST_NAME.fullmatch(name):
        raise ConfigError(f"{prefix}: a host name is letters, digits, '.', '_' and '-'")
    known = {"address", "port", "user", "identity_file", "known_hosts", "labels"}
    t = _Table(prefix, raw, known | {"insecure_accept_any_host_key"}, base)
    values: dict[str, Any] = {}
    for key in ("address", "user"):
        if key in t.raw:
            values[key] = t.string(key)
    if "port" in t.raw:
        values["port"] = t.number("port", int, 1, 65535)
    for key in ("identity_file", "known_hosts"):
        if key in t.raw:
            values[key] = t.path(key)
    if "insecure_accept_any_host_key" in t.raw:
        values["insecure_accept_any_host_key"] = t.flag("insecure_accept_any_host_key")
    if "labels" in t.raw:
        values["labels"] = _labels(t, "labels")
    return values


def _table_host(name: str, values: dict[str, Any]) -> HostConfig:
    """A host only a [hosts.NAME] table knows: it needs its address."""
    if "address" not in values:
        raise ConfigError(
            f"hosts.{name}.address: required (no ssh_config file of [ssh] config_files "
            "has this host)"
        )
    return HostConfig(name=name, **values)


def _tls(raw: Any, base: Path) -> TLSSettings:
    t = _Table("tls", raw, {"cert_file", "key_file", "client_ca_file"}, base)
    tls = TLSSettings(t.path("cert_file"), t.path("key_file"), t.path("client_ca_file"))
    if (tls.cert_file is None) != (tls.key_file is None):
        raise ConfigError("tls: cert_file and key_file go together")
    if tls.client_ca_file is not None and tls.cert_file is None:
        raise ConfigError("tls.client_ca_file: mutual TLS needs cert_file and key_file too")
    return tls


def _commands(t: _Table) -> tuple[str, ...] | None:
    """`commands`: argv patterns, each split once here so a bad one stops the start; None
    when absent (an empty list is kept: it allows no command)."""
    patterns = _optional_strings(t, "commands")
    for pattern in patterns or ():
        try:
            split_pattern(pattern)
        except PatternError as exc:
            raise ConfigError(f"{t.key('commands')}: {exc}") from None
    return patterns


def _optional_strings(t: _Table, key: str) -> tuple[str, ...] | None:
    """A list of non-empty strings, or None when the key is absent (an empty list is kept)."""
    if key not in t.raw:
        return None
    value = t.raw[key]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{t.key(key)}: expected a list of strings")
    return tuple(value)


def _env_names(t: _Table, restricted: bool) -> tuple[str, ...] | None:
    """`env`: names a caller may set; a shell start-up name is warned about (and refused
    at call time) for a restricted caller."""
    names = _optional_strings(t, "env")
    for name in names or ():
        if not ENV_NAME.fullmatch(name):
            raise ConfigError(
                f"{t.key('env')}: {name!r} is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"
            )
        reason = startup_reason(name)
        if restricted and reason is not None:
            log.warning(
                "%s lists %s, which is refused anyway for a caller with commands: %s",
                t.key("env"),
                name,
                reason,
            )
    return names


def _caller(index: int, raw: Any, base: Path, tls: TLSSettings) -> CallerConfig:
    known = {"name", "token_sha256", "cert_common_name", "hosts", "commands", "stream"}
    known |= {"env", "working_dirs", "files", "paths"}
    t = _Table(f"callers[{index}]", raw, known | {"max_in_flight"}, base)
    name = t.string("name", pattern=CALLER_NAME)
    if name is None:
        raise ConfigError(f"callers[{index}].name: required")
    t.prefix = f"callers[{name}]"
    token = t.string("token_sha256")
    if token is not None and not SHA256_HEX.fullmatch(token.lower()):
        raise ConfigError(
            f"callers[{name}].token_sha256: 64 hex digits, the SHA-256 of the token "
            "(scout-server hash-token prints it); never the token itself"
        )
    common_name = t.string("cert_common_name")
    if token is None and common_name is None:
        raise ConfigError(f"callers[{name}]: needs token_sha256 or cert_common_name")
    if common_name is not None and tls.client_ca_file is None:
        raise ConfigError(
            f"callers[{name}].cert_common_name: needs [tls] client_ca_file (mutual TLS)"
        )
    commands = _commands(t)
    files = t.string("files", "none")
    if files not in FILES_MODES:
        raise ConfigError(f"callers[{name}].files: one of {', '.join(FILES_MODES)}, got {files!r}")
    paths = t.strings("paths")
    for pattern in paths:
        problem = check_pattern(pattern)
        if problem is not None:
            raise ConfigError(f"callers[{name}].paths: {problem}")
    if files != "none" and not paths:
        raise ConfigError(
            f'callers[{name}].paths: required with files = "{files}" (["/**"] for every path)'
        )
    return CallerConfig(
        name=name,
        token_sha256=token.lower() if token else None,
        cert_common_name=common_name,
        hosts=t.strings("hosts"),
        commands=commands,
        env=_env_names(t, restricted=commands is not None),
        working_dirs=_optional_strings(t, "working_dirs"),
        stream=t.flag("stream"),
        files=files,
        paths=paths,
        max_in_flight=t.number("max_in_flight", int, 1, 1_000_000)
        if "max_in_flight" in t.raw
        else 64,
    )


def _callers(raw: Any, base: Path, tls: TLSSettings) -> tuple[CallerConfig, ...]:
    if not isinstance(raw, list):
        raise ConfigError("callers: expected [[callers]] tables")
    callers = tuple(_caller(i, item, base, tls) for i, item in enumerate(raw))
    for attr in ("name", "token_sha256", "cert_common_name"):
        values = [getattr(c, attr) for c in callers if getattr(c, attr)]
        if len(values) != len(set(values)):
            raise ConfigError(f"callers: two callers share a {attr}")
    return callers


def _audit(raw: Any, base: Path) -> AuditSettings:
    t = _Table("audit", raw, {"file", "log_commands"}, base)
    file = t.string("file", "")
    if file and file != "-":
        file = str(_path("audit.file", file, base))
    return AuditSettings(file=file, log_commands=t.flag("log_commands", True))


def _metrics(raw: Any, base: Path) -> MetricsSettings:
    t = _Table("metrics", raw, {"listen", "per_host"}, base)
    listen = t.string("listen", "")
    if listen and ":" not in listen:
        raise ConfigError(f"metrics.listen: expected HOST:PORT, got {listen!r}")
    return MetricsSettings(listen=listen, per_host=t.flag("per_host", True))


def _files(raw: Any, base: Path) -> FilesSettings:
    t = _Table("files", raw, set(_FILES) | {"spool_dir"}, base)
    return FilesSettings(**t.numbers(_FILES), spool_dir=t.path("spool_dir"))


def store_url(value: Any, base: Path) -> str:
    """`[durable] store`: "sqlite:PATH" (PATH made absolute from base), "redis://HOST:PORT/DB"
    or "rediss://...", or "" for the default file. Messages never show a password."""
    if value == "":
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"durable.store: expected a string, got {type(value).__name__}")
    if value.startswith("sqlite:"):
        return "sqlite:" + str(_path("durable.store", value.removeprefix("sqlite:"), base))
    scheme = value.partition(":")[0]
    if scheme not in ("redis", "rediss"):
        raise ConfigError(
            'durable.store: expected "sqlite:PATH" or "redis://HOST:PORT/DB" (rediss:// for '
            f"TLS), got a {scheme!r} URL"
        )
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - urlsplit checks the port only when it is read
    except ValueError:
        parts = None
    if parts is None or not value.startswith(f"{scheme}://") or not parts.hostname:
        raise ConfigError(f"durable.store: {redact(value)!r} is not a HOST:PORT/DB URL")
    if parts.path not in ("", "/") and not parts.path[1:].isdigit():
        raise ConfigError(f"durable.store: the database of {redact(value)!r} is not a number")
    return value


def _durable(raw: Any, base: Path, exec_: ExecSettings) -> DurableSettings:
    t = _Table("durable", raw, set(_DURABLE) | {"store"}, base)
    durable = DurableSettings(store=store_url(t.raw.get("store", ""), base), **t.numbers(_DURABLE))
    if durable.retention < exec_.max_timeout:
        raise ConfigError(
            f"durable.retention: must be at least exec.max_timeout ({exec_.max_timeout:g} s): "
            "a key's record must outlive the longest command it guards, or a retry runs it again"
        )
    return durable


def parse(raw: dict[str, Any], base: Path) -> Config:
    """Build a Config from parsed TOML; relative paths are taken from base."""
    sections = {"ssh", "pool", "exec", "tls", "callers", "audit", "fanout", "labels", "hosts"}
    sections |= {"metrics", "server", "files", "durable"}
    flags = {"allow_plaintext", "allow_anonymous"}
    top = _Table("", raw, {"listen", "workers"} | set(_TOP) | sections | flags, base)
    listen = top.string("listen", DEFAULT_LISTEN)
    if ":" not in listen:
        raise ConfigError(f"listen: expected HOST:PORT, got {listen!r}")
    pool = PoolSettings(**_Table("pool", top.table("pool"), set(_POOL), base).numbers(_POOL))
    exec_table = _Table("exec", top.table("exec"), set(_EXEC) | {"export_request_id"}, base)
    exec_ = ExecSettings(
        **exec_table.numbers(_EXEC), export_request_id=exec_table.flag("export_request_id")
    )
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
    hosts_raw = top.table("hosts")
    if not isinstance(hosts_raw, dict):
        raise ConfigError("hosts: expected tables [hosts.NAME]")
    tls = _tls(top.table("tls"), base)
    ssh = _ssh(top.table("ssh"), base)
    labels_raw = _Table("labels", top.table("labels"), set(top.table("labels")), base)
    hosts = inventory.build(
        ssh.config_files,
        {name: _host_table(name, value, base) for name, value in hosts_raw.items()},
        {pattern: _labels(labels_raw, pattern) for pattern in labels_raw.raw},
        _table_host,
        allow_match_exec=ssh.allow_match_exec,
    )
    fanout = FanoutSettings(
        **_Table("fanout", top.table("fanout"), set(_FANOUT), base).numbers(_FANOUT)
    )
    if fanout.default_parallel > fanout.max_parallel:
        raise ConfigError("fanout.default_parallel: must not exceed fanout.max_parallel")
    return Config(
        listen=listen,
        workers=workers_value("workers", raw.get("workers", 1)),
        allow_plaintext=top.flag("allow_plaintext"),
        allow_anonymous=top.flag("allow_anonymous"),
        server=ServerSettings(
            **_Table("server", top.table("server"), set(_SERVER), base).numbers(_SERVER)
        ),
        ssh=ssh,
        pool=pool,
        exec=exec_,
        tls=tls,
        callers=_callers(raw.get("callers", []), base, tls),
        audit=_audit(top.table("audit"), base),
        fanout=fanout,
        metrics=_metrics(top.table("metrics"), base),
        files=_files(top.table("files"), base),
        durable=_durable(top.table("durable"), base, exec_),
        hosts=hosts,
        **top.numbers(_TOP),
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
