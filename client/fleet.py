"""Values for many hosts at once: inventory hosts (ListHosts) and fan-out events (ExecuteMany).

ExecuteMany's stream tells of one host per message, and each message becomes
one event a caller can match on:

    Result       the command ended on that host (exit code, signal, output);
                 `.host` names it. With stream_output its stdout and stderr are
                 empty (the output came as HostOutput), counts and flags stay.
    ScoutError   that host could not run the command, or lost it: the subclass
                 Execute would have raised (HostNotFound, Unavailable, Timeout,
                 ...), with `.host`, and `.may_have_run` from the message's
                 `started` flag. It is yielded, not raised: the fan-out goes on.
    HostOutput   with stream_output: a chunk of one host's stdout or stderr, in
                 order for that host, before that host's Result.

Like results.py, this keeps the wire layout inside the client.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypeAlias

from scout.v1 import exec_pb2

from .errors import ScoutError, from_host_status
from .results import Result, from_message, result_from_response

__all__ = [
    "GLOB_CHARACTERS",
    "Host",
    "HostEvent",
    "HostOutcome",
    "HostOutput",
    "excluded",
    "host_event_from_response",
    "host_from_message",
    "is_exclusion",
    "is_pattern",
]

# What makes a `hosts` entry a glob pattern rather than a host name (fnmatch's syntax).
GLOB_CHARACTERS = frozenset("*?[")
EXCLUDE = "!"  # a leading `!` makes an entry an exclusion: `!web3`, `!web-eu-*`


def is_pattern(name: str) -> bool:
    """Say whether a `hosts` entry is a glob pattern or an exclusion, not one name."""
    return is_exclusion(name) or not GLOB_CHARACTERS.isdisjoint(name)


def is_exclusion(name: str) -> bool:
    """Say whether a `hosts` entry removes hosts (`!NAME`, `!GLOB`), as Ansible's do."""
    return name.startswith(EXCLUDE)


def excluded(name: str, entries: Iterable[str]) -> bool:
    """Say whether an exclusion among the entries removes this host name."""
    return any(fnmatch.fnmatchcase(name, e[1:]) for e in entries if is_exclusion(e))


@dataclass(frozen=True, kw_only=True)
class Host:
    """One inventory host as the server resolved it, and its pool's state when asked."""

    name: str
    address: str = ""
    port: int = 0
    user: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    via: tuple[str, ...] = ()  # jump hosts, first hop first
    connections_open: int = 0
    channels_in_use: int = 0

    def __post_init__(self) -> None:
        """Keep a private read-only copy of the labels, so the value stays a value."""
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))


def host_fields(host: Host) -> dict[str, Any]:
    """One inventory host: where it is, its labels, and its jump hosts."""
    return {
        "name": host.name,
        "address": host.address,
        "port": host.port,
        "user": host.user,
        "labels": dict(host.labels),
        "via": list(host.via),
    }


@dataclass(frozen=True, kw_only=True)
class HostOutput:
    """A chunk of one host's output (ExecuteMany with stream_output), in order per host."""

    host: str
    stream: Literal["stdout", "stderr"]
    data: bytes
    text: str = ""  # the chunk as UTF-8, when text=True was asked for


HostOutcome: TypeAlias = Result | ScoutError
HostEvent: TypeAlias = Result | ScoutError | HostOutput


def host_from_message(message: exec_pb2.Host) -> Host:
    """Copy a wire Host into the value callers keep."""
    return from_message(Host, message, labels=dict(message.labels), via=tuple(message.via))


def host_event_from_response(response: exec_pb2.ExecuteManyResponse) -> HostEvent | None:
    """Turn one ExecuteManyResponse into an event; None for a kind this client does not know."""
    host = response.host
    kind = response.WhichOneof("event")
    if kind == "result":
        return result_from_response(response.result, host)
    if kind == "error":
        status = response.error
        return from_host_status(status.code, status.message, host, started=response.started)
    if kind == "output":
        chunk = response.output
        stream = chunk.WhichOneof("data")
        if stream == "stdout":
            return HostOutput(host=host, stream="stdout", data=chunk.stdout, text=chunk.text)
        if stream == "stderr":
            return HostOutput(host=host, stream="stderr", data=chunk.stderr, text=chunk.text)
    return None
