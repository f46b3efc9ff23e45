"""`ExecOptions`: the one definition of what a caller may set on Execute and Stream.

`Client.execute`, `Client.stream` and `SyncClient.execute` take an `ExecOptions`
and/or the same fields as keyword arguments (`timeout=10`): the field list, its
defaults, its checks and the request it becomes live here and nowhere else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from datetime import timedelta
from types import MappingProxyType
from typing import Any

from google.protobuf.duration_pb2 import Duration

from scout.v1 import exec_pb2

from .retry import check_key, seconds

__all__ = ["ExecOptions", "command_or_argv", "exec_options"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExecOptions:
    """How to run one command; every field mirrors the request field of the same name.

    stdin            bytes given to the command up front (Stream: more may follow)
    env              environment variables for the command
    timeout          seconds the command may run; the server stops it after that
                     (None: the server's default)
    max_output_bytes per-stream output cap (0: the server's default)
    text             also fill the UTF-8 text fields (invalid bytes replaced)
    working_dir      directory to run in ("" : the login directory)
    pty              run under a pseudo-terminal
    terminal_size    (columns, rows) of that terminal
    close_stdin      Stream: send EOF with the start message (Execute always does)
    rpc_timeout      the gRPC deadline in seconds; None: timeout plus the client's
                     margin, so the server rather than the deadline reports a timeout
    idempotency_key  run at most once under this key (1-128 of A-Z a-z 0-9 . _ : -):
                     a retry with it gets the same outcome, never a second run
                     (README, "Retries and re-attaching"); "": none, unless the
                     client's RetryPolicy makes one
    detach_grace     seconds (or a timedelta) the command keeps running after its
                     caller went away, for a retry or an attach; needs a key (None:
                     the RetryPolicy's, else stop it when the caller goes)
    """

    stdin: bytes = b""
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    timeout: float | None = None
    max_output_bytes: int = 0
    text: bool = False
    working_dir: str = ""
    pty: bool = False
    terminal_size: tuple[int, int] | None = None
    close_stdin: bool = False
    rpc_timeout: float | None = None
    idempotency_key: str = ""
    detach_grace: float | timedelta | None = None

    def __post_init__(self) -> None:
        """Refuse values the server would refuse anyway, before anything is sent."""
        if self.idempotency_key:
            check_key(self.idempotency_key)
        object.__setattr__(self, "detach_grace", seconds(self.detach_grace, "detach_grace"))
        for name in ("timeout", "rpc_timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive seconds, got {value!r}")
        if self.max_output_bytes < 0:
            raise ValueError(f"max_output_bytes must be >= 0, got {self.max_output_bytes!r}")
        if self.terminal_size is not None and len(self.terminal_size) != 2:
            raise ValueError(f"terminal_size is (columns, rows), got {self.terminal_size!r}")
        # A private read-only copy: the caller's dict may change after the call.
        object.__setattr__(self, "env", MappingProxyType(dict(self.env)))

    def deadline(self, margin: float) -> float | None:
        """Pick the gRPC deadline so the server, not the client, reports a command timeout."""
        if self.rpc_timeout is not None:
            return self.rpc_timeout
        if self.timeout is not None:
            return self.timeout + margin
        return None

    def request(self, host: str, command: str, argv: Sequence[str] = ()) -> exec_pb2.ExecuteRequest:
        """Build the ExecuteRequest shared by Execute and Stream's start message."""
        request = exec_pb2.ExecuteRequest(
            host=host,
            command=command,
            argv=list(argv),
            stdin=self.stdin,
            env=dict(self.env),
            max_output_bytes=self.max_output_bytes,
            text=self.text,
            working_dir=self.working_dir,
            pty=self.pty,
            close_stdin=self.close_stdin,
        )
        if self.timeout is not None:
            request.timeout.CopyFrom(_duration(self.timeout))
        if self.terminal_size is not None:
            columns, rows = self.terminal_size
            request.terminal_size.CopyFrom(exec_pb2.TerminalSize(columns=columns, rows=rows))
        if self.idempotency_key:
            request.idempotency_key = self.idempotency_key
        grace = seconds(self.detach_grace, "detach_grace")
        if grace is not None:
            request.detach_grace.CopyFrom(_duration(grace))
        return request


def _duration(secs: float) -> Duration:
    """Seconds as a protobuf Duration."""
    duration = Duration()
    duration.FromNanoseconds(round(secs * 1e9))
    return duration


def exec_options(options: ExecOptions | None, fields: Mapping[str, Any]) -> ExecOptions:
    """Combine an options value and keyword fields (which win); unknown names raise TypeError."""
    if options is None:
        return ExecOptions(**fields)
    return dataclasses.replace(options, **fields) if fields else options


def command_or_argv(command: str, argv: Sequence[str] | None) -> list[str]:
    """argv as a list, checking that exactly one of command and argv was given.

    A caller whose policy lists commands may send only argv: the program and its
    arguments, one element each, which the remote shell runs as they are.
    """
    if argv is None:
        if not command:
            raise ValueError("give a command (a shell line) or argv=[program, arg, ...]")
        return []
    if isinstance(argv, str):
        raise TypeError(f"argv is a sequence of words, not one string: [{argv!r}]")
    if command:
        raise ValueError("give a command or argv, not both")
    if not argv:
        raise ValueError("argv needs at least the program")
    return list(argv)
