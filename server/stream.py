"""Stream's machinery: the caller's messages in, the command's output out, and the end.

- `first_message()`: the `start`, within `[exec] stream_start_timeout`: a Stream that
  never starts must not hold an RPC slot.
- `StdinPump`: reads the caller's messages as they arrive. Signals, resizes and EOF act at
  once; stdin goes into a read-ahead buffer (at most STDIN_READ_AHEAD bytes) that a writer
  feeds to the channel as fast as the command reads. So a signal never waits behind stdin
  that the command is not reading. A failure on either side ends the call: it is handed
  to the output queue, whose reader (the handler) raises it.
- output goes to the caller as it arrives (`server.responses.send_output`), each write
  paced by gRPC.
- The end: after `exit`, the call ends at once when the caller can send nothing more that
  matters (it sent `close_stdin`, or half-closed); otherwise when it half-closes, or after
  LINGER seconds (a write into a finished call would hide the outcome as INTERNAL).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, Protocol

from scout.v1 import exec_pb2

from .audit import CallRecord
from .command import CommandSpec, RunningCommand
from .config import ExecSettings, HostConfig
from .errors import STARTED_KEY, InvalidRequest
from .launch import Bounds, Launcher
from .logs import REQUEST_ID_KEY
from .output import OutputQueue
from .requests import check_terminal_size, signal_name
from .responses import exit_status, send_output
from .rpc import MALFORMED, Context

STDIN_READ_AHEAD = 4 * 1024 * 1024  # stdin bytes read from the caller, not yet written
LINGER = 2.0  # after `exit`, how long a caller that may still write gets to half-close


async def first_message(
    requests: AsyncIterator[exec_pb2.StreamRequest], within: float
) -> exec_pb2.StreamRequest:
    """The `start` (or `attach`) message, which must come first and soon."""
    try:
        async with asyncio.timeout(within):
            first: Any = await anext(requests, None)
    except TimeoutError:
        raise InvalidRequest(f"Stream: no `start` message within {within:g}s of the call") from None
    if first is MALFORMED:
        raise InvalidRequest("Stream: the first message is not a valid StreamRequest")
    if first is None or first.WhichOneof("event") not in ("start", "attach"):
        raise InvalidRequest("Stream: the first message must be `start` (or `attach`)")
    message: exec_pb2.StreamRequest = first
    return message


class Failing(Protocol):
    """Where the pump hands a failure: the reader of the call's output raises it."""

    def fail(self, error: BaseException) -> None:
        """The call must end with error."""


