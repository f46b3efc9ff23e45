"""The scout client library: `Client` (asyncio), `SyncClient`, options, results and errors.

Import from here; the submodules' layout may change.
"""

from .aio import DEFAULT_TARGET, Client, ExecuteManyCall, StreamCall
from .credentials import TLS
from .errors import (
    Aborted,
    AlreadyExists,
    Cancelled,
    CommandFailed,
    CommandTimeout,
    DataLoss,
    HostNotFound,
    HostRejected,
    InvalidRequest,
    KeyNotFound,
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
from .files import DownloadCall, FileInfo, HostUpload, Uploaded
from .fleet import Host, HostEvent, HostOutcome, HostOutput
from .options import ExecOptions
from .results import Event, Exit, ExitStatus, Lost, Result, Stderr, Stdout
from .retry import RetryPolicy
from .sync import SyncClient

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
    "KeyNotFound",
    "Lost",
    "NotAllowed",
    "Overloaded",
    "Result",
    "RetryPolicy",
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
