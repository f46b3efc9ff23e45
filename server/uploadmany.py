"""UploadMany: one file, sent once by the caller, written to many hosts.

The targets are picked as ExecuteMany's (server.fanout), with one difference that keeps
the inventory private: a glob or a selector picks only hosts the caller may use, so a
pattern cannot enumerate hidden hosts; a plain name the caller may not use is answered
PERMISSION_DENIED whether or not it exists. The content is spooled first (server.spool,
bounded by `[files] max_file_bytes`) and checked against `size` and `sha256` before any
host is written; then at most `max_parallel` hosts are written at once, each through
the same upload as Upload's (server.files: temporary name, rename at the end), and each
host's outcome is one message, in completion order, with its own status when it failed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from scout.v1 import exec_pb2

from . import inventory
from . import selector as selectors
from .audit import CallRecord, capped
from .errors import HostNotFound, InvalidRequest, ScoutError, TransferMismatch
from .files import DRAIN_WITHIN, check_start, chunks, describe_file, first_start
from .pathpolicy import PathError, normalise
from .rpc import Context, drain, failure, host_status, record_end
from .spool import Spool, spool_dir

if TYPE_CHECKING:
    from .service import ExecService

log = logging.getLogger(__name__)


@dataclass(eq=False)
class UploadFanOut:
    """One UploadMany call."""

    service: ExecService
    requests: AsyncIterator[Any]
    context: Context
    call: CallRecord
    out: asyncio.Queue[exec_pb2.UploadManyResponse] = field(default_factory=asyncio.Queue)

    def targets(self, start: exec_pb2.UploadManyStart) -> list[str]:
        """The hosts to write, checked as a whole (the RPC fails only here)."""
        config, who = self.service.config, self.call.who
        assert who is not None
        settings = config.fanout
        if start.upload.host:
            raise InvalidRequest("upload.host: must be empty (targets are hosts and selector)")
        if not start.hosts and not start.selector:
            raise InvalidRequest("hosts or selector: at least one target is required")
        if len(start.hosts) > settings.max_targets:
            raise InvalidRequest(f"hosts: at most {settings.max_targets} names or patterns")
        selector = selectors.parse(start.selector) if start.selector else None
        found, missing = inventory.pick(config.hosts, start.hosts, selector)
        named = {name for name in start.hosts if not inventory.is_pattern(name)}
        gate = self.service.gate
        targets = [n for n in found if n in named or gate.may_use(who, n)] + missing
        if not targets:
            raise HostNotFound("no host the caller may use matches the hosts and selector")
        if len(targets) > settings.max_targets:
            raise InvalidRequest(
                f"{len(targets)} targets: at most {settings.max_targets} in one UploadMany"
            )
        return targets

    async def run(self) -> None:
        """Spool the content, then write it to every target, max_parallel at once."""
        service = self.service
        config = service.config
        start = await first_start(self.requests, config.exec.stream_start_timeout, "UploadMany")
        upload = start.upload
        self.call.path = capped(upload.path, 4096)
        self.call.direction = "upload"  # the call's own audit line: what was spooled
        self.call.authorized = True
        try:
            targets = self.targets(start)
            check_start(upload, config.files.max_file_bytes)
            normalise(upload.path)  # a bad path fails the call, not each host
            service.audit.ready()
        except PathError as exc:
            await drain(self.requests, DRAIN_WITHIN)
            raise InvalidRequest(str(exc)) from None
        except ScoutError:
            await drain(self.requests, DRAIN_WITHIN)  # the caller then hears this status
            raise
        with Spool(spool_dir(config.files.spool_dir), config.files.max_file_bytes) as spool:
            try:
                async for chunk in chunks(self.requests):
                    spool.write(chunk)
            except ScoutError:
                await drain(self.requests, DRAIN_WITHIN)  # the caller then hears this status
                raise
            sha = spool.digest.hexdigest()
            self.call.file_bytes, self.call.sha256 = spool.size, sha
            if (upload.size and upload.size != spool.size) or (
                upload.sha256 and upload.sha256 != sha
            ):
                raise TransferMismatch(
                    f"the {spool.size} bytes received are not the size or SHA-256 announced; "
                    "no host was written"
                )
            fixed = exec_pb2.UploadStart()
            fixed.CopyFrom(upload)
            fixed.size, fixed.sha256 = spool.size, sha
            asked = start.max_parallel or config.fanout.default_parallel
            slots = asyncio.Semaphore(min(asked, config.fanout.max_parallel))
            tasks = [
                asyncio.ensure_future(self._host(name, fixed, spool, slots)) for name in targets
            ]
            try:
                for _ in targets:
                    await self.context.write(await self.out.get())
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _host(
        self, name: str, start: exec_pb2.UploadStart, spool: Spool, slots: asyncio.Semaphore
    ) -> None:
        """One target: write the file (when a slot frees) and queue its outcome."""
        async with slots:
            service, call = self.service, self.call
            files = service.files
            record = CallRecord(
                call.method, call.peer, call.request_id, caller=call.caller, who=call.who
            )
            describe_file(record, name, start.path, "upload")
            code = grpc.StatusCode.CANCELLED  # unless it ends otherwise
            began = time.monotonic()
            message = exec_pb2.UploadManyResponse(host=name)
            try:
                host, clean = files.admit(record, name, start.path, "upload")
                assert call.who is not None
                written = await files.upload(
                    host,
                    clean,
                    start,
                    spool.chunks(service.config.files.chunk_bytes),
                    who=call.who,
                    call=record,
                    until=files.until(self.context.time_remaining()),
                )
                message.result.CopyFrom(written.response())
                code = grpc.StatusCode.OK
            except Exception as exc:
                code, _, text = failure(service.gate, record, exc)
                if code is grpc.StatusCode.INTERNAL:
                    log.exception("UploadMany to %s failed", name)
                message.error.CopyFrom(host_status(code, text))
            finally:
                record_end(service, record, code, began)
            await self.out.put(message)
