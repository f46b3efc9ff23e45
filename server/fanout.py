"""ExecuteMany: one command on many hosts, bounded, with results as they come.

The targets are the union of the request's names and globs and its selector's matches,
among the hosts the caller may use (`server.targets`, as ListHosts); a plain name the
inventory lacks is a target too, answered NOT_FOUND (PERMISSION_DENIED outside the
caller's hosts). A malformed request fails the whole call before any host. At most
`max_parallel` hosts run at once (a semaphore in front of the pool, so one fan-out
never holds more channels than that, and other callers' commands are not starved: the
pool's budget still serves them in order). Each host is checked against the caller's
policy as it is when that host starts: a reload that removed or narrowed the caller
starts no new command the new policy would refuse. Each host's outcome is one message, in
completion order; a host that cannot run the command carries its own status (and
whether the command may have started there) and the stream goes on. One task writes
to the caller; cancelling the RPC, or its deadline, cancels every host task, which
stops its command (server.launch) and starts no new one; each stopped host's audit line
says so (CANCELLED, DEADLINE_EXCEEDED, or ABORTED when scout shuts down). With
`max_failures`, a host whose turn comes after that many hosts failed (`failed`) is not
started: it gets ABORTED with `started` false, and no audit line (nothing was tried).

With `stream_output`, each running host has an OutputQueue (at most ~2 MiB before it
pauses its channel) and the chunks go through one bounded queue to the writer: a slow
reader slows the commands down, and memory stays near max_parallel x 2 MiB.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc

from scout.v1 import exec_pb2

from . import targets as targets_
from .audit import CallRecord
from .command import CommandSpec, RunningCommand
from .config import HostConfig
from .errors import HostNotFound, InvalidRequest
from .outcomes import Outcome
from .output import STDERR, STDOUT, OutputQueue
from .replay import Entry
from .requests import command_spec
from .responses import execute_response, send_output
from .rpc import Context, cancel_code, failure, host_status, record_end

if TYPE_CHECKING:
    from .service import ExecService

log = logging.getLogger(__name__)

QUEUED_MESSAGES = 64  # messages waiting for the writer, across all hosts


def failed(message: exec_pb2.ExecuteManyResponse) -> bool:
    """Whether a host's outcome counts against max_failures: an `error` (it could not run,
    was lost, or ran past its timeout), or a command that exited non-zero or by a signal."""
    if message.WhichOneof("event") == "error":
        return True
    return message.result.exit_code != 0 or bool(message.result.signal)


@dataclass(eq=False)
class FanOut:
    """One ExecuteMany call."""

    service: ExecService
    request: exec_pb2.ExecuteManyRequest
    context: Context
    call: CallRecord
    out: asyncio.Queue[exec_pb2.ExecuteManyResponse] = field(
        default_factory=lambda: asyncio.Queue(QUEUED_MESSAGES)
    )
    failures: int = 0  # hosts failed so far (failed()), against request.max_failures

    def targets(self) -> list[str]:
        """The hosts to run on, checked as a whole (the RPC fails only here): a malformed
        request is INVALID_ARGUMENT before any host is tried, and globs and the selector
        pick only among the hosts the caller may use (`server.targets`)."""
        request, service = self.request, self.service
        settings = service.config.fanout
        if request.request.host:
            raise InvalidRequest(
                "request.host: must be empty for ExecuteMany (targets are hosts and selector)"
            )
        if not request.hosts and not request.selector:
            raise InvalidRequest("hosts or selector: at least one target is required")
        targets_.check_patterns(request.hosts, settings.max_targets)
        selector = targets_.parse_selector(request.selector)
        try:
            command_spec(service.config, request.request, "", extra_env=service.exported(self.call))
        except InvalidRequest as exc:
            raise InvalidRequest(f"request.{exc.message}") from None
        who = self.call.who
        assert who is not None
        found, named = targets_.pick(
            service.config.hosts,
            lambda name: service.gate.may_use(who, name),
            request.hosts,
            selector,
        )
        targets = found + named
        if not targets:
            raise HostNotFound(
                "no host in the inventory matches the hosts and selector (among the hosts "
                "this caller may use)"
            )
        if len(targets) > settings.max_targets:
            raise InvalidRequest(
                f"{len(targets)} targets: at most {settings.max_targets} in one ExecuteMany"
            )
        return targets

    async def run(self, targets: list[str]) -> None:
        """Run every target, max_parallel at once; write each outcome as it comes."""
        settings = self.service.config.fanout
        asked = self.request.max_parallel or settings.default_parallel
        parallel = min(asked, settings.max_parallel)
        slots = asyncio.Semaphore(parallel)
        tasks = [asyncio.ensure_future(self._host(name, slots)) for name in targets]
        try:
            for _ in targets:
                while True:
                    message = await self.out.get()
                    await self.context.write(message)
                    if message.WhichOneof("event") != "output":
                        break
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _host(self, name: str, slots: asyncio.Semaphore) -> None:
        """One target: run the command (when a slot frees) and queue its outcome."""
        async with slots:
            limit = self.request.max_failures
            if limit and self.failures >= limit:  # start no new host
                message = exec_pb2.ExecuteManyResponse(host=name, started=False)
                text = f"not started: {self.failures} failures (max_failures {limit})"
                message.error.CopyFrom(host_status(grpc.StatusCode.ABORTED, text))
                await self.out.put(message)
                return
            call = self.call
            record = CallRecord(
                call.method, call.peer, call.request_id, caller=call.caller, who=call.who
            )
            began = time.monotonic()
            command = exec_pb2.ExecuteRequest()
            command.CopyFrom(self.request.request)
            command.host = name
            message = exec_pb2.ExecuteManyResponse(host=name)
            code = grpc.StatusCode.OK
            try:
                message.result.CopyFrom(await self._execute(command, record))
            except asyncio.CancelledError:  # the caller left, or the server is stopping
                code = cancel_code(self.context, stopping=self.service.stopping)
                raise
            except Exception as exc:
                code, whole, text = failure(self.service.gate, record, exc)
                if code is grpc.StatusCode.INTERNAL:
                    log.exception("ExecuteMany on %s failed", name)
                elif text != whole:
                    log.info("ExecuteMany on %s: %s", name, whole)
                message.error.CopyFrom(host_status(code, text))
                message.started = record.started
            finally:
                record_end(self.service, record, code, began)
            await self.out.put(message)
            self.failures += failed(message)  # before the slot frees for the next host

    async def _execute(
        self, command: exec_pb2.ExecuteRequest, record: CallRecord
    ) -> exec_pb2.ExecuteResponse:
        """Admit and run one host's command: captured, or streamed in chunks."""
        service = self.service
        assert record.who is not None
        record.describe(command)  # a host the reload refuses has its audit line too
        record.authorized = True
        record.who = service.gate.current(record.who)  # a reload since the call began
        host, spec = service.admit(record, command, stream=False)
        remaining = self.context.time_remaining()
        if command.idempotency_key:  # each host its own key: KEY/HOST
            key = f"{command.idempotency_key}/{host.name}"
            if self.request.stream_output:
                return await self._keyed_output(host, spec, command, key, record)
            return await service.execute_keyed(
                host, spec, command, key, rpc_remaining=remaining, call=record
            )
        if not self.request.stream_output:
            return await service.execute_once(host, spec, command, remaining, record)
        bounds = service.bounds(spec, command, remaining, stream=False)
        queue = OutputQueue(spec.max_output_bytes)
        async with service.launcher.run(host, spec, queue, bounds, record) as run:
            await run.bounded(self._forward(run.command, queue, command.text))
        return execute_response(run.outcome(), queue.stdout, queue.stderr, text=False)

    async def _keyed_output(
        self,
        host: HostConfig,
        spec: CommandSpec,
        command: exec_pb2.ExecuteRequest,
        key: str,
        record: CallRecord,
    ) -> exec_pb2.ExecuteResponse:
        """A keyed host with stream_output: its output as it comes (all of it, for a
        retry that joins a run in progress), then the answer; a recorded outcome has
        its output in the answer only."""
        service, durable = self.service, self.service.durable
        rpc_remaining = self.context.time_remaining()

        bounds = service.keyed_bounds(spec, command, rpc_remaining, stream=False)
        found = await durable.begin(
            record, host, spec, command, key=key, bounds=bounds, stream=False
        )
        if isinstance(found, Outcome):
            record.replayed = True
            return found.answer(text=command.text)
        record.replayed = found.starter is not record
        durable.join(found)
        reader = found.log.reader(0, 0)
        decoders = {k: codecs.getincrementaldecoder("utf-8")("replace") for k in (STDOUT, STDERR)}
        try:
            while (items := await reader.read()) is not None:
                for item in items:
                    if isinstance(item, Entry):
                        chunk = (
                            exec_pb2.OutputChunk(stdout=item.data)
                            if item.kind == STDOUT
                            else exec_pb2.OutputChunk(stderr=item.data)
                        )
                        if command.text:
                            chunk.text = decoders[item.kind].decode(item.data)
                        await self.out.put(
                            exec_pb2.ExecuteManyResponse(host=host.name, output=chunk)
                        )
            outcome = await asyncio.shield(found.done)
        finally:
            reader.leave()
            durable.leave(found)
        answer = outcome.answer(text=False)
        answer.ClearField("stdout")  # it went out as chunks, as without a key
        answer.ClearField("stderr")
        return answer

    async def _forward(self, command: RunningCommand, queue: OutputQueue, text: bool) -> None:
        """Feed stdin, then pass the host's output, chunk by chunk, to the writer (waiting
        while it is behind)."""
        await command.write(command.spec.stdin)
        command.close_stdin()
        name = command.spec.host

        async def send(chunk: exec_pb2.OutputChunk) -> None:
            await self.out.put(exec_pb2.ExecuteManyResponse(host=name, output=chunk))

        await send_output(queue, text, exec_pb2.OutputChunk, send)
