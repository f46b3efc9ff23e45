"""Client exceptions: one tree, mapped from gRPC status codes in one place.

A failed RPC means scout could not run the command, or lost track of it. A
command that ran and exited non-zero is not an error here: it is a `Result`,
and only `Result.check()` turns it into `CommandFailed`.

Whether the command may have run is not in the class: it is `.may_have_run`.
The server marks every status it decides itself with the trailing metadata
`x-scout-started` ("false": decided before anything reached the host, nothing
ran, retrying is safe; "true": the command may have started). A status without
that mark came from something else (a proxy reset, a GOAWAY, a server killed
mid-command, grpc's own size limits, our own deadline or cancel) and so may
have run. A Stream whose response headers arrived had started its command.
Errors raised before anything was sent (a host name gRPC cannot carry, a server
the client could not connect to: `Unreachable`, see client/reach.py) have
may_have_run False.

ExecuteMany reports a host that could not run the command as a
`google.rpc.Status` inside the stream, with a `started` flag in place of the
trailer; `from_host_status` maps it through the same table, so a host's error
is the same class as the one Execute would have raised for it.

    ScoutError                the base; carries .code, .message, .host, .may_have_run
    ├── InvalidRequest        INVALID_ARGUMENT: malformed request; fix the call
    ├── HostNotFound          NOT_FOUND: the host is not in the server's inventory
    ├── NotAllowed            UNAUTHENTICATED, PERMISSION_DENIED
    ├── HostRejected          FAILED_PRECONDITION: host key unknown or changed,
    │                         SSH authentication refused; an operator must act
    ├── Unavailable           UNAVAILABLE: host or scout server unreachable, or the
    │   │                     connection was lost; nothing ran only when the server
    │   │                     said so (may_have_run False)
    │   └── Unreachable       no connection to the scout server (refused, DNS, TLS
    │                         handshake, none ready in time): the request was never
    │                         sent, so nothing ran (may_have_run False)
    ├── KeyNotFound           NOT_FOUND from a Stream attach: no command with that
    │                         idempotency key for this caller
    ├── Aborted               ABORTED: connection lost after the command started;
    │                         it may have had effects, so do not retry blindly; with
    │                         an idempotency key, "outcome unknown": the run under
    │                         that key started and nobody knows how it ended (never
    │                         run again under that key)
    ├── Overloaded            RESOURCE_EXHAUSTED: no slot in time, rate limited, or
    │                         a message over a size limit; nothing ran only when the
    │                         server said so (may_have_run False)
    ├── Timeout               DEADLINE_EXCEEDED: the command outlived its timeout
    │   │                     (the server stopped it) or the RPC deadline passed
    │   └── CommandTimeout    the server's own DEADLINE_EXCEEDED (it carries scout's
    │                         mark): the command ran past its timeout and the server
    │                         stopped it; it certainly ran
    ├── Cancelled             CANCELLED: the call was cancelled
    ├── AlreadyExists         ALREADY_EXISTS: files: create_only and the file exists;
    │                         commands: the idempotency key names another request
    ├── DataLoss              DATA_LOSS: files: the bytes did not match
    ├── ServerError           INTERNAL, UNKNOWN and any other code: a scout bug
    └── CommandFailed         not an RPC error (code "OK"): raised only by
                              Result.check() when the command exited non-zero
                              or was killed; carries .result (may_have_run True)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from .results import Result

__all__ = [
    "REPLAYED_TRAILER",
    "STARTED_TRAILER",
    "Aborted",
    "Cancelled",
    "CommandFailed",
    "CommandTimeout",
    "HostNotFound",
    "HostRejected",
    "InvalidRequest",
    "KeyNotFound",
    "NotAllowed",
    "Overloaded",
    "ScoutError",
    "ServerError",
    "Timeout",
    "Unavailable",
    "Unreachable",
    "from_host_status",
    "from_rpc_error",
    "is_replayed",
]


class ScoutError(Exception):
    """Base of every client error, so callers and the CLI need one except clause."""

    def __init__(
        self, message: str, *, code: str = "UNKNOWN", host: str = "", may_have_run: bool = False
    ) -> None:
        """Keep the status name, the server's words, the host and what may have run apart.

        Two more fields are set from the status's trailing metadata by from_rpc_error:
        `decided_by_scout` (it carried x-scout-started: scout's own answer, not the
        transport's) and `replayed` (x-scout-replayed: true: the outcome an earlier call
        with the same idempotency key recorded, sent again; nothing ran this time).
        """
        super().__init__(message)
        self.message = message
        self.code = code
        self.host = host
        self.may_have_run = may_have_run
        self.decided_by_scout = False
        self.replayed = False

    def __str__(self) -> str:
        """Show the server's message, which already names the host and the cause."""
        return self.message

    def __repr__(self) -> str:
        """Show every field, because logs need the code as much as the words."""
        return (
            f"{type(self).__name__}({self.message!r}, code={self.code!r}, host={self.host!r}, "
            f"may_have_run={self.may_have_run!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle every field, so errors cross process boundaries whole."""
        return (_rebuild, (type(self), dict(self.__dict__)))


def _rebuild(cls: type[ScoutError], fields: dict[str, Any]) -> ScoutError:
    """Recreate a pickled error without calling subclass constructors."""
    err = cls.__new__(cls)
    Exception.__init__(err, fields["message"])
    err.__dict__.update(fields)
    return err


class InvalidRequest(ScoutError):
    """The request was malformed; retrying the same request cannot help."""


class HostNotFound(ScoutError):
    """The host is not in the server's inventory."""


class NotAllowed(ScoutError):
    """The caller is not authenticated, or not allowed on that host."""


class HostRejected(ScoutError):
    """The SSH host refused the gateway (host key or authentication); an operator must act."""


class Unavailable(ScoutError):
    """The host or the scout server could not be reached; safe to retry unless may_have_run."""


class Unreachable(Unavailable):
    """No connection to the scout server: the request was never sent, so nothing ran.

    target is the address tried; cause is one of client.reach's causes ("refused",
    "dns", "plaintext-to-tls", "tls-to-plaintext", "untrusted", "client-cert", "tls",
    "timeout", "other"), for a caller (the CLI) that words the fix.
    """

    def __init__(self, message: str, *, target: str, cause: str, host: str = "") -> None:
        """Keep the address and the cause; the code is UNAVAILABLE, nothing ran."""
        super().__init__(message, code="UNAVAILABLE", host=host, may_have_run=False)
        self.target = target
        self.cause = cause


class Aborted(ScoutError):
    """The connection was lost after the command started; it may have had effects."""


class Overloaded(ScoutError):
    """No capacity in time or a size limit; retry after a pause unless may_have_run."""


class Timeout(ScoutError):
    """The command outlived its timeout (and was stopped) or the RPC deadline passed."""


class CommandTimeout(Timeout):
    """The server stopped the command at its timeout (or the RPC deadline): it ran."""


class Cancelled(ScoutError):
    """The call was cancelled before it finished."""


class ServerError(ScoutError):
    """The server failed in a way the caller cannot fix (INTERNAL, UNKNOWN, other codes)."""


class AlreadyExists(ScoutError):
    """Files: create_only, and the file is already there; nothing was written. Commands:
    the idempotency key was used for a different request (host, command, env, working_dir,
    stdin, pty); nothing ran."""


class KeyNotFound(ScoutError):
    """Stream attach: this caller started no command with that key (or it has expired)."""


class DataLoss(ScoutError):
    """Files: the bytes did not match the size or SHA-256 announced; nothing was put in place."""


class CommandFailed(ScoutError):
    """The RPC succeeded but the command failed; raised only on request by Result.check()."""

    def __init__(self, result: Result, *, host: str = "") -> None:
        """Keep the whole result, because the caller usually wants its stderr."""
        if result.signal:
            what = f"was killed by signal {result.signal}"
        else:
            what = f"exited with status {result.exit_code}"
        where = f" on {host}" if host else ""
        super().__init__(f"command{where} {what}", code="OK", host=host, may_have_run=True)
        self.result = result


# Trailing metadata the server sets on every status it decides itself.
STARTED_TRAILER = "x-scout-started"
# Trailing metadata on an outcome an earlier call with the same idempotency key recorded.
REPLAYED_TRAILER = "x-scout-replayed"

_BY_CODE: dict[str, type[ScoutError]] = {
    "INVALID_ARGUMENT": InvalidRequest,
    "NOT_FOUND": HostNotFound,
    "UNAUTHENTICATED": NotAllowed,
    "PERMISSION_DENIED": NotAllowed,
    "FAILED_PRECONDITION": HostRejected,
    "UNAVAILABLE": Unavailable,
    "ABORTED": Aborted,
    "RESOURCE_EXHAUSTED": Overloaded,
    "DEADLINE_EXCEEDED": Timeout,
    "CANCELLED": Cancelled,
    "ALREADY_EXISTS": AlreadyExists,
    "DATA_LOSS": DataLoss,
}


# google.rpc.Status carries the code as its number.
_NAME_BY_NUMBER: dict[int, str] = {code.value[0]: code.name for code in grpc.StatusCode}


def _status_name(err: Any) -> str:
    """Name the status of any gRPC error, sync or aio, even one without a code()."""
    code = getattr(err, "code", None)
    if not callable(code):
        return "UNKNOWN"
    value = code()
    if isinstance(value, grpc.StatusCode):
        return str(value.name)
    return "UNKNOWN"


def _marks(err: Any, part: str, name: str = STARTED_TRAILER) -> list[str]:
    """The x-scout-started (or name's) values in the error's initial or trailing metadata."""
    getter = getattr(err, part, None)
    metadata = getter() if callable(getter) else None
    return [str(value).strip().lower() for key, value in metadata or () if key == name]


def is_replayed(metadata: Any) -> bool:
    """Whether trailing metadata says x-scout-replayed: true."""
    return any(
        key == REPLAYED_TRAILER and str(value).strip().lower() == "true"
        for key, value in metadata or ()
    )


def _server_said_nothing_ran(err: Any) -> bool:
    """Say whether the status carries scout's own mark "x-scout-started: false".

    Stream's response headers say "true" once the command started; that wins.
    """
    if "true" in _marks(err, "initial_metadata"):
        return False
    values = _marks(err, "trailing_metadata")
    return bool(values) and all(value == "false" for value in values)


def _details(err: Any) -> str:
    """Return the server's message, which is meant for a person to act on."""
    details = getattr(err, "details", None)
    text = details() if callable(details) else None
    return text if isinstance(text, str) else ""


def from_rpc_error(
    err: grpc.aio.AioRpcError | grpc.RpcError,
    host: str,
    *,
    started: bool | None = None,
    cls: type[ScoutError] | None = None,
) -> ScoutError:
    """Turn a gRPC error into the client's exception (through _BY_CODE, the one status table).

    started: True when the caller knows the command started (Stream headers arrived),
    False when the call cannot run a command (health), None to decide by the
    server's x-scout-started mark: absent means the command may have run.
    cls: the class to raise in place of the table's (a Stream attach's NOT_FOUND is
    KeyNotFound, not HostNotFound).
    """
    may_have_run = started if started is not None else not _server_said_nothing_ran(err)
    name = _status_name(err)
    marked = bool(_marks(err, "trailing_metadata"))
    if name == "DEADLINE_EXCEEDED" and may_have_run and marked:
        # scout's own answer that it stopped the command (our own deadline has no mark)
        error = _error(name, _details(err), host, True, CommandTimeout)
    else:
        error = _error(name, _details(err), host, may_have_run, cls)
    error.decided_by_scout = marked
    error.replayed = "true" in _marks(err, "trailing_metadata", REPLAYED_TRAILER)
    return error


def from_host_status(code: int, message: str, host: str, *, started: bool) -> ScoutError:
    """Turn one host's status in an ExecuteMany stream into the client's exception.

    code is the numeric gRPC status code (google.rpc.Status.code); started is the
    message's flag, which the server sets on every host's status, so it decides alone.
    OK, or a number gRPC does not know, is a server bug: ServerError, code UNKNOWN.
    """
    name = _NAME_BY_NUMBER.get(code, "UNKNOWN")
    if name == "OK":
        name = "UNKNOWN"
    if name == "DEADLINE_EXCEEDED" and started:  # a host's status is the server's own
        return _error(name, message, host, True, CommandTimeout)
    return _error(name, message, host, started)


def _error(
    name: str, message: str, host: str, may_have_run: bool, cls: type[ScoutError] | None = None
) -> ScoutError:
    """Build cls, else the class the status name maps to, with a message a person can act on."""
    if not message:
        where = f" for host {host!r}" if host else ""
        message = f"scout call{where} failed with {name}"
    cls = cls or _BY_CODE.get(name, ServerError)
    return cls(message, code=name, host=host, may_have_run=may_have_run)
