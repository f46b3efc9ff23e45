"""Upload, Download and UploadMany: files over SFTP, on the pool's connections.

Each transfer holds one SFTP channel in a channel place (server.sftpchannel), so files
and commands share a host's MaxSessions budget. docs/architecture.md, "Files" says how:

- the path is checked against the caller's policy as asked (normalised), and again as
  the host resolves it (SFTP realpath): `..` and symlinks cannot lead out of `paths`;
- an upload writes a temporary name in the target's directory and renames it over the
  target only when every byte arrived and matched `size` and `sha256` (after an fsync
  where the server offers one); on every other way out, the caller's connection cut
  included, the temporary file is removed, in a task the caller's cancellation cannot
  stop;
- bytes stream with at most `[files] window` SFTP reads or writes in flight per transfer
  (each at most the SFTP server's request limit, 255 KiB for OpenSSH), and Download
  messages of about `chunk_bytes`: a slow disk slows the caller, a slow caller slows
  the reads;
- a download compares the file's size and mtime before and after, and says ABORTED
  when they moved (what was sent may mix two versions).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import posixpath
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncssh
from asyncssh import FXF_CREAT, FXF_EXCL, FXF_WRITE, SFTPAttrs
from asyncssh.sftp import SFTPClientFile
from google.protobuf import duration_pb2, timestamp_pb2

from scout.v1 import exec_pb2

from .audit import CallRecord, capped
from .config import CallerConfig, HostConfig
from .errors import (
    CommandAborted,
    FileChanged,
    FileExists,
    FileMissing,
    FileRefused,
    HostNotFound,
    HostUnavailable,
    InvalidRequest,
    ScoutError,
    TransferMismatch,
    brief,
)
from .requests import MAX_HOST
from .rpc import MALFORMED, Context, drain
from .sftpchannel import SFTPChannel, sftp_session

if TYPE_CHECKING:
    from .service import ExecService

log = logging.getLogger(__name__)
# asyncssh's block_size that makes each read or write call one SFTP request: scout keeps
# its own window of requests, so asyncssh's parallel reader (a task, a reassembly buffer
# and a copy per call) would only add work
ONE_REQUEST = None

CLEANUP_WITHIN = 5.0  # removing a temporary file after a failure: at most this long
DRAIN_WITHIN = 10.0  # reading what a caller still sends after an upload failed (rpc.drain)
IDEMPOTENCY_TTL = 600.0  # seconds an idempotency_key's answer is kept
IDEMPOTENCY_KEYS = 10_000  # answers kept at most (the oldest go first)
SHA256_HEX = frozenset("0123456789abcdef")
Chunks = AsyncIterator[bytes]


@dataclass(frozen=True)
class Written:
    """What an upload put in place."""

    size: int
    sha256: str
    duration: float

    def response(self) -> exec_pb2.UploadResponse:
        """UploadResponse for it."""
        took = duration_pb2.Duration()
        took.FromNanoseconds(int(self.duration * 1e9))
        return exec_pb2.UploadResponse(bytes_written=self.size, sha256=self.sha256, duration=took)


def describe_file(call: CallRecord, host: str, path: str, direction: str) -> None:
    """Copy a transfer's target into its record (before any check: refusals are audited)."""
    call.host = capped(host, MAX_HOST)
    call.path = capped(path, 4096)
    call.direction = direction
    call.authorized = True


def check_start(start: exec_pb2.UploadStart, max_bytes: int) -> None:
    """An UploadStart's own bounds: InvalidRequest before anything is written."""
    if start.size > max_bytes:
        raise InvalidRequest(
            f"size: {start.size} bytes is over [files] max_file_bytes ({max_bytes})"
        )
    if start.sha256 and (len(start.sha256) != 64 or not set(start.sha256) <= SHA256_HEX):
        raise InvalidRequest("sha256: 64 lowercase hex digits")
    if start.mode > 0o7777:
        raise InvalidRequest("mode: permission bits only (at most 0o7777)")
    if len(start.idempotency_key) > 128:
        raise InvalidRequest("idempotency_key: at most 128 characters")
    if start.path.endswith("/"):
        raise InvalidRequest("path: names a directory (ends with /); name the file")


