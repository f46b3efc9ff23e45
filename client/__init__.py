"""The scout client library: `Client` (asyncio), `SyncClient`, results and errors.

Import from here; the submodules' layout may change.
"""

from client.aio import DEFAULT_TARGET, Client, StreamCall
from client.errors import (
    Aborted,
    Cancelled,
    CommandFailed,
    HostNotFound,
    HostRejected,
    InvalidRequest,
    NotAllowed,
    Overloaded,
    ScoutError,
    ServerError,
    Timeout,
    Unavailable,
    from_rpc_error,
)
from client.results import Event, Exit, ExitStatus, Result, Stderr, Stdout
from client.sync import SyncClient

__all__ = [
    "DEFAULT_TARGET",
    "Aborted",
    "Cancelled",
    "Client",
    "CommandFailed",
    "Event",
    "Exit",
    "ExitStatus",
    "HostNotFound",
    "HostRejected",
    "InvalidRequest",
    "NotAllowed",
    "Overloaded",
    "Result",
    "ScoutError",
    "ServerError",
    "Stderr",
    "Stdout",
    "StreamCall",
    "SyncClient",
    "Timeout",
    "Unavailable",
    "from_rpc_error",
]
