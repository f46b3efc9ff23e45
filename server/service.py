"""The ExecService servicer: validate, bound, run through the pool, map errors once.

The servicer is thin. Expected failures are ScoutErrors and become the status codes of
DESIGN.md's table in `_status_of`, the one place that mapping lives; anything else is a
bug: logged with its traceback, answered with a generic INTERNAL.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncssh
import grpc
from google.protobuf import duration_pb2

from scout.v1 import exec_pb2, exec_pb2_grpc

from .command import (
    STDOUT,
    CappedBuffer,
    CommandSpec,
    ExitInfo,
    OutputQueue,
    RunningCommand,
    open_command,
)
from .config import Config
from .errors import (
    CommandAborted,
    CommandTimeout,
    HostNotFound,
    HostRejected,
    HostUnavailable,
    InvalidRequest,
    PoolExhausted,
    ScoutError,
)
from .pool import Pool
from .requests import check_execute, signal_name, timeout_of

log = logging.getLogger(__name__)

_DEADLINE_MARGIN = 0.05  # stop the command a little before the caller's deadline
_LINGER = 2.0  # after `exit`, how long a Stream waits for the caller to half-close
R = TypeVar("R")

_STATUS: dict[type[ScoutError], grpc.StatusCode] = {
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    HostNotFound: grpc.StatusCode.NOT_FOUND,
    HostRejected: grpc.StatusCode.FAILED_PRECONDITION,
    HostUnavailable: grpc.StatusCode.UNAVAILABLE,
    CommandAborted: grpc.StatusCode.ABORTED,
    PoolExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    CommandTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def _status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and message for an exception: the only error mapping in the server."""
    if isinstance(exc, ScoutError):
        for cls in type(exc).__mro__:
            if cls in _STATUS:
                return _STATUS[cls], exc.message
    return grpc.StatusCode.INTERNAL, "internal error (logged on the server)"


@dataclass
class RequestStats:
    """Counts of finished RPCs by method and status code."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    in_flight: int = 0

    def done(self, method: str, code: grpc.StatusCode) -> None:
        """Count one finished RPC."""
        key = (method, code.name)
        self.counts[key] = self.counts.get(key, 0) + 1


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(max(seconds, 0) * 1e9))
    return d


class ExecService(exec_pb2_grpc.ExecServiceServicer):
    """Execute and Stream over the shared pool."""

    def __init__(self, config: Config, pool: Pool[asyncssh.SSHClientConnection]) -> None:
        self.config = config
        self.pool = pool
        self.stats = RequestStats()

    def _deadline(self, request: exec_pb2.ExecuteRequest, context: Any) -> float:
        """The earlier of the request's timeout and the RPC deadline (monotonic clock)."""
        bound = timeout_of(self.config, request)
        remaining = context.time_remaining()
        if remaining is not None:
            bound = min(bound, max(remaining - _DEADLINE_MARGIN, 0.0))
        return time.monotonic() + bound

    async def _guard(self, method: str, context: Any, body: Callable[[], Awaitable[R]]) -> R:
        """Run body; count it; turn failures into statuses."""
        self.stats.in_flight += 1
        code = grpc.StatusCode.OK
        try:
            return await body()
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            code, message = _status_of(exc)
            if code is grpc.StatusCode.INTERNAL:
                log.exception("%s failed", method)
            else:
                log.info("%s: %s: %s", method, code.name, message)
        finally:
            self.stats.in_flight -= 1
            self.stats.done(method, code)
        await context.abort(code, message)
        raise AssertionError("context.abort returns only by raising")

    async def Execute(
        self, request: exec_pb2.ExecuteRequest, context: Any
    ) -> exec_pb2.ExecuteResponse:
        """Run a command, wait for it, return its capped output and exit status."""
        return await self._guard("Execute", context, lambda: self._execute(request, context))

    async def _execute(
        self, request: exec_pb2.ExecuteRequest, context: Any
    ) -> exec_pb2.ExecuteResponse:
        spec = check_execute(self.config, request)
        deadline = self._deadline(request, context)
        out = CappedBuffer(spec.max_output_bytes)
        err = CappedBuffer(spec.max_output_bytes)

        def sink(kind: int, data: bytes) -> None:
            (out if kind == STDOUT else err).feed(data)

        host = self.config.hosts[spec.host]
        async with self.pool.session(
            host, lambda conn: open_command(conn, spec, sink), deadline
        ) as run:

            async def feed_and_wait() -> ExitInfo:
                await run.write(spec.stdin)
                run.close_stdin()
                return await run.wait()

            info = await _bounded(run, spec, deadline, feed_and_wait())
        stdout, stderr = out.value(), err.value()
        response = exec_pb2.ExecuteResponse(
            stdout=stdout,
            stderr=stderr,
            exit_code=info.exit_code,
            signal=info.signal,
            core_dumped=info.core_dumped,
            stdout_truncated=out.truncated,
            stderr_truncated=err.truncated,
            stdout_bytes=out.total,
            stderr_bytes=err.total,
            duration=_duration(info.ended - info.started),
        )
        if request.text:
            response.stdout_text = stdout.decode("utf-8", "replace")
            response.stderr_text = stderr.decode("utf-8", "replace")
        return response

    async def Stream(
        self, request_iterator: AsyncIterator[exec_pb2.StreamRequest], context: Any
    ) -> None:
        """Run a command, send its output as it comes, pass stdin and signals through."""
        await self._guard("Stream", context, lambda: self._stream(request_iterator, context))

    async def _stream(self, requests: AsyncIterator[exec_pb2.StreamRequest], context: Any) -> None:
        first = await anext(requests, None)
        if first is None or first.WhichOneof("event") != "start":
            raise InvalidRequest("the first Stream message must be `start`")
        spec = check_execute(self.config, first.start, stream=True)
        deadline = self._deadline(first.start, context)
        queue = OutputQueue(spec.max_output_bytes)
        host = self.config.hosts[spec.host]
        async with self.pool.session(
            host, lambda conn: open_command(conn, spec, queue.feed), deadline
        ) as run:
            queue.attach(run.chan)
            run.session.done.add_done_callback(lambda _: queue.close())
            # Response headers now mean "the command started": a client waits for them
            # before it writes stdin, so a request that fails earlier never sees a write
            # race the error (grpc would then report INTERNAL instead of the real status).
            await context.send_initial_metadata(())
            feeder = _StdinFeeder(run, requests)
            feeder.start()
            try:
                info = await _bounded(
                    run, spec, deadline, self._pump(queue, run, context, first.start.text)
                )
            except BaseException:
                await feeder.stop()
                raise
            if feeder.error is not None:
                await feeder.stop()
                raise feeder.error
        await context.write(
            exec_pb2.StreamResponse(
                exit=exec_pb2.ExitStatus(
                    exit_code=info.exit_code,
                    signal=info.signal,
                    core_dumped=info.core_dumped,
                    stdout_bytes=queue.stdout.total,
                    stderr_bytes=queue.stderr.total,
                    stdout_truncated=queue.stdout.truncated,
                    stderr_truncated=queue.stderr.truncated,
                    duration=_duration(info.ended - info.started),
                )
            )
        )
        # The RPC ends when the caller half-closes (the client library does on `exit`),
        # or after a short linger: a caller still writing stdin when the command ended
        # must not write into a finished call (grpc then hides the outcome as INTERNAL).
        await feeder.finish(_LINGER)

    async def _pump(
        self, queue: OutputQueue, run: RunningCommand, context: Any, text: bool
    ) -> ExitInfo:
        """Write output to the caller as it arrives; each write waits for flow control."""
        decoders = {k: codecs.getincrementaldecoder("utf-8")("replace") for k in (1, 2)}
        while (item := await queue.get()) is not None:
            kind, data = item
            msg = (
                exec_pb2.StreamResponse(stdout=data)
                if kind == STDOUT
                else exec_pb2.StreamResponse(stderr=data)
            )
            if text:
                msg.text = decoders[kind].decode(data)
            await context.write(msg)
        if text:
            for kind, decoder in decoders.items():
                if rest := decoder.decode(b"", final=True):
                    msg = (
                        exec_pb2.StreamResponse(stdout=b"", text=rest)
                        if kind == STDOUT
                        else exec_pb2.StreamResponse(stderr=b"", text=rest)
                    )
                    await context.write(msg)
        return await run.wait()