_LOST = (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection)


def _lost(host: str, exc: BaseException) -> ScoutError:
    """The SSH connection (or the SFTP channel) went away mid-transfer: nothing was put in
    place, so a retry (or a resumed download) is safe."""
    return HostUnavailable(
        f"{host}: SSH connection lost during the transfer ({type(exc).__name__}); nothing "
        "was put in place",
        host,
    )


def _refused(host: str, what: str, exc: asyncssh.SFTPError) -> ScoutError:
    """A remote SFTP error as the status the README's table gives it."""
    if isinstance(exc, _LOST):
        return _lost(host, exc)
    if isinstance(exc, asyncssh.SFTPNoSuchFile | asyncssh.SFTPNoSuchPath):
        return FileMissing(f"{host}: {what}: no such file or directory", host)
    return FileRefused(
        f"{host}: {what}: the host refused: {exc.reason or type(exc).__name__}", host
    )


class Files:
    """The file transfers of one ExecService."""

    def __init__(self, service: ExecService) -> None:
        self.service = service
        self._answers: dict[tuple[str, str], tuple[float, str, str, exec_pb2.UploadResponse]] = {}

    # ---- admission ----------------------------------------------------------------

    def admit(
        self, call: CallRecord, host: str, path: str, direction: str
    ) -> tuple[HostConfig, str]:
        """Policy on the path as asked, then the inventory, then the audit log's consent."""
        assert call.who is not None
        service = self.service
        access = "read" if direction == "download" else "write"
        clean = service.gate.authorize_file(call.who, host, path, access)
        found = service.config.hosts.get(host)
        if found is None:
            raise HostNotFound(
                f"host {brief(host)} is not in the inventory" + service._closest(call.who, host),
                host,
            )
        service.audit.ready()
        return found, clean

    def until(self, remaining: float | None) -> float:
        """When the wait for a channel must end: the RPC deadline, or the default timeout."""
        timeout = self.service.config.exec.default_timeout
        if remaining is not None:
            timeout = min(timeout, max(remaining * 0.9, 0.05))
        return time.monotonic() + timeout

    # ---- upload -------------------------------------------------------------------

    def remembered(
        self, who: CallerConfig, start: exec_pb2.UploadStart, host: str
    ) -> exec_pb2.UploadResponse | None:
        """The answer of an earlier upload with this idempotency_key, host and path."""
        if not start.idempotency_key:
            return None
        now = time.monotonic()
        for key, (at, *_) in list(self._answers.items()):
            if now - at > IDEMPOTENCY_TTL:
                del self._answers[key]
        found = self._answers.get((who.name, start.idempotency_key))
        if found is None or (found[1], found[2]) != (host, start.path):
            return None
        return found[3]

    def remember(
        self, who: CallerConfig, start: exec_pb2.UploadStart, host: str, answer: Written
    ) -> None:
        """Keep an answer for retries with the same idempotency_key."""
        if not start.idempotency_key:
            return
        if len(self._answers) >= IDEMPOTENCY_KEYS:
            del self._answers[next(iter(self._answers))]
        key = (who.name, start.idempotency_key)
        self._answers[key] = (time.monotonic(), host, start.path, answer.response())

    async def upload(
        self,
        host: HostConfig,
        clean: str,
        start: exec_pb2.UploadStart,
        chunks: Chunks,
        *,
        who: CallerConfig,
        call: CallRecord,
        until: float,
    ) -> Written:
        """Write the file through a temporary name; rename it over the target at the end."""
        began = time.monotonic()
        async with sftp_session(self.service.launcher, host, until) as channel:
            try:
                target = await self._write_target(channel, clean, start, who)
                writer = _Upload(channel, target, start, self.service.config.files, call)
                await writer.open()
            except (asyncssh.Error, OSError) as exc:
                raise _lost(host.name, exc) from None
            try:
                await writer.copy(chunks)
                await writer.commit()
            except BaseException as exc:
                cleanup = asyncio.ensure_future(self._discard(writer, host))
                self.service.launcher.track(cleanup)  # shutdown waits for it
                await asyncio.shield(cleanup)
                if isinstance(exc, asyncssh.Error | OSError):
                    raise _lost(host.name, exc) from None
                raise
        return Written(writer.size, writer.digest.hexdigest(), time.monotonic() - began)

    async def upload_call(
        self, requests: AsyncIterator[Any], context: Context, call: CallRecord
    ) -> exec_pb2.UploadResponse:
        """Upload: `start`, then the chunks; the answer once the file is in place."""
        config = self.service.config
        start = await first_start(requests, config.exec.stream_start_timeout, "Upload")
        describe_file(call, start.host, start.path, "upload")
        assert call.who is not None
        try:
            host, clean = self.admit(call, start.host, start.path, "upload")
            check_start(start, config.files.max_file_bytes)
            earlier = self.remembered(call.who, start, host.name)
            if earlier is not None:
                call.file_bytes, call.sha256 = earlier.bytes_written, earlier.sha256
                await drain(requests, DRAIN_WITHIN)
                return earlier
            until = self.until(context.time_remaining())
            written = await self.upload(
                host, clean, start, chunks(requests), who=call.who, call=call, until=until
            )
        except ScoutError:
            await drain(requests, DRAIN_WITHIN)  # so that the caller hears this status (drain())
            raise
        self.remember(call.who, start, host.name, written)
        return written.response()

    async def download_call(
        self, request: exec_pb2.DownloadRequest, context: Context, call: CallRecord
    ) -> None:
        """Download: the chunks, then the end message."""
        describe_file(call, request.host, request.path, "download")
        host, clean = self.admit(call, request.host, request.path, "download")
        assert call.who is not None
        until = self.until(context.time_remaining())
        await self.download(
            host, clean, request, send=context.write, who=call.who, call=call, until=until
        )

    async def _discard(self, writer: _Upload, host: HostConfig) -> None:
        """Remove a failed upload's temporary file; when its channel is gone (the SSH
        connection was lost), on a fresh SFTP channel from the pool, within a bound."""
        if await writer.discard():
            return
        try:
            until = time.monotonic() + CLEANUP_WITHIN
            async with sftp_session(self.service.launcher, host, until) as channel:
                await _Upload.remove(channel, writer.temp)
        except (ScoutError, asyncssh.Error, OSError, TimeoutError) as exc:
            log.warning(
                "%s: could not remove the temporary file of a failed upload (%s): %s",
                host.name,
                type(exc).__name__,
                writer.temp,
            )

    async def _write_target(
        self, channel: SFTPChannel, clean: str, start: exec_pb2.UploadStart, who: CallerConfig
    ) -> str:
        """The target's real path (its directory resolved by the host), policy checked."""
        host, sftp = channel.host, channel.client
        directory, name = posixpath.split(clean)
        if not name:
            raise InvalidRequest("path: names a directory, not a file")
        try:
            real_dir = await sftp.realpath(directory)
            attrs = await sftp.stat(real_dir)
        except asyncssh.SFTPError as exc:
            if isinstance(exc, asyncssh.SFTPNoSuchFile | asyncssh.SFTPNoSuchPath):
                raise FileRefused(
                    f"{host}: the directory of {brief(start.path)} does not exist", host
                ) from None
            raise _refused(host, f"the directory of {brief(start.path)}", exc) from None
        if attrs.type != asyncssh.FILEXFER_TYPE_DIRECTORY:
            raise FileRefused(f"{host}: the directory of {brief(start.path)} is not one", host)
        real = posixpath.join(real_dir, name)
        self.service.gate.check_path(who, real, "write", start.path)
        return real

    # ---- download -----------------------------------------------------------------

    async def download(
        self,
        host: HostConfig,
        clean: str,
        request: exec_pb2.DownloadRequest,
        *,
        send: Callable[[exec_pb2.DownloadResponse], Awaitable[None]],
        who: CallerConfig,
        call: CallRecord,
        until: float,
    ) -> None:
        """Send the file's range in order, then its end; ABORTED if it moved meanwhile."""
        try:
            settings = self.service.config.files
            async with sftp_session(self.service.launcher, host, until) as channel:
                name, sftp = host.name, channel.client
                try:
                    real = await sftp.realpath(clean)
                except asyncssh.SFTPError as exc:
                    raise _refused(name, brief(request.path), exc) from None
                self.service.gate.check_path(who, real, "read", request.path)
                try:
                    file = await sftp.open(real, "rb", block_size=ONE_REQUEST)
                except asyncssh.SFTPError as exc:
                    raise _refused(name, brief(request.path), exc) from None
                async with file:
                    before = await file.stat()
                    if before.type != asyncssh.FILEXFER_TYPE_REGULAR:
                        raise FileRefused(
                            f"{name}: {brief(request.path)} is not a regular file", name
                        )
                    size = before.size or 0
                    if request.offset > size:
                        raise InvalidRequest(
                            f"offset: {request.offset} is past the end ({size} bytes)"
                        )
                    end = size if not request.length else min(size, request.offset + request.length)
                    digest = hashlib.sha256()
                    sent = 0
                    piece = min(settings.chunk_bytes, sftp.limits.max_read_len or 32768)
                    pieces = _read_ahead(file, request.offset, end, piece, settings.window)
                    async for data in _messages(pieces, settings.chunk_bytes):
                        digest.update(data)
                        sent += len(data)
                        call.file_bytes = sent
                        await send(exec_pb2.DownloadResponse(chunk=data))
                    if sent != end - request.offset:
                        raise FileChanged(
                            f"{name}: {brief(request.path)} got shorter while it was read", name
                        )
                    after = await file.stat()
                if (after.size, after.mtime) != (before.size, before.mtime):
                    raise FileChanged(
                        f"{name}: {brief(request.path)} changed while it was read (size or mtime "
                        "moved); what was sent may mix two versions: read it again",
                        name,
                    )
            call.sha256 = digest.hexdigest()
            mtime = timestamp_pb2.Timestamp(seconds=int(before.mtime or 0))
            end_message = exec_pb2.DownloadEnd(
                size=size,
                sha256=call.sha256,
                mode=(before.permissions or 0) & 0o7777,
                mtime=mtime,
            )
            await send(exec_pb2.DownloadResponse(end=end_message))
        except (asyncssh.Error, OSError) as exc:
            raise _lost(host.name, exc) from None


