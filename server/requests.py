"""Checking requests and turning them into command lines; every rejection names the field.

Sizes are checked before names and contents, so an oversize value is never scanned,
matched or echoed whole: messages quote at most a short prefix (`errors.brief`). The
final command line, after quoting, is bounded too (`MAX_EXEC_LINE`): a line sshd cannot
take in one packet makes it drop the whole connection, and every other command on it.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping

from google.protobuf import duration_pb2

from scout.v1 import exec_pb2

from .argvpolicy import argv_line
from .command import CommandSpec
from .config import (
    ENV_NAME,
    MAX_ENV_BYTES,
    MAX_EXEC_LINE,
    MAX_WORKING_DIR_BYTES,
    Config,
    ExecSettings,
    HostConfig,
)
from .errors import HostNotFound, InvalidRequest, brief

MAX_HOST = 255
MAX_ENV = 256
MAX_ARGV = 4096  # elements; their bytes together are bounded like a command's
MAX_TERM = 10_000
MAX_SIGNAL = 16
WORKING_DIR_FAILED = 125  # the exit code when working_dir cannot be entered (as env(1))
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
SIGNALS = frozenset(
    {
        *("ABRT", "ALRM", "FPE", "HUP", "ILL", "INT", "KILL", "PIPE", "QUIT"),
        *("SEGV", "TERM", "USR1", "USR2", "CONT", "STOP", "TSTP", "WINCH"),
    }
)


def is_host_name(name: str) -> bool:
    """Whether name can be a host name: at most MAX_HOST characters, no control characters
    (what a log line may show as is)."""
    return 0 < len(name) <= MAX_HOST and not _CONTROL.search(name)


def lookup_host(config: Config, name: str) -> HostConfig:
    """The inventory entry for name."""
    if not name:
        raise InvalidRequest("host: required, the name of a host in the inventory")
    if not is_host_name(name):
        raise InvalidRequest(
            f"host: {brief(name)} is not a host name (at most {MAX_HOST} characters, "
            "no control characters)"
        )
    host = config.hosts.get(name)
    if host is None:
        raise HostNotFound(f"host {brief(name)} is not in the inventory", name)
    return host


def duration_seconds(field: str, duration: duration_pb2.Duration) -> float:
    """A Duration field in seconds, refusing what the Duration spec forbids."""
    nanos, secs = duration.nanos, duration.seconds
    if not -999_999_999 <= nanos <= 999_999_999 or (secs > 0 > nanos) or (secs < 0 < nanos):
        raise InvalidRequest(f"{field}: not a valid Duration (seconds={secs}, nanos={nanos})")
    return secs + nanos / 1e9


def timeout_of(
    limits: ExecSettings, request: exec_pb2.ExecuteRequest, *, stream: bool
) -> tuple[float, str]:
    """The request's own time bound in seconds (the RPC deadline may be shorter), and how
    a message names it: "its timeout (10s)"."""
    if not request.HasField("timeout"):
        if stream:
            seconds = limits.stream_default_timeout
            return seconds, f"its timeout, the server's default for Stream ({seconds:g}s)"
        seconds = limits.default_timeout
    else:
        seconds = duration_seconds("timeout", request.timeout)
        if seconds <= 0:
            raise InvalidRequest(f"timeout: must be positive, got {seconds:g}s")
        if seconds > limits.max_timeout:
            raise InvalidRequest(
                f"timeout: at most {limits.max_timeout:g}s on this server, got {seconds:g}s"
            )
    return seconds, f"its timeout ({seconds:g}s)"


def command_line(request: exec_pb2.ExecuteRequest, extra_env: Mapping[str, str] = {}) -> str:
    """The command as sent: as is, or after its environment and directory.

    argv becomes one simple command of single-quoted words (server.argvpolicy).
    The environment travels in the line because sshd drops `env` requests outside its
    AcceptEnv. The command itself stays on its own line, read by the user's own login
    shell exactly as without env or working_dir (so bash stays bash). A directory that
    cannot be entered ends the line with exit code 125, before the command runs.
    """
    command = argv_line(request.argv) if request.argv else request.command
    env = {**request.env, **extra_env}
    if not env and not request.working_dir:
        return command
    parts = [f"export {k}={shlex.quote(v)};" for k, v in sorted(env.items())]
    if request.working_dir:
        parts.append(f"cd -- {shlex.quote(request.working_dir)} || exit {WORKING_DIR_FAILED};")
    return " ".join(parts) + "\n" + command


def _check_sizes(limits: ExecSettings, request: exec_pb2.ExecuteRequest, host: str) -> None:
    """Every variable-size field against its bound, before anything reads its content."""
    if len(request.command) > limits.max_command_bytes or (
        len(request.command.encode()) > limits.max_command_bytes
    ):
        raise InvalidRequest(
            f"command: at most {limits.max_command_bytes} bytes on this server", host
        )
    if len(request.argv) > MAX_ARGV:
        raise InvalidRequest(f"argv: at most {MAX_ARGV} elements", host)
    # Characters first (a cheap lower bound on bytes), so a huge argv is never encoded.
    characters = sum(len(arg) for arg in request.argv)
    if characters > limits.max_command_bytes or (
        sum(len(arg.encode()) for arg in request.argv) > limits.max_command_bytes
    ):
        raise InvalidRequest(
            f"argv: at most {limits.max_command_bytes} bytes on this server (all elements "
            "together)",
            host,
        )
    if len(request.working_dir.encode()) > MAX_WORKING_DIR_BYTES:
        raise InvalidRequest(f"working_dir: at most {MAX_WORKING_DIR_BYTES} bytes", host)
    if len(request.stdin) > limits.max_stdin_bytes:
        raise InvalidRequest(
            f"stdin: at most {limits.max_stdin_bytes} bytes in a request; use Stream for more",
            host,
        )
    if len(request.env) > MAX_ENV:
        raise InvalidRequest(f"env: at most {MAX_ENV} variables", host)
    env_bytes = sum(len(k.encode()) + len(v.encode()) for k, v in request.env.items())
    if env_bytes > MAX_ENV_BYTES:
        raise InvalidRequest(f"env: at most {MAX_ENV_BYTES} bytes of names and values", host)


def check_execute(
    config: Config,
    request: exec_pb2.ExecuteRequest,
    *,
    stream: bool = False,
    extra_env: Mapping[str, str] = {},
) -> tuple[HostConfig, CommandSpec]:
    """Validate an ExecuteRequest (or a Stream's start): its host, and its CommandSpec.

    extra_env is scout's own (SCOUT_REQUEST_ID), exported after the caller's env.
    """
    host = lookup_host(config, request.host)
    return host, command_spec(config, request, host.name, stream=stream, extra_env=extra_env)


def command_spec(
    config: Config,
    request: exec_pb2.ExecuteRequest,
    name: str,
    *,
    stream: bool = False,
    extra_env: Mapping[str, str] = {},
) -> CommandSpec:
    """Everything of an ExecuteRequest but its host, checked: the CommandSpec to run on
    `name`. ExecuteMany checks its one request with this before any host is tried."""
    limits = config.exec
    _check_sizes(limits, request, name)
    if request.argv and request.command:
        raise InvalidRequest(
            "command and argv: send one of the two (a shell command line, or a program "
            "and its arguments), not both",
            name,
        )
    if request.argv:
        if not request.argv[0]:
            raise InvalidRequest("argv: the first element, the program, must not be empty", name)
        for index, arg in enumerate(request.argv):
            if "\0" in arg:
                raise InvalidRequest(f"argv: element {index} contains a NUL byte", name)
    elif not request.command.strip():
        raise InvalidRequest(
            "command or argv: one is required, a shell command line or a program and its arguments",
            name,
        )
    if "\0" in request.command or "\0" in request.working_dir:
        raise InvalidRequest("command and working_dir: must not contain NUL bytes", name)
    for key, value in request.env.items():
        if not ENV_NAME.fullmatch(key):
            raise InvalidRequest(
                f"env: {brief(key)} is not a valid variable name ([A-Za-z_][A-Za-z0-9_]*)",
                name,
            )
        if "\0" in value:
            raise InvalidRequest(f"env: the value of {key} contains a NUL byte", name)
    term = (80, 24)
    if request.HasField("terminal_size"):
        term = check_terminal_size(request.terminal_size, "terminal_size")
    timeout_of(limits, request, stream=stream)  # validated here, used by the caller
    line = command_line(request, extra_env)
    if len(line.encode()) > MAX_EXEC_LINE:
        raise InvalidRequest(
            f"command, env and working_dir: {len(line.encode())} bytes once quoted, more than "
            f"the {MAX_EXEC_LINE} bytes one SSH exec request may carry safely",
            name,
        )
    # Execute holds output in memory: the server's maximum bounds it. Stream holds little
    # (the SSH window does the waiting), so it has no cap unless the caller sets one.
    cap = request.max_output_bytes
    if not stream:
        cap = min(cap or limits.max_output_bytes, limits.max_output_bytes)
    return CommandSpec(
        host=name,
        command=line,
        stdin=request.stdin,
        close_stdin=request.close_stdin or not stream,
        pty=request.pty,
        term_size=term,
        max_output_bytes=cap,
        kill_grace=limits.kill_grace,
    )


def check_terminal_size(size: exec_pb2.TerminalSize, field: str) -> tuple[int, int]:
    """A terminal size within 1..MAX_TERM on both axes."""
    if not (0 < size.columns <= MAX_TERM and 0 < size.rows <= MAX_TERM):
        raise InvalidRequest(
            f"{field}: columns and rows must be 1..{MAX_TERM}, got {size.columns}x{size.rows}"
        )
    return size.columns, size.rows


def signal_name(raw: str) -> str:
    """A signal name as SSH wants it: "INT" for "INT", "SIGINT" or "sigint"."""
    name = raw[:MAX_SIGNAL].strip().upper().removeprefix("SIG")
    if len(raw) > MAX_SIGNAL or name not in SIGNALS:
        raise InvalidRequest(
            f"signal: unknown signal {brief(raw)}; use one of {', '.join(sorted(SIGNALS))}"
        )
    return name
