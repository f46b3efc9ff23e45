"""The scout client library: `Client` (asyncio), `SyncClient`, options, results and errors.

Import from here; the submodules' layout may change.
"""

from client.aio import DEFAULT_TARGET, Client, ExecuteManyCall, StreamCall
from client.credentials import TLS
from client.errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    CommandFailed,
    CommandTimeout,
    DataLoss,
    HostNotFound,
    HostRejected,
    InvalidRequest,
    NotAllowed,
    Overloaded,
    ScoutError,
    ServerError,
    Timeout,
    Unavailable,
    Unreachable,
    from_host_status,
    from_rpc_error,
)
from client.files import DownloadCall, FileInfo, HostUpload, Uploaded
from client.fleet import Host, HostEvent, HostOutcome, HostOutput
from client.options import ExecOptions
from client.results import Event, Exit, ExitStatus, Result, Stderr, Stdout
from client.sync import SyncClient

__all__ = [
    "DEFAULT_TARGET",
    "TLS",
    "Aborted",
    "AlreadyExists",
    "Cancelled",
    "Client",
    "CommandFailed",
    "CommandTimeout",
    "DataLoss",
    "DownloadCall",
    "Event",
    "ExecOptions",
    "ExecuteManyCall",
    "Exit",
    "ExitStatus",
    "FileInfo",
    "Host",
    "HostEvent",
    "HostNotFound",
    "HostOutcome",
    "HostOutput",
    "HostRejected",
    "HostUpload",
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
    "Unreachable",
    "Uploaded",
    "from_host_status",
    "from_rpc_error",
]
