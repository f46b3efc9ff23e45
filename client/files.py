"""Files through scout: upload, download (with resume) and upload to many hosts.

    answer = await client.upload("web1", "/srv/app/app.conf", Path("app.conf"))
    async with client.download("web1", "/var/log/app.log") as call:
        async for chunk in call: ...          # then call.info: size, sha256, mode, mtime
    await client.download("web1", "/var/log/app.log").to_file("app.log")
    async for host in client.upload_many(["web*"], "/srv/app/app.conf", data): ...

A source is bytes, a local path, a binary file object, or an (async) iterable of bytes;
it is read and sent a chunk at a time, so memory stays bounded whatever its size. bytes
are sent with their size and SHA-256, so the server puts them in place only if every
byte arrived intact. `to_file` writes next to the local target and renames at the end,
after checking the digest the server sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Self, TypeVar

import grpc

from scout.v1 import exec_pb2

from .calls import _OwnedCall
from .errors import DataLoss, ScoutError, from_host_status, from_rpc_error

if TYPE_CHECKING:
    from .aio import Client

CHUNK = 1024 * 1024  # bytes per message sent (fewer, larger messages cost less per byte)
Source = bytes | str | os.PathLike[str] | IO[bytes] | AsyncIterable[bytes] | Iterable[bytes]
Progress = Callable[[int], None]  # called with the bytes moved so far


@dataclass(frozen=True)
class Uploaded:
    """A file put in place on a host."""

    host: str
    path: str
    bytes_written: int
    sha256: str
    duration: float


@dataclass(frozen=True)
class FileInfo:
    """What a download's end says: the whole file's size, mode and mtime, and the SHA-256
    of the bytes sent."""

    size: int
    sha256: str
    mode: int
    mtime: float


@dataclass(frozen=True)
class HostUpload:
    """One host's outcome in upload_many: `uploaded`, or `error` (its own status)."""

    host: str
    uploaded: Uploaded | None = None
    error: ScoutError | None = None

    @property
    def ok(self) -> bool:
        """The file is in place on this host."""
        return self.uploaded is not None


def _known(source: Source) -> tuple[int, str]:
    """Size and SHA-256 of a source known in advance (bytes), else (0, "")."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        return len(data), hashlib.sha256(data).hexdigest()
    return 0, ""


async def chunks(source: Source, chunk: int = CHUNK) -> AsyncIterator[bytes]:
    """The source's bytes, a chunk at a time (a local file is read in a thread)."""
    if isinstance(source, bytes | bytearray | memoryview):
        view = memoryview(source)
        for at in range(0, len(view), chunk):
            yield bytes(view[at : at + chunk])
    elif isinstance(source, str | os.PathLike):
        with Path(source).open("rb") as file:  # noqa: ASYNC230 - reads go to a thread below
            while block := await asyncio.to_thread(file.read, chunk):
                yield block
    elif hasattr(source, "read"):
        reader: IO[bytes] = source  # type: ignore[assignment]
        while piece := await asyncio.to_thread(reader.read, chunk):
            yield piece
    elif isinstance(source, AsyncIterable):
        async for item in source:
            yield bytes(item)
    else:
        for part in source:
            yield bytes(part)


def start_message(
    host: str,
    path: str,
    source: Source,
    *,
    mode: int = 0,
    create_only: bool = False,
    size: int | None = None,
    sha256: str | None = None,
    idempotency_key: str = "",
) -> exec_pb2.UploadStart:
    """The UploadStart for a source: size and digest filled in when bytes are given."""
    known_size, known_sha = _known(source)
    return exec_pb2.UploadStart(
        host=host,
        path=path,
        mode=mode,
        create_only=create_only,
        size=size if size is not None else known_size,
        sha256=sha256 if sha256 is not None else known_sha,
        idempotency_key=idempotency_key,
    )


async def upload(
    client: Client,
    start: exec_pb2.UploadStart,
    source: Source,
    *,
    rpc_timeout: float | None = None,
    progress: Progress | None = None,
) -> Uploaded:
    """Send start, then the source's chunks; the answer once the file is in place."""

    first = exec_pb2.UploadRequest(start=start)
    messages = _messages(first, lambda data: exec_pb2.UploadRequest(chunk=data), source, progress)
    stub = client._stub()
    call = stub.Upload(timeout=rpc_timeout, metadata=client._metadata(start.host))
    try:
        await send_all(call, messages)
        answer = await call
    except grpc.RpcError as err:
        raise from_rpc_error(err, start.host) from err
    finally:
        if not call.done():
            call.cancel()
    return _uploaded(start.host, start.path, answer)


M = TypeVar("M", exec_pb2.UploadRequest, exec_pb2.UploadManyRequest)


async def _messages(
    first: M, chunk: Callable[[bytes], M], source: Source, progress: Progress | None
) -> AsyncIterator[M]:
    """An upload's requests: first, then one `chunk(data)` per chunk of the source, each
    counted to progress once handed on."""
    yield first
    sent = 0
    async for data in chunks(source):
        yield chunk(data)
        sent += len(data)
        if progress is not None:
            progress(sent)