async def first_start(requests: AsyncIterator[Any], within: float, method: str) -> Any:
    """The `start` message of an Upload or UploadMany, which must come first and soon."""
    try:
        async with asyncio.timeout(within):
            first: Any = await anext(requests, None)
    except TimeoutError:
        raise InvalidRequest(f"{method}: no `start` message within {within:g}s") from None
    if first is MALFORMED or first is None or first.WhichOneof("event") != "start":
        raise InvalidRequest(f"{method}: the first message must be `start`")
    return first.start


async def chunks(requests: AsyncIterator[Any]) -> Chunks:
    """The bytes of the messages after `start`; anything else is InvalidRequest."""
    async for message in requests:
        if message is MALFORMED or message.WhichOneof("event") != "chunk":
            raise InvalidRequest("after `start`, only `chunk` messages")
        yield message.chunk


async def _messages(pieces: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    """SFTP reads joined into messages of about `size` bytes: fewer, larger gRPC messages
    cost both ends less per byte than one message per SFTP request."""
    held: list[bytes] = []
    count = 0
    async for piece in pieces:
        held.append(piece)
        count += len(piece)
        if count >= size:
            yield b"".join(held)
            held, count = [], 0
    if held:
        yield b"".join(held)


async def _read_ahead(
    file: SFTPClientFile, offset: int, end: int, piece: int, window: int
) -> AsyncIterator[bytes]:
    """The bytes from offset to end in order, `window` reads of `piece` bytes in flight.
    Each read is one SFTP request (the file is opened with ONE_REQUEST, and a piece is at
    most the server's read limit); a server may answer one with fewer bytes, so the rest
    of that piece is read before what follows it is given out."""
    loop = asyncio.get_running_loop()
    pending: list[tuple[int, int, asyncio.Future[bytes]]] = []
    position = offset
    try:
        while True:
            while position < end and len(pending) < window:
                n = min(piece, end - position)
                pending.append((position, n, loop.create_task(file.read(n, position))))
                position += n
            if not pending:
                return
            at, n, read = pending.pop(0)
            data = await read
            while data and len(data) < n:  # a short answer: the rest of this piece
                more: bytes = await file.read(n - len(data), at + len(data))
                if not more:
                    break
                data += more
            if not data:
                return
            yield data
            if len(data) < n:
                return  # the file ended early: the caller sees fewer bytes than it asked
    finally:
        await _settle(task for _, _, task in pending)


async def _settle(pending: Iterable[asyncio.Future[Any]]) -> None:
    """Let SFTP requests already sent finish (each ends at once when its channel is gone)
    rather than cancel them while asyncssh waits for their answers;
    cancel what is still running after CLEANUP_WITHIN."""
    waiting = list(pending)
    if not waiting:
        return
    _, late = await asyncio.wait(waiting, timeout=CLEANUP_WITHIN)
    for task in late:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


def _results(done: set[asyncio.Future[int]]) -> None:
    """Raise the first error among finished writes (every one of them retrieved)."""
    errors = [task.exception() for task in done]
    for error in errors:
        if error is not None:
            raise error


@dataclass(eq=False)
class _Upload:
    """One upload's temporary file: written with a window, then committed or discarded."""

    channel: SFTPChannel
    target: str
    start: exec_pb2.UploadStart
    settings: Any
    call: CallRecord
    temp: str = field(init=False)  # beside target, renamed over it at the end
    file: SFTPClientFile | None = field(default=None, init=False)
    size: int = field(default=0, init=False)
    digest: Any = field(default_factory=hashlib.sha256, init=False)
    mode: int = field(init=False)

    def __post_init__(self) -> None:
        directory, name = posixpath.split(self.target)
        self.temp = posixpath.join(directory, f".{name[:64]}.scout-{secrets.token_hex(6)}.tmp")
        self.mode = self.start.mode & 0o7777

    @property
    def host(self) -> str:
        return self.channel.host

    def _what(self) -> str:
        return brief(self.start.path)

    async def open(self) -> None:
        """Check the target (create_only, a directory), then create the temporary file."""
        sftp = self.channel.client
        try:
            existing = await sftp.lstat(self.target)
        except (asyncssh.SFTPNoSuchFile, asyncssh.SFTPNoSuchPath):
            existing = None
        except asyncssh.SFTPError as exc:
            raise _refused(self.host, self._what(), exc) from None
        if existing is not None:
            if self.start.create_only:
                raise FileExists(
                    f"{self.host}: {self._what()} exists and create_only is set; nothing written",
                    self.host,
                )
            if existing.type == asyncssh.FILEXFER_TYPE_DIRECTORY:
                raise FileRefused(f"{self.host}: {self._what()} is a directory", self.host)
            if not self.mode and existing.type == asyncssh.FILEXFER_TYPE_REGULAR:
                self.mode = (existing.permissions or 0o644) & 0o7777
        self.mode = self.mode or 0o644
        try:
            self.file = await sftp.open(
                self.temp,
                FXF_WRITE | FXF_CREAT | FXF_EXCL,
                SFTPAttrs(permissions=0o600),
                encoding=None,
                block_size=ONE_REQUEST,
            )
        except asyncssh.SFTPError as exc:
            raise _refused(self.host, f"writing next to {self._what()}", exc) from None

    async def copy(self, chunks: Chunks) -> None:
        """Write every chunk, `window` writes in flight; over max_file_bytes: InvalidRequest."""
        assert self.file is not None
        limit = self.settings.max_file_bytes
        piece = min(self.settings.chunk_bytes, self.channel.client.limits.max_write_len or 32768)
        window = self.settings.window
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Future[int]] = set()
        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                if self.size + len(chunk) > limit:
                    raise InvalidRequest(
                        f"the file is over [files] max_file_bytes ({limit}); nothing written"
                    )
                self.digest.update(chunk)
                for at in range(0, len(chunk), piece):  # one SFTP request each
                    part = chunk[at : at + piece]
                    pending.add(loop.create_task(self.file.write(part, self.size)))
                    self.size += len(part)
                    if len(pending) >= window:
                        done, pending = await asyncio.wait(pending, return_when="FIRST_COMPLETED")
                        _results(done)
                self.call.file_bytes = self.size
            if pending:
                done, pending = await asyncio.wait(pending)
                _results(done)
        except asyncssh.SFTPError as exc:
            raise _refused(self.host, f"writing {self._what()}", exc) from None
        finally:
            await _settle(pending)

    async def commit(self) -> None:
        """Check size and digest, fsync, set the mode, and rename over the target."""
        assert self.file is not None
        start, host = self.start, self.host
        sha = self.digest.hexdigest()
        self.call.sha256 = sha
        if start.size and start.size != self.size:
            raise TransferMismatch(
                f"{host}: {self.size} bytes arrived, {start.size} were announced; nothing "
                "put in place",
                host,
            )
        if start.sha256 and start.sha256 != sha:
            raise TransferMismatch(
                f"{host}: the bytes' SHA-256 is {sha}, not the one announced; nothing put in place",
                host,
            )
        sftp = self.channel.client
        try:
            with contextlib.suppress(asyncssh.SFTPOpUnsupported):
                await self.file.fsync()
            await self.file.close()
            self.file = None
            await sftp.chmod(self.temp, self.mode)
        except asyncssh.SFTPError as exc:
            raise _refused(host, f"putting {self._what()} in place", exc) from None
        try:
            if start.create_only:
                await self._link()
            else:
                try:
                    await sftp.posix_rename(self.temp, self.target)
                except asyncssh.SFTPOpUnsupported:
                    await sftp.rename(self.temp, self.target)
        except (*_LOST, OSError) as exc:
            raise CommandAborted(
                f"{host}: SSH connection lost while {self._what()} was put in place; it may "
                f"be in place, or not ({type(exc).__name__})",
                host,
            ) from None
        except asyncssh.SFTPError as exc:
            raise _refused(host, f"putting {self._what()} in place", exc) from None

    async def _link(self) -> None:
        """create_only: a hard link fails if the target appeared meanwhile (no race)."""
        sftp = self.channel.client
        try:
            await sftp.link(self.temp, self.target)
        except asyncssh.SFTPOpUnsupported:
            if await sftp.exists(self.target):
                raise FileExists(f"{self.host}: {self._what()} exists", self.host) from None
            await sftp.rename(self.temp, self.target)
            return
        except asyncssh.SFTPError:
            if await sftp.exists(self.target):
                raise FileExists(
                    f"{self.host}: {self._what()} appeared meanwhile and create_only is set",
                    self.host,
                ) from None
            raise
        await sftp.remove(self.temp)

    async def discard(self) -> bool:
        """Close and remove the temporary file on this channel (bounded); whether done."""
        try:
            async with asyncio.timeout(CLEANUP_WITHIN):
                if self.file is not None:
                    with contextlib.suppress(asyncssh.Error, OSError):
                        await self.file.close()
                await self.remove(self.channel, self.temp)
        except (TimeoutError, asyncssh.Error, OSError):
            return False
        return True

    @staticmethod
    async def remove(channel: SFTPChannel, temp: str) -> None:
        """Remove a temporary file; one already gone (renamed, or never made) is fine."""
        with contextlib.suppress(asyncssh.SFTPNoSuchFile, asyncssh.SFTPNoSuchPath):
            async with asyncio.timeout(CLEANUP_WITHIN):
                await channel.client.remove(temp)
