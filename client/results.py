"""What a command produced: plain frozen values built from the wire messages.

Callers work with these instead of protobuf messages, so a change in the
contract's layout stays inside this module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

from google.protobuf.duration_pb2 import Duration

from scout.v1 import exec_pb2

from .errors import CommandFailed

__all__ = [
    "Event",
    "Exit",
    "ExitStatus",
    "Lost",
    "Result",
    "Stderr",
    "Stdout",
    "event_from_response",
    "exit_status_from_message",
    "from_message",
    "result_from_response",
]

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

V = TypeVar("V", bound="DataclassInstance")


def from_message(cls: type[V], message: Any, **converted: Any) -> V:
    """The value of dataclass cls from the wire message's fields of the same names.

    `converted` gives the fields whose wire type differs (Durations, maps, repeated)
    or that the message lacks; every other field of cls is copied as it is.
    """
    names = [f.name for f in dataclasses.fields(cls) if f.name not in converted]
    return cls(**{name: getattr(message, name) for name in names}, **converted)


def _seconds(duration: Duration) -> float:
    """Give durations as float seconds, the unit every Python timeout uses."""
    return duration.ToNanoseconds() / 1e9


@dataclass(frozen=True, kw_only=True)
class ExitStatus:
    """How a command ended; exit code and signal are payload, not RPC errors."""

    exit_code: int
    signal: str = ""
    core_dumped: bool = False
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    duration: float = 0.0

    @property
    def ok(self) -> bool:
        """Say whether the command succeeded, the question most callers ask."""
        return self.exit_code == 0 and not self.signal


@dataclass(frozen=True, kw_only=True)
class Result(ExitStatus):
    """The outcome of Execute: the exit status plus the captured (maybe capped) output."""

    stdout: bytes = b""
    stderr: bytes = b""
    stdout_text: str = ""
    stderr_text: str = ""
    host: str = ""
    replayed: bool = False  # x-scout-replayed: an earlier call with this key ran it

    def check(self) -> Result:
        """Raise CommandFailed unless ok, for callers who treat failure as exceptional."""
        if not self.ok:
            raise CommandFailed(self, host=self.host)
        return self


@dataclass(frozen=True)
class Stdout:
    """A chunk of the command's stdout, in order; offset: where its first byte is in
    the whole stdout (not compared: equal chunks are equal wherever they came)."""

    data: bytes
    text: str = ""
    offset: int = dataclasses.field(default=0, compare=False)


@dataclass(frozen=True)
class Stderr:
    """A chunk of the command's stderr, in order; offset as for Stdout."""

    data: bytes
    text: str = ""
    offset: int = dataclasses.field(default=0, compare=False)


@dataclass(frozen=True)
class Lost:
    """Output a re-attached stream asked for that the server no longer keeps: `bytes`
    bytes of `stream` ("stdout" or "stderr") are missing here, and the output goes on
    after them. A stream never skips bytes without saying so with this event."""

    stream: str
    bytes: int


@dataclass(frozen=True)
class Exit:
    """The command ended; always the last event of a stream."""

    status: ExitStatus


Event: TypeAlias = Stdout | Stderr | Exit | Lost


def exit_status_from_message(message: exec_pb2.ExitStatus) -> ExitStatus:
    """Copy a wire ExitStatus into the value callers keep."""
    return from_message(ExitStatus, message, duration=_seconds(message.duration))


def result_from_response(
    response: exec_pb2.ExecuteResponse, host: str, *, replayed: bool = False
) -> Result:
    """Copy an ExecuteResponse into a Result that remembers its host for messages."""
    return from_message(
        Result, response, duration=_seconds(response.duration), host=host, replayed=replayed
    )


def event_from_response(response: exec_pb2.StreamResponse) -> Event | None:
    """Turn one StreamResponse into an event; None for a kind this client does not know."""
    kind = response.WhichOneof("event")
    if kind == "stdout":
        return Stdout(response.stdout, response.text, response.offset)
    if kind == "stderr":
        return Stderr(response.stderr, response.text, response.offset)
    if kind == "exit":
        return Exit(exit_status_from_message(response.exit))
    if kind == "lost":
        return Lost(response.lost.stream, response.lost.bytes)
    return None
