"""What can go wrong on the way from a request to a remote command, as one tree.

    ScoutError                      a failure the caller is told about (never a bug)
    ├── Unauthenticated             no identity, or a wrong one
    ├── PermissionDenied            a known caller outside its policy (names the rule)
    ├── InvalidRequest              the request itself is malformed
    ├── HostNotFound                the host is not in the inventory
    ├── HostRejected                host key unknown or changed, SSH auth refused, no sessions
    ├── HostUnavailable             unreachable, connect timeout, lost before the command started
    ├── CommandAborted              lost after the command started (it may have run)
    ├── PoolExhausted               no connection or channel before the deadline; overloaded
    ├── AuditUnavailable            the audit log cannot be written: no command runs
    ├── CommandTimeout              the command outlived its timeout (it has been stopped)
    ├── FileMissing                 files: no such file on the host
    ├── FileRefused                 files: the remote user may not, or the directory is missing
    ├── FileExists                  files: create_only, and the file is there
    ├── TransferMismatch            files: the bytes differ from the size or digest announced
    ├── FileChanged                 files: the file moved while it was read
    ├── KeyConflict                 durable: the key names a different request
    ├── KeyNotFound                 durable: attach to a key this caller never used
    ├── OutcomeUnknown              durable: the key's run started, its outcome is lost
    ├── StoreUnavailable            durable: the outcome store cannot be written: nothing runs
    ├── DurableLimit                durable: a bound of [durable] is reached: nothing runs
    └── RecordedFailure             durable: how a keyed run failed, given again to a retry

    ChannelTrouble                  the pool's business, never shown to a caller as such
    ├── ChannelRefused              the server refused a channel on a live connection: full
    └── ConnectionDead              the connection died before the channel opened

    FileError                       a file of the server's own (config, key, audit log)
                                    cannot be read or opened: the operator's business

Every ScoutError says whether the command may have started (`started`): the server tells
callers in the trailing metadata (`x-scout-started`), so "nothing ran, retry" is never
said of a command that may have run. The server maps these to gRPC status codes in
exactly one place (`server.rpc`). Messages name the host and the cause in words a
person can act on, never a secret, and quote callers' values only as a short prefix.
"""

from __future__ import annotations

STARTED_KEY = "x-scout-started"  # the trailer (and Stream header) that says "may have run"
REPLAYED_KEY = "x-scout-replayed"  # the trailer that says "an earlier run's outcome, again"


class ScoutError(Exception):
    """Base of every expected failure; the message is shown to the caller."""

    started = False  # the default of the class: whether the command may have started

    def __init__(
        self,
        message: str,
        host: str = "",
        *,
        started: bool | None = None,
        mentions: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.host = host
        self.mentions = mentions  # other hosts the message names (jump hosts): a caller
        #                           who may not use one of them gets a message without it
        if started is not None:
            self.started = started


class Unauthenticated(ScoutError):
    """The call carries no identity scout accepts; the message never echoes a credential."""


class PermissionDenied(ScoutError):
    """A known caller asked for a host, command or method its policy does not allow."""


class InvalidRequest(ScoutError):
    """The request is malformed: empty fields, oversize fields, bad names."""


class HostNotFound(ScoutError):
    """The host is not in the server's inventory."""


class HostRejected(ScoutError):
    """The host cannot be trusted, refuses the gateway's credentials, or refuses sessions."""


class HostUnavailable(ScoutError):
    """The host could not be reached; the command did not start, so a retry is safe."""


class CommandAborted(ScoutError):
    """The connection was lost after the command started; it may have had effects."""

    started = True


class PoolExhausted(ScoutError):
    """No connection or channel in time, or the server is at a limit; nothing started."""


class AuditUnavailable(ScoutError):
    """The audit log cannot be written, so scout runs no command (it fails closed)."""


class CommandTimeout(ScoutError):
    """The command ran past its timeout and was stopped."""

    started = True


class FileMissing(ScoutError):
    """The file to read is not on the host."""


class FileRefused(ScoutError):
    """The host's SFTP server refused the operation (the remote user's permissions, a
    directory that does not exist, not a regular file); the message has its text."""


class FileExists(ScoutError):
    """`create_only` and the target is already there; nothing was written."""


class TransferMismatch(ScoutError):
    """The bytes received are not the size or digest the caller announced: nothing was
    put in place."""


class FileChanged(ScoutError):
    """The file's size or mtime moved while it was read: what was sent may be mixed."""


class KeyConflict(ScoutError):
    """An idempotency key already names a different request of this caller."""


class KeyNotFound(ScoutError):
    """An attach names a key this caller has no command under (another caller's key
    reads the same: its existence is not shown)."""


class OutcomeUnknown(ScoutError):
    """The key's command was started and its outcome was never recorded (the process
    that ran it died, or a shutdown stopped it): it is never run again under that key."""

    started = True


class StoreUnavailable(ScoutError):
    """The outcome store cannot be read or written, so a keyed command does not run."""


class DurableLimit(ScoutError):
    """A bound of `[durable]` (records, detached commands) is reached; nothing ran."""


class RecordedFailure(ScoutError):
    """How a keyed run ended when it failed (its status code's name, message and whether
    it may have started), given again to a later caller with the same key."""

    def __init__(self, code_name: str, message: str, *, started: bool) -> None:
        super().__init__(message, started=started)
        self.code_name = code_name


class ChannelTrouble(Exception):
    """A channel could not be opened on a pooled connection; nothing reached the host."""


class ChannelRefused(ChannelTrouble):
    """The server refused a channel on a live connection: that connection is full."""


class ConnectionDead(ChannelTrouble):
    """The connection died before the channel opened."""


def brief(value: str | bytes, limit: int = 48) -> str:
    """A caller's value for a message or a log line: a short quoted prefix, and its size."""
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} {'bytes' if isinstance(value, bytes) else 'chars'})"


class FileError(Exception):
    """A file could not be read or parsed; the message names it, never its contents."""


def not_opened(reason: str, *, connection_closed: bool) -> ChannelTrouble:
    """A channel open the server refused: on a dead connection ConnectionDead, on a live
    one ChannelRefused (it is full). Nothing reached the host either way."""
    return ConnectionDead(reason) if connection_closed else ChannelRefused(reason)
