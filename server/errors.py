"""What can go wrong on the way from a request to a remote command, as one tree.

    ScoutError                      a failure the caller is told about (never a bug)
    ├── InvalidRequest              the request itself is malformed
    ├── HostNotFound                the host is not in the inventory
    ├── HostRejected                host key unknown or changed, SSH auth refused
    ├── HostUnavailable             unreachable, connect timeout, lost before the command started
    ├── CommandAborted              connection lost after the command started (it may have run)
    ├── PoolExhausted               no connection slot or channel before the deadline
    └── CommandTimeout              the command outlived its timeout (it has been stopped)

The server maps these to gRPC status codes in exactly one place (`server.service`).
Messages name the host and the cause in words a person can act on, never a secret.
"""

from __future__ import annotations


class ScoutError(Exception):
    """Base of every expected failure; the message is shown to the caller."""

    def __init__(self, message: str, host: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.host = host


class InvalidRequest(ScoutError):
    """The request is malformed: empty fields, oversize fields, bad names."""


class HostNotFound(ScoutError):
    """The host is not in the server's inventory."""


class HostRejected(ScoutError):
    """The host cannot be trusted or refuses the gateway's credentials."""


class HostUnavailable(ScoutError):
    """The host could not be reached; the command did not start, so a retry is safe."""


class CommandAborted(ScoutError):
    """The connection was lost after the command started; it may have had effects."""


class PoolExhausted(ScoutError):
    """No connection or channel became free before the caller's deadline."""


class CommandTimeout(ScoutError):
    """The command ran past its timeout and was stopped."""
