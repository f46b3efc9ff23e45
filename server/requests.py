"""Checking requests and turning them into command lines; every rejection names the field."""

from __future__ import annotations

import re
import shlex

from scout.v1 import exec_pb2

from .command import CommandSpec
from .config import Config, HostConfig
from .errors import HostNotFound, InvalidRequest

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_ENV = 256
MAX_ENV_BYTES = 128 * 1024
MAX_TERM = 10_000
SIGNALS = frozenset(
    {
        "ABRT",
        "ALRM",
        "FPE",
        "HUP",
        "ILL",
        "INT",
        "KILL",
        "PIPE",
        "QUIT",
        "SEGV",
        "TERM",
        "USR1",
        "USR2",
        "CONT",
        "STOP",
        "TSTP",
        "WINCH",
    }
)


def lookup_host(config: Config, name: str) -> HostConfig:
    """The inventory entry for name."""
    if not name:
        raise InvalidRequest("host: required, the name of a host in the inventory")
    host = config.hosts.get(name)
    if host is None:
        raise HostNotFound(f"host {name!r} is not in the inventory", name)
    return host


def timeout_of(config: Config, request: exec_pb2.ExecuteRequest) -> float:
    """The command's own time bound in seconds (the RPC deadline may be shorter)."""
    if not request.HasField("timeout"):
        return config.exec.default_timeout
    seconds = request.timeout.seconds + request.timeout.nanos / 1e9
    if seconds <= 0:
        raise InvalidRequest(f"timeout: must be positive, got {seconds:g}s")
    if seconds > config.exec.max_timeout:
        raise InvalidRequest(
            f"timeout: at most {config.exec.max_timeout:g}s on this server, got {seconds:g}s"
        )
    return seconds


def command_line(request: exec_pb2.ExecuteRequest) -> str:
    """The command as sent: as is, or with its directory and environment applied.

    With env or working_dir, the line becomes `cd DIR && exec env K=V ... /bin/sh -c CMD`:
    the environment travels in the command because sshd drops `env` requests outside its
    AcceptEnv, and `exec` keeps one process, so a signal sent to the session reaches
    the command itself.
    """
    if not request.env and not request.working_dir:
        return request.command
    parts: list[str] = []
    if request.working_dir:
        parts.append(f"cd -- {shlex.quote(request.working_dir)} &&")
    parts.append("exec")
    if request.env:
        parts.append("env")
        parts.extend(shlex.quote(f"{k}={v}") for k, v in sorted(request.env.items()))
    parts.extend(["/bin/sh", "-c", shlex.quote(request.command)])
    return " ".join(parts)


def check_execute(
    config: Config, request: exec_pb2.ExecuteRequest, *, stream: bool = False
) -> CommandSpec:
    """Validate an ExecuteRequest (or a Stream's start) and build its CommandSpec."""
    host = lookup_host(config, request.host)
    limits = config.exec
    if not request.command.strip():
        raise InvalidRequest("command: required, a shell command line", host.name)
    if len(request.command.encode()) > limits.max_command_bytes:
        raise InvalidRequest(
            f"command: at most {limits.max_command_bytes} bytes on this server", host.name
        )
    if "\0" in request.command or "\0" in request.working_dir:
        raise InvalidRequest("command and working_dir: must not contain NUL bytes", host.name)
    if len(request.stdin) > limits.max_stdin_bytes:
        raise InvalidRequest(
            f"stdin: at most {limits.max_stdin_bytes} bytes in a request; use Stream for more",
            host.name,
        )
    if len(request.env) > MAX_ENV:
        raise InvalidRequest(f"env: at most {MAX_ENV} variables", host.name)
    env_bytes = 0
    for name, value in request.env.items():
        if not ENV_NAME.match(name):
            raise InvalidRequest(
                f"env: {name!r} is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)",
                host.name,
            )
        if "\0" in value:
            raise InvalidRequest(f"env: the value of {name} contains a NUL byte", host.name)
        env_bytes += len(name) + len(value.encode())
    if env_bytes > MAX_ENV_BYTES:
        raise InvalidRequest(f"env: at most {MAX_ENV_BYTES} bytes in all", host.name)
    term = (80, 24)
    if request.HasField("terminal_size"):
        size = request.terminal_size
        if not (0 < size.columns <= MAX_TERM and 0 < size.rows <= MAX_TERM):
            raise InvalidRequest(
                f"terminal_size: columns and rows must be 1..{MAX_TERM}", host.name
            )
        term = (size.columns, size.rows)
    # Execute holds output in memory: the server's maximum bounds it. Stream holds little
    # (the SSH window does the waiting), so it has no cap unless the caller sets one.
    cap = request.max_output_bytes
    if not stream and limits.max_output_bytes:
        cap = min(cap or limits.max_output_bytes, limits.max_output_bytes)
    return CommandSpec(
        host=host.name,
        command=command_line(request),
        stdin=request.stdin,
        close_stdin=request.close_stdin or not stream,
        pty=request.pty,
        term_size=term,
        max_output_bytes=cap,
        kill_grace=limits.kill_grace,
    )


def signal_name(raw: str) -> str:
    """A signal name as SSH wants it: "INT" for "INT", "SIGINT" or "sigint"."""
    name = raw.strip().upper().removeprefix("SIG")
    if name not in SIGNALS:
        raise InvalidRequest(
            f"signal: unknown signal {raw!r}; use one of {', '.join(sorted(SIGNALS))}"
        )
    return name