class StdinPump:
    """The caller's later messages: stdin (read ahead, bounded), signals, resizes, EOF."""

    def __init__(
        self,
        command: RunningCommand,
        requests: AsyncIterator[exec_pb2.StreamRequest],
        queue: Failing,
        rate: float,
    ) -> None:
        self._command = command
        self._pace = Pace(rate)
        self._requests = requests
        self._queue = queue
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._room = asyncio.Event()
        self._room.set()
        self._more = asyncio.Event()
        self._eof = False  # EOF is asked for; sent once the chunks before it are written
        self.half_closed = False
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def caller_done(self) -> bool:
        """The caller will send nothing that matters after the command's end."""
        return self._eof or self.half_closed

    def start(self, *, initial: bool = True) -> None:
        """Write start's stdin (and EOF if asked) when `initial` (the caller that started
        the command; an attach does not send them again), then read the caller's messages."""
        spec = self._command.spec
        if initial and spec.stdin:
            self._chunks.append(spec.stdin)
            self._buffered += len(spec.stdin)
        if initial and spec.close_stdin:
            self._eof = True
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read()), loop.create_task(self._write())]

    async def _read(self) -> None:
        """Act on each message as it comes; stdin waits only for read-ahead room."""
        try:
            async for msg in self._requests:
                await self._pace.wait()
                await self._handle(msg)
            self.half_closed = True
            self._close_stdin()
        except asyncio.CancelledError:
            raise
        except InvalidRequest as exc:  # the command had started: it is being stopped
            self._queue.fail(
                InvalidRequest(
                    f"{exc.message}; the command had started and has been stopped",
                    exc.host,
                    started=True,
                )
            )
        except BaseException as exc:  # handed to the handler, which maps it
            self._queue.fail(exc)

    async def _handle(self, msg: Any) -> None:
        """One message after `start`."""
        if msg is MALFORMED:
            raise InvalidRequest("Stream: a message is not a valid StreamRequest")
        event = msg.WhichOneof("event")
        if event == "stdin":
            await self._put(msg.stdin)
        elif event == "signal":
            self._command.signal(signal_name(msg.signal))
        elif event == "resize":
            self._command.resize(*check_terminal_size(msg.resize, "resize"))
        elif event == "close_stdin":
            self._close_stdin()
        elif event in ("start", "attach"):
            raise InvalidRequest(f"Stream: `{event}` may only be the first message")
        else:
            raise InvalidRequest("Stream: a message must carry an event")

    async def _put(self, data: bytes) -> None:
        """Queue stdin; past the read-ahead bound, wait until the command has read some."""
        if self._eof or not data:
            return  # stdin after EOF is dropped, as a closed pipe would
        while self._buffered >= STDIN_READ_AHEAD:
            self._room.clear()
            await self._room.wait()
        self._chunks.append(data)
        self._buffered += len(data)
        self._more.set()

    def _close_stdin(self) -> None:
        self._eof = True
        self._more.set()

    async def _write(self) -> None:
        """Feed queued stdin to the channel as the command reads it; EOF after the last."""
        command = self._command
        try:
            while True:
                while not self._chunks:
                    if self._eof:
                        command.close_stdin()
                        return
                    self._more.clear()
                    await self._more.wait()
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                self._room.set()
                await command.write(chunk)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the handler, which maps it
            self._queue.fail(exc)

    async def finish(self) -> None:
        """After `exit`: end now if the caller is done, else let it half-close (bounded)."""
        if not self.caller_done and self._tasks:
            await asyncio.wait({self._tasks[0]}, timeout=LINGER)
        await self.stop()

    async def stop(self) -> None:
        """Stop reading and writing (the command has ended or is being stopped)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class Pace:
    """At most `rate` messages a second on one Stream, with a burst of one second's worth.

    Past it, the reader waits before taking the next message, so gRPC's flow control
    slows the caller down: a flood of signals or resizes costs a bounded amount of CPU.
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._tokens = rate
        self._last = time.monotonic()

    async def wait(self) -> None:
        """Take one message's token, waiting for it if the bucket is empty."""
        now = time.monotonic()
        self._tokens = min(self.rate, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1:
            await asyncio.sleep((1 - self._tokens) / self.rate)
            self._tokens, self._last = 1.0, time.monotonic()
        self._tokens -= 1


async def run_stream(
    launcher: Launcher,
    host: HostConfig,
    spec: CommandSpec,
    *,
    bounds: Bounds,
    requests: AsyncIterator[exec_pb2.StreamRequest],
    context: Context,
    call: CallRecord,
    text: bool,
    limits: ExecSettings,
) -> None:
    """Start the command; pass messages in and output out; end with `exit`."""
    queue = OutputQueue(spec.max_output_bytes)
    stdin: StdinPump | None = None
    try:
        async with launcher.run(host, spec, queue, bounds, call) as run:
            command = run.command
            # Response headers mean "the command started" (and say so: x-scout-started): a
            # client waits for them before it writes stdin, so a request that fails earlier
            # never sees a write race the error (grpc would then report INTERNAL instead of
            # the real status).
            await context.send_initial_metadata(
                ((STARTED_KEY, "true"), (REQUEST_ID_KEY, call.request_id))
            )
            stdin = StdinPump(command, requests, queue, limits.stream_messages_per_second)
            stdin.start()
            try:
                await run.bounded(send_output(queue, text, exec_pb2.StreamResponse, context.write))
            except BaseException:
                await stdin.stop()  # before the command is stopped
                raise
        info = run.outcome()  # ABORTED here when the channel closed with no status
        await context.write(exit_status(info, queue.stdout, queue.stderr))
        await stdin.finish()
    except BaseException:
        if stdin is not None:  # every way out stops reading the caller's messages
            await stdin.stop()
        raise