class _StdinFeeder:
    """Reads a Stream's later messages: stdin, signals, resizes; half-close is EOF."""

    def __init__(
        self, run: RunningCommand, requests: AsyncIterator[exec_pb2.StreamRequest]
    ) -> None:
        self._run = run
        self._requests = requests
        self._task: asyncio.Task[None] | None = None
        self.error: ScoutError | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._feed())

    async def _feed(self) -> None:
        run = self._run
        await run.write(run.spec.stdin)
        if run.spec.close_stdin:
            run.close_stdin()
        try:
            async for msg in self._requests:
                event = msg.WhichOneof("event")
                if event == "stdin":
                    await run.write(msg.stdin)
                elif event == "signal":
                    run.signal(signal_name(msg.signal))
                elif event == "resize":
                    run.resize(msg.resize.columns, msg.resize.rows)
                elif event == "close_stdin":
                    run.close_stdin()
                elif event == "start":
                    raise InvalidRequest("`start` may only be the first Stream message")
                else:
                    raise InvalidRequest("a Stream message must carry an event")
        except ScoutError as exc:
            self.error = exc
            await run.stop()
            return
        run.close_stdin()

    async def finish(self, linger: float) -> None:
        """Let the caller end its request stream (bounded), then stop reading."""
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=linger)
        await self.stop()

    async def stop(self) -> None:
        """Stop reading requests (the command has ended or is being stopped)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def _bounded(
    run: RunningCommand, spec: CommandSpec, deadline: float, work: Awaitable[ExitInfo]
) -> ExitInfo:
    """Await work until the deadline; on expiry or cancellation, stop the remote command."""
    try:
        async with asyncio.timeout(max(deadline - time.monotonic(), 0)):
            return await work
    except TimeoutError:
        await asyncio.shield(run.stop())
        raise CommandTimeout(
            f"{spec.host}: the command ran past its deadline and was stopped", spec.host
        ) from None
    except asyncio.CancelledError:
        await asyncio.shield(run.stop())
        raise