async def send_all(call: Any, messages: AsyncIterator[Any]) -> None:
    """Write messages on a client-streaming call, then half-close; stop at once when the
    server has answered (an early status: awaiting the call then gives it). grpc's own
    request-iterator mode may report such a write as INTERNAL instead, losing the
    server's status (ALREADY_EXISTS, PERMISSION_DENIED, ...). An error of the source
    itself (a local file that cannot be read) cancels the call and is raised."""
    try:
        async for message in messages:
            if call.done():
                return
            await call.write(message)
        await call.done_writing()
    except (grpc.RpcError, asyncio.InvalidStateError):
        return  # the call has ended: its status says why
    except BaseException:
        call.cancel()
        raise


def _uploaded(host: str, path: str, answer: exec_pb2.UploadResponse) -> Uploaded:
    return Uploaded(
        host, path, answer.bytes_written, answer.sha256, answer.duration.ToNanoseconds() / 1e9
    )


class DownloadCall(_OwnedCall[exec_pb2.DownloadRequest]):
    """A Download: iterate it for the chunks, in order; `info` is set at the end.

    Leaving `async with` cancels the call if it still runs. `to_file()` runs the whole
    download into a local file.
    """

    def __init__(
        self,
        client: Client,
        request: exec_pb2.DownloadRequest,
        rpc_timeout: float | None,
        progress: Progress | None = None,
    ) -> None:
        super().__init__(client, request, rpc_timeout, client._metadata(request.host))
        self._progress = progress
        self.info: FileInfo | None = None

    @property
    def request(self) -> exec_pb2.DownloadRequest:
        """What is read: host, path, and the range."""
        return self._request

    async def __aenter__(self) -> Self:
        return self

    async def __aiter__(self) -> AsyncIterator[bytes]:
        host = self.request.host
        stub = self._client._stub()
        self._call = stub.Download(self.request, timeout=self._deadline, metadata=self._metadata)
        received = 0
        try:
            async for message in self._call:
                if message.WhichOneof("event") == "chunk":
                    received += len(message.chunk)
                    if self._progress is not None:
                        self._progress(received)
                    yield message.chunk
                else:
                    end = message.end
                    mtime = end.mtime.seconds + end.mtime.nanos / 1e9
                    self.info = FileInfo(end.size, end.sha256, end.mode, mtime)
        except grpc.RpcError as err:
            raise from_rpc_error(err, host, started=False) from err

    async def to_file(self, local: str | os.PathLike[str], *, mode: int | None = None) -> FileInfo:
        """Download into local: a temporary file next to it, renamed over it once the
        digest matched (the remote file's mode unless `mode` is given)."""
        target = Path(local)
        fd, name = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.")
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as file:
                async for data in self:
                    digest.update(data)
                    await asyncio.to_thread(file.write, data)
            info = _checked(self.info, digest.hexdigest(), self.request)
            _put_in_place(name, target, info.mode if mode is None else mode)
        except BaseException:
            _discard(name)
            raise
        return info


def _checked(info: FileInfo | None, received: str, request: exec_pb2.DownloadRequest) -> FileInfo:
    """The end's info, if the bytes received have the digest it says."""
    if info is None or info.sha256 != received:
        raise DataLoss(
            f"download of {request.path} from {request.host}: the bytes received do not "
            "match the server's SHA-256",
            code="DATA_LOSS",
            host=request.host,
            may_have_run=False,
        )
    return info


def _put_in_place(name: str, target: Path, mode: int) -> None:
    Path(name).chmod(mode)
    Path(name).replace(target)


def _discard(name: str) -> None:
    Path(name).unlink(missing_ok=True)


async def upload_many(
    client: Client,
    hosts: Sequence[str],
    start: exec_pb2.UploadStart,
    source: Source,
    *,
    selector: str = "",
    max_parallel: int = 0,
    rpc_timeout: float | None = None,
    progress: Progress | None = None,
) -> AsyncIterator[HostUpload]:
    """Send the file once; yield each host's outcome as it finishes."""

    begin = exec_pb2.UploadManyStart(
        hosts=list(hosts), selector=selector, upload=start, max_parallel=max_parallel
    )
    first = exec_pb2.UploadManyRequest(start=begin)
    messages = _messages(first, lambda d: exec_pb2.UploadManyRequest(chunk=d), source, progress)
    stub = client._stub()
    call = stub.UploadMany(timeout=rpc_timeout, metadata=client._fan_out_metadata(list(hosts)))
    writer = asyncio.ensure_future(send_all(call, messages))
    try:
        async for message in call:
            if message.WhichOneof("event") == "result":
                yield HostUpload(message.host, _uploaded(message.host, start.path, message.result))
            else:
                error = from_host_status(
                    message.error.code, message.error.message, message.host, started=False
                )
                yield HostUpload(message.host, error=error)
        await writer
    except grpc.RpcError as err:
        local = writer.exception() if writer.done() and not writer.cancelled() else None
        if local is not None:
            raise local from err  # the source failed (a local read error)
        raise from_rpc_error(err, "", started=False) from err
    finally:
        if not call.done():
            call.cancel()
        if not writer.done():
            writer.cancel()
