import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExecuteRequest(_message.Message):
    __slots__ = ("host", "command", "stdin", "env", "timeout", "max_output_bytes", "text", "working_dir", "pty", "terminal_size", "close_stdin", "argv", "idempotency_key", "detach_grace")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HOST_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    WORKING_DIR_FIELD_NUMBER: _ClassVar[int]
    PTY_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    CLOSE_STDIN_FIELD_NUMBER: _ClassVar[int]
    ARGV_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    DETACH_GRACE_FIELD_NUMBER: _ClassVar[int]
    host: str
    command: str
    stdin: bytes
    env: _containers.ScalarMap[str, str]
    timeout: _duration_pb2.Duration
    max_output_bytes: int
    text: bool
    working_dir: str
    pty: bool
    terminal_size: TerminalSize
    close_stdin: bool
    argv: _containers.RepeatedScalarFieldContainer[str]
    idempotency_key: str
    detach_grace: _duration_pb2.Duration
    def __init__(self, host: _Optional[str] = ..., command: _Optional[str] = ..., stdin: _Optional[bytes] = ..., env: _Optional[_Mapping[str, str]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_output_bytes: _Optional[int] = ..., text: _Optional[bool] = ..., working_dir: _Optional[str] = ..., pty: _Optional[bool] = ..., terminal_size: _Optional[_Union[TerminalSize, _Mapping]] = ..., close_stdin: _Optional[bool] = ..., argv: _Optional[_Iterable[str]] = ..., idempotency_key: _Optional[str] = ..., detach_grace: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ExecuteResponse(_message.Message):
    __slots__ = ("stdout", "stderr", "exit_code", "signal", "core_dumped", "stdout_truncated", "stderr_truncated", "stdout_bytes", "stderr_bytes", "stdout_text", "stderr_text", "duration")
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    CORE_DUMPED_FIELD_NUMBER: _ClassVar[int]
    STDOUT_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    STDERR_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    STDOUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    STDERR_BYTES_FIELD_NUMBER: _ClassVar[int]
    STDOUT_TEXT_FIELD_NUMBER: _ClassVar[int]
    STDERR_TEXT_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    stdout: bytes
    stderr: bytes
    exit_code: int
    signal: str
    core_dumped: bool
    stdout_truncated: bool
    stderr_truncated: bool
    stdout_bytes: int
    stderr_bytes: int
    stdout_text: str
    stderr_text: str
    duration: _duration_pb2.Duration
    def __init__(self, stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., exit_code: _Optional[int] = ..., signal: _Optional[str] = ..., core_dumped: _Optional[bool] = ..., stdout_truncated: _Optional[bool] = ..., stderr_truncated: _Optional[bool] = ..., stdout_bytes: _Optional[int] = ..., stderr_bytes: _Optional[int] = ..., stdout_text: _Optional[str] = ..., stderr_text: _Optional[str] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("start", "stdin", "signal", "resize", "close_stdin", "attach")
    START_FIELD_NUMBER: _ClassVar[int]
    STDIN_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    RESIZE_FIELD_NUMBER: _ClassVar[int]
    CLOSE_STDIN_FIELD_NUMBER: _ClassVar[int]
    ATTACH_FIELD_NUMBER: _ClassVar[int]
    start: ExecuteRequest
    stdin: bytes
    signal: str
    resize: TerminalSize
    close_stdin: bool
    attach: Attach
    def __init__(self, start: _Optional[_Union[ExecuteRequest, _Mapping]] = ..., stdin: _Optional[bytes] = ..., signal: _Optional[str] = ..., resize: _Optional[_Union[TerminalSize, _Mapping]] = ..., close_stdin: _Optional[bool] = ..., attach: _Optional[_Union[Attach, _Mapping]] = ...) -> None: ...

class Attach(_message.Message):
    __slots__ = ("idempotency_key", "host", "stdout_offset", "stderr_offset")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    STDOUT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    STDERR_OFFSET_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    host: str
    stdout_offset: int
    stderr_offset: int
    def __init__(self, idempotency_key: _Optional[str] = ..., host: _Optional[str] = ..., stdout_offset: _Optional[int] = ..., stderr_offset: _Optional[int] = ...) -> None: ...

class Lost(_message.Message):
    __slots__ = ("stream", "bytes")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    stream: str
    bytes: int
    def __init__(self, stream: _Optional[str] = ..., bytes: _Optional[int] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("stdout", "stderr", "exit", "lost", "text", "offset")
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    EXIT_FIELD_NUMBER: _ClassVar[int]
    LOST_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    stdout: bytes
    stderr: bytes
    exit: ExitStatus
    lost: Lost
    text: str
    offset: int
    def __init__(self, stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., exit: _Optional[_Union[ExitStatus, _Mapping]] = ..., lost: _Optional[_Union[Lost, _Mapping]] = ..., text: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class ExitStatus(_message.Message):
    __slots__ = ("exit_code", "signal", "core_dumped", "stdout_bytes", "stderr_bytes", "stdout_truncated", "stderr_truncated", "duration")
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    CORE_DUMPED_FIELD_NUMBER: _ClassVar[int]
    STDOUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    STDERR_BYTES_FIELD_NUMBER: _ClassVar[int]
    STDOUT_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    STDERR_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    exit_code: int
    signal: str
    core_dumped: bool
    stdout_bytes: int
    stderr_bytes: int
    stdout_truncated: bool
    stderr_truncated: bool
    duration: _duration_pb2.Duration
    def __init__(self, exit_code: _Optional[int] = ..., signal: _Optional[str] = ..., core_dumped: _Optional[bool] = ..., stdout_bytes: _Optional[int] = ..., stderr_bytes: _Optional[int] = ..., stdout_truncated: _Optional[bool] = ..., stderr_truncated: _Optional[bool] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class TerminalSize(_message.Message):
    __slots__ = ("columns", "rows")
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    columns: int
    rows: int
    def __init__(self, columns: _Optional[int] = ..., rows: _Optional[int] = ...) -> None: ...

class ListHostsRequest(_message.Message):
    __slots__ = ("selector", "hosts")
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    selector: str
    hosts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, selector: _Optional[str] = ..., hosts: _Optional[_Iterable[str]] = ...) -> None: ...

class ListHostsResponse(_message.Message):
    __slots__ = ("hosts",)
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    hosts: _containers.RepeatedCompositeFieldContainer[Host]
    def __init__(self, hosts: _Optional[_Iterable[_Union[Host, _Mapping]]] = ...) -> None: ...

class Host(_message.Message):
    __slots__ = ("name", "address", "port", "user", "labels", "via", "connections_open", "channels_in_use")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VIA_FIELD_NUMBER: _ClassVar[int]
    CONNECTIONS_OPEN_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_IN_USE_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    port: int
    user: str
    labels: _containers.ScalarMap[str, str]
    via: _containers.RepeatedScalarFieldContainer[str]
    connections_open: int
    channels_in_use: int
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ..., port: _Optional[int] = ..., user: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., via: _Optional[_Iterable[str]] = ..., connections_open: _Optional[int] = ..., channels_in_use: _Optional[int] = ...) -> None: ...

class ExecuteManyRequest(_message.Message):
    __slots__ = ("hosts", "selector", "request", "max_parallel", "stream_output", "max_failures")
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    MAX_PARALLEL_FIELD_NUMBER: _ClassVar[int]
    STREAM_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    MAX_FAILURES_FIELD_NUMBER: _ClassVar[int]
    hosts: _containers.RepeatedScalarFieldContainer[str]
    selector: str
    request: ExecuteRequest
    max_parallel: int
    stream_output: bool
    max_failures: int
    def __init__(self, hosts: _Optional[_Iterable[str]] = ..., selector: _Optional[str] = ..., request: _Optional[_Union[ExecuteRequest, _Mapping]] = ..., max_parallel: _Optional[int] = ..., stream_output: _Optional[bool] = ..., max_failures: _Optional[int] = ...) -> None: ...

class ExecuteManyResponse(_message.Message):
    __slots__ = ("host", "result", "error", "output", "started")
    HOST_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    host: str
    result: ExecuteResponse
    error: _status_pb2.Status
    output: OutputChunk
    started: bool
    def __init__(self, host: _Optional[str] = ..., result: _Optional[_Union[ExecuteResponse, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ..., output: _Optional[_Union[OutputChunk, _Mapping]] = ..., started: _Optional[bool] = ...) -> None: ...

class OutputChunk(_message.Message):
    __slots__ = ("stdout", "stderr", "text")
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    stdout: bytes
    stderr: bytes
    text: str
    def __init__(self, stdout: _Optional[bytes] = ..., stderr: _Optional[bytes] = ..., text: _Optional[str] = ...) -> None: ...

class UploadRequest(_message.Message):
    __slots__ = ("start", "chunk")
    START_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    start: UploadStart
    chunk: bytes
    def __init__(self, start: _Optional[_Union[UploadStart, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadStart(_message.Message):
    __slots__ = ("host", "path", "mode", "create_only", "size", "sha256", "idempotency_key")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    CREATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    host: str
    path: str
    mode: int
    create_only: bool
    size: int
    sha256: str
    idempotency_key: str
    def __init__(self, host: _Optional[str] = ..., path: _Optional[str] = ..., mode: _Optional[int] = ..., create_only: _Optional[bool] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class UploadResponse(_message.Message):
    __slots__ = ("bytes_written", "sha256", "duration")
    BYTES_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    bytes_written: int
    sha256: str
    duration: _duration_pb2.Duration
    def __init__(self, bytes_written: _Optional[int] = ..., sha256: _Optional[str] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("host", "path", "offset", "length")
    HOST_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    host: str
    path: str
    offset: int
    length: int
    def __init__(self, host: _Optional[str] = ..., path: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class DownloadResponse(_message.Message):
    __slots__ = ("chunk", "end")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    chunk: bytes
    end: DownloadEnd
    def __init__(self, chunk: _Optional[bytes] = ..., end: _Optional[_Union[DownloadEnd, _Mapping]] = ...) -> None: ...

class DownloadEnd(_message.Message):
    __slots__ = ("size", "sha256", "mode", "mtime")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    MTIME_FIELD_NUMBER: _ClassVar[int]
    size: int
    sha256: str
    mode: int
    mtime: _timestamp_pb2.Timestamp
    def __init__(self, size: _Optional[int] = ..., sha256: _Optional[str] = ..., mode: _Optional[int] = ..., mtime: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UploadManyRequest(_message.Message):
    __slots__ = ("start", "chunk")
    START_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    start: UploadManyStart
    chunk: bytes
    def __init__(self, start: _Optional[_Union[UploadManyStart, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class UploadManyStart(_message.Message):
    __slots__ = ("hosts", "selector", "upload", "max_parallel")
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    SELECTOR_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_FIELD_NUMBER: _ClassVar[int]
    MAX_PARALLEL_FIELD_NUMBER: _ClassVar[int]
    hosts: _containers.RepeatedScalarFieldContainer[str]
    selector: str
    upload: UploadStart
    max_parallel: int
    def __init__(self, hosts: _Optional[_Iterable[str]] = ..., selector: _Optional[str] = ..., upload: _Optional[_Union[UploadStart, _Mapping]] = ..., max_parallel: _Optional[int] = ...) -> None: ...

class UploadManyResponse(_message.Message):
    __slots__ = ("host", "result", "error")
    HOST_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    host: str
    result: UploadResponse
    error: _status_pb2.Status
    def __init__(self, host: _Optional[str] = ..., result: _Optional[_Union[UploadResponse, _Mapping]] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...
