"""The calls a Client starts and the caller holds: Stream (`StreamCall`) and ExecuteMany
(`ExecuteManyCall`), each owned by an `async with` block, and the stub they share.

client/aio.py makes them (`Client.stream`, `Client.execute_many`); client/splitfanout.py
extends ExecuteManyCall. Every gRPC error leaves them as a `ScoutError` made by
`from_rpc_error`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from signal import Signals
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

import grpc

from scout.v1 import exec_pb2, exec_pb2_grpc

from .errors import KeyNotFound, ScoutError, from_rpc_error, is_replayed
from .fleet import HostEvent, HostOutput, host_event_from_response
from .results import Event, Exit, ExitStatus, Lost, Result, Stderr, Stdout, event_from_response
from .retry import Outage, RetryPolicy, with_retries

if TYPE_CHECKING:
    from .aio import Client

__all__ = ["ExecuteManyCall", "StreamCall"]


def _exec_stub(channel: grpc.aio.Channel) -> Any:
    """Make the generated stub, which has no type hints (no _grpc.pyi is generated)."""
    return exec_pb2_grpc.ExecServiceStub(channel)  # type: ignore[no-untyped-call]


RequestT = TypeVar("RequestT")


class _OwnedCall(Generic[RequestT]):
    """An RPC that `async with` owns: leaving the block cancels it if it still runs, and
    the server then stops what it started (signal, then channel close; no new command)."""

    def __init__(
        self,
        client: Client,
        request: RequestT,
        deadline: float | None,
        metadata: tuple[tuple[str, str], ...],
    ) -> None:
        """Hold what the call needs; nothing is sent yet."""
        self._client = client
        self._request = request
        self._deadline = deadline
        self._metadata = metadata
        self._call: Any = None
        self._cancelled = False

    async def __aexit__(self, *exc_info: object) -> None:
        """Cancel the RPC if it is still running."""
        self.cancel()

    def cancel(self) -> None:
        """Cancel the RPC; the server stops the command(s) it runs."""
        if self._call is not None and not self._call.done():
            self._cancelled = True
            self._call.cancel()


class StreamCall(_OwnedCall[exec_pb2.ExecuteRequest]):
    """One running Stream RPC: write stdin, send signals, and iterate output events.

    `close_stdin()` sends EOF to the command (the `close_stdin` message); the stream
    stays open, so signals and resizes can still follow. Writes, signals and
    resizes after the command ended are dropped, as on a closed pipe; after the
    RPC failed they raise its error.

    With an idempotency key and the client's RetryPolicy, a call whose connection
    drops (client/retry.py says which failures) is made again: with `attach` and the
    byte offsets of what was read so far once the command had started, else with the
    same `start` (same key: it cannot run twice). The events read never repeat a byte
    nor skip one without a `Lost` event: overlap is dropped by the chunks' offsets.
    Input written while the connection was down is lost (as on a broken pipe); an EOF
    sent by close_stdin() is sent again after a re-attach.
    """

    def __init__(
        self,
        client: Client,
        host: str,
        request: exec_pb2.ExecuteRequest,
        deadline: float | None,
        metadata: tuple[tuple[str, str], ...],
        *,
        retry: RetryPolicy | None = None,
        attach: exec_pb2.Attach | None = None,
    ) -> None:
        """Hold what the start message needs; nothing is sent until `async with`.

        attach: join the command with attach.idempotency_key instead of starting one.
        """
        super().__init__(client, request, deadline, metadata)
        self.host = host
        self._write_lock = asyncio.Lock()
        self._stdin_closed = request.close_stdin  # EOF already in the start message
        self._write_failed = False  # a write found the call ended (see _send)
        self._start_lost = False  # ...and it was the start message: nothing ran
        # A response message arrived, so the response headers did: the command started.
        # (Empty headers cannot be told from a trailers-only failure; the server's
        # x-scout-started mark covers the time before the first message.)
        self._responded = False
        self._exit: ExitStatus | None = None
        self._attach = attach
        self._retry = retry if request.idempotency_key else None  # never twice without a key
        # The next byte of each stream we want: what the caller has read so far.
        self._offsets = {
            "stdout": attach.stdout_offset if attach is not None else 0,
            "stderr": attach.stderr_offset if attach is not None else 0,
        }
        self._pending: collections.deque[Event] = collections.deque()
        self._outage: Outage | None = None  # backoff state
        self._stopping = False  # cancel() was called: no reconnect
        self._by_offset = False  # this call's chunks are placed by their offsets
        self._replayed = False
        self.reconnects = 0  # calls made again after a dropped connection

    def __repr__(self) -> str:
        """Show the host and how far the call got, for logs."""
        if self._call is None:
            state = "not started"
        elif self._exit is not None:
            state = f"exited code={self._exit.exit_code} signal={self._exit.signal!r}"
        else:
            state = "done" if self._call.done() else "running"
        return f"<StreamCall host={self.host!r} {state}>"

    @property
    def idempotency_key(self) -> str:
        """The key the command runs under ("" without one), for a later attach."""
        return str(self._request.idempotency_key)

    @property
    def offsets(self) -> tuple[int, int]:
        """(stdout, stderr): the bytes of each stream read so far (Lost ones counted),
        which is where an attach resumes."""
        return self._offsets["stdout"], self._offsets["stderr"]

    @property
    def replayed(self) -> bool:
        """Whether the server said x-scout-replayed: the command had ended before this
        call, and its recorded outcome was sent (known once the iteration ended)."""
        return self._replayed

    @property
    def exit_status(self) -> ExitStatus | None:
        """Return how the command ended, once the Exit event has been read."""
        return self._exit

    @property
    def stdin_closed(self) -> bool:
        """Say whether close_stdin() ran, after which no more stdin can be written."""
        return self._stdin_closed

    def cancel(self) -> None:
        """Cancel the RPC (the server stops the command, or keeps it for its
        detach_grace); no re-attach follows."""
        self._stopping = True
        super().cancel()

    async def __aenter__(self) -> Self:
        """Start the RPC and send the start (or attach) message."""
        if self._call is not None:
            raise RuntimeError("a stream runs once; call client.stream(...) again")
        if self._retry is None:
            await self._open()
        else:
            await with_retries(self._retry, self._open, stop=self._no_more)
        return self

    def _no_more(self) -> bool:
        """Whether nothing may be sent again: cancelled, or the client closed."""
        return self._stopping or self._client._stopped()

    def _first_message(self) -> exec_pb2.StreamRequest:
        """`attach` with our offsets once the command is known to run (or when asked
        to attach), else `start`."""
        if self._attach is None and not self._responded:
            return exec_pb2.StreamRequest(start=self._request)
        stdout, stderr = self.offsets
        attach = exec_pb2.Attach(
            idempotency_key=self._request.idempotency_key,
            host=self._attach.host if self._attach is not None else self.host,
            stdout_offset=stdout,
            stderr_offset=stderr,
        )
        return exec_pb2.StreamRequest(attach=attach)

    async def _open(self) -> None:
        """Make the RPC and send its first message; raise why when it failed."""
        stub = _exec_stub(await self._client._connected(self._deadline, self.host))
        self._call = stub.Stream(timeout=self._deadline, metadata=self._metadata)
        self._write_failed = self._start_lost = False
        first = self._first_message()
        self._by_offset = first.HasField("attach")
        try:
            await self._send(first)
        except BaseException:
            self._call.cancel()
            raise
        if self._start_lost:
            raise await self._lost_start_reason()
        if first.HasField("attach") and self._stdin_closed and not self._request.close_stdin:
            # close_stdin() was a message of its own, which may have been lost with the old
            # connection (EOF in the start message was not: the command started with it).
            await self._send(exec_pb2.StreamRequest(close_stdin=True))

    async def _lost_start_reason(self) -> ScoutError:
        """Why the server ended the call before it read the start message, which grpc then
        could not send (and reports INTERNAL in place of the server's answer). Nothing ran.

        Such an answer comes from scout's door (identity, max_in_flight, load), decided
        on the headers alone; ListHosts passes the same door with its request in the same
        message as its headers, so it cannot lose the answer the same way.
        """
        try:
            await self._client.list_hosts(hosts=[self.host], rpc_timeout=self._deadline or 10.0)
        except ScoutError as err:
            err.host = self.host
            return err
        lost = grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(),
            "the server ended the call before it read the request, and grpc lost its "
            "reason; nothing ran, so retrying is safe",
        )
        return from_rpc_error(lost, self.host, started=False)

    async def started(self) -> None:
        """Wait until the server has started the command (its response headers came), or
        raise its refusal: a caller can then decide what to send before any stdin is read."""
        while True:
            call = self._running()
            await call.initial_metadata()
            if not call.done():
                return
            try:
                await self._raise_final_status(call)
            except ScoutError as err:
                if await self._reconnected(err):
                    continue  # a keyed call whose connection dropped: made again
                raise
            return

    async def write(self, data: bytes) -> None:
        """Send bytes to the command's stdin, waiting while gRPC flow control says so."""
        if self._stdin_closed:
            raise RuntimeError("stdin is closed: close_stdin() already sent EOF")
        if data:
            await self._send(exec_pb2.StreamRequest(stdin=data))

    async def signal(self, name: str | Signals) -> None:
        """Send a signal by name ("INT", "SIGTERM") or as a signal.Signals member."""
        if isinstance(name, Signals):
            name = name.name
        await self._send(exec_pb2.StreamRequest(signal=name))

    async def resize(self, columns: int, rows: int) -> None:
        """Tell a pty command its terminal's new size."""
        size = exec_pb2.TerminalSize(columns=columns, rows=rows)
        await self._send(exec_pb2.StreamRequest(resize=size))

    async def close_stdin(self) -> None:
        """Send EOF to the command's stdin; signals may still follow. Idempotent."""
        if self._stdin_closed:
            return
        await self._send(exec_pb2.StreamRequest(close_stdin=True))
        self._stdin_closed = True

    def __aiter__(self) -> Self:
        """Iterate over output events until the RPC ends."""
        return self

    async def __anext__(self) -> Event:
        """Read the next Stdout, Stderr, Lost or Exit event; errors arrive as ScoutError."""
        while True:
            if self._pending:
                return self._pending.popleft()
            call = self._running()
            try:
                response = await call.read()
            except grpc.RpcError as err:
                if self._exit is not None:
                    # Exit is the server's last message: the command's outcome is known,
                    # and an error now can only be our own late write into the ended call.
                    raise StopAsyncIteration from None
                if self._write_failed and err.code() == grpc.StatusCode.INTERNAL:
                    raise self._error(
                        grpc.aio.AioRpcError(
                            grpc.StatusCode.UNKNOWN,
                            grpc.aio.Metadata(),
                            grpc.aio.Metadata(),
                            "the command ended while input was still being sent to it; "
                            "grpc lost its outcome (send EOF with the start message, "
                            "close_stdin=True, when there is no more input)",
                        )
                    ) from err
                error = self._error(err)
                if not await self._reconnected(error):
                    raise error from err
                continue
            except asyncio.CancelledError:
                self._raise_if_we_cancelled()
                raise
            if response is grpc.aio.EOF:
                with contextlib.suppress(grpc.RpcError):
                    self._replayed = is_replayed(await call.trailing_metadata())
                raise StopAsyncIteration
            self._responded = True
            self._outage = None  # the new call works: a later drop gets a fresh budget
            event = event_from_response(response)
            if event is None:
                continue  # a newer server's event kind; skipping it keeps us compatible
            if isinstance(event, Exit):
                self._exit = event.status
                await self._half_close()
                return event
            self._pending.extend(self._in_order(event))

    def _in_order(self, event: Event) -> list[Event]:
        """The part of an output event the caller has not read yet, by its offset; a gap
        the server did not announce becomes a Lost event (never a silent skip)."""
        if isinstance(event, Lost):
            if event.stream in self._offsets:
                self._offsets[event.stream] += event.bytes
            return [event]
        if not isinstance(event, Stdout | Stderr):
            return [event]
        name = "stdout" if isinstance(event, Stdout) else "stderr"
        have = self._offsets[name]
        # A call that began with `start` has read nothing before it: its order is the
        # offset (and a server without keys sends none). An attach resumes by offset.
        start = event.offset if self._by_offset else have
        end = start + len(event.data)
        if end <= have:
            return []  # all of it was read before the connection dropped
        events: list[Event] = []
        data, text = event.data, event.text
        if start < have:
            data = data[have - start :]
            text = data.decode(errors="replace") if text else ""
            start = have
        elif start > have:
            events.append(Lost(name, start - have))
        self._offsets[name] = end
        kind = Stdout if name == "stdout" else Stderr
        events.append(kind(data, text, start))
        return events

    async def _reconnected(self, error: ScoutError) -> bool:
        """After a failed read: wait, then make the call again (attach or start), until
        that works (True) or the policy says the error is final (False)."""
        if self._retry is None or self._stopping:
            return False
        self._outage = self._outage or Outage(self._retry)
        if not await self._outage.again(error, self._open, self._no_more):
            return False
        self.reconnects += 1
        return True

    async def _half_close(self) -> None:
        """After `exit`: end our side, so the server ends the RPC at once (it lingers
        for this, so that no write of ours can land in a finished call)."""
        async with self._write_lock:
            with contextlib.suppress(grpc.RpcError, asyncio.InvalidStateError):
                await self._running().done_writing()

    def _running(self) -> Any:
        """Return the gRPC call, or explain that `async with` is missing."""
        if self._call is None:
            raise RuntimeError("use `async with client.stream(...) as call:` to start it")
        return self._call

    def _raise_if_we_cancelled(self) -> None:
        """Report our own cancel() as Cancelled; a cancelled task keeps its CancelledError."""
        task = asyncio.current_task()
        if self._cancelled and task is not None and task.cancelling() == 0:
            raise self._error(
                grpc.aio.AioRpcError(grpc.StatusCode.CANCELLED, details="stream cancelled")
            ) from None

    async def _send(self, message: exec_pb2.StreamRequest) -> None:
        """Write one request message, one at a time, mapping failures to ScoutError.

        Messages after `start` wait for the response headers, which the server sends
        once the command has started: a request that fails before that then ends the
        call without a write racing it (a write into a finished call makes grpc report
        INTERNAL in place of the server's status).
        """
        call = self._running()
        first = message.HasField("start") or message.HasField("attach")
        async with self._write_lock:
            if not first:
                await call.initial_metadata()
            if call.done():
                await self._raise_final_status(call)
                return
            try:
                await call.write(message)
            except (grpc.RpcError, asyncio.InvalidStateError):
                # The RPC ended under the write. Dropped, as on a closed pipe: the reader
                # gets the outcome (Exit, or the error), which comes before the status
                # that grpc's failed write leaves behind (INTERNAL).
                self._write_failed = True
                self._start_lost = first
                return
            except asyncio.CancelledError:
                self._raise_if_we_cancelled()
                raise

    async def _raise_final_status(self, call: Any) -> None:
        """Raise the ended RPC's error, or return if it ended OK (the write is dropped)."""
        code = await call.code()
        if code == grpc.StatusCode.OK or self._exit is not None:
            return
        error = grpc.aio.AioRpcError(
            code,
            await call.initial_metadata(),
            await call.trailing_metadata(),
            await call.details(),
        )
        raise self._error(error)

    def _error(self, err: grpc.RpcError) -> ScoutError:
        """Map this call's error, knowing that output means the command had started; an
        attach's NOT_FOUND is about the key."""
        attaching = self._attach is not None or self._responded
        not_found = attaching and err.code() == grpc.StatusCode.NOT_FOUND
        return from_rpc_error(
            err,
            self.host,
            started=True if self._responded else None,
            cls=KeyNotFound if not_found else None,
        )


class ExecuteManyCall(_OwnedCall[exec_pb2.ExecuteManyRequest], AsyncIterator[HostEvent]):
    """One ExecuteMany RPC: iterate it for host events in completion order.

    The RPC starts at the first iteration. A host's failure is an event (a
    ScoutError value); only the RPC's own failure raises, as a ScoutError from
    `from_rpc_error` (may_have_run by the server's mark, as for Execute). Leaving
    `async with` or calling cancel() ends the RPC, and the server stops every
    running command and starts no new one; a plain `async for` that breaks out
    early leaves that to the call's garbage collection.

    With an idempotency key and the client's RetryPolicy, a call that fails as
    client/retry.py says may be retried is sent again, the same request with the same
    key (each host's KEY/HOST runs at most once): hosts whose outcome was already
    read are not reported again, and a host's streamed output (stream_output) is not
    repeated: its first bytes, read before, are dropped. With stream_output, a host's
    Result holds only the output its HostOutput chunks did not (a keyed host's answer
    may carry it all), so every byte is read once.
    """

    def __init__(
        self,
        client: Client,
        request: exec_pb2.ExecuteManyRequest,
        deadline: float | None,
        metadata: tuple[tuple[str, str], ...],
        *,
        retry: RetryPolicy | None = None,
    ) -> None:
        """Hold what the call needs; nothing is sent yet."""
        super().__init__(client, request, deadline, metadata)
        self._retry = retry if request.request.idempotency_key else None
        self._reported: set[str] = set()  # hosts whose outcome was read
        self._output: dict[tuple[str, str], int] = {}  # (host, stream): bytes read
        self._skip: dict[tuple[str, str], int] = {}  # bytes to drop after a retry
        self._outage: Outage | None = None
        self.retries = 0  # calls made again after a failure

    def __repr__(self) -> str:
        """Show the targets and how far the call got, for logs."""
        state = "not started"
        if self._call is not None:
            state = "done" if self._call.done() else "running"
        return f"<ExecuteManyCall {self._targets_text()} {state}>"

    def _targets_text(self) -> str:
        """The targets as asked for: names and globs, then `-l SELECTOR`."""
        targets = ", ".join(self._request.hosts)
        if self._request.selector:
            targets += f"{', ' if targets else ''}-l {self._request.selector}"
        return targets

    async def __aenter__(self) -> Self:
        """Use as `async with client.execute_many(...) as events:` to end it on the way out."""
        return self

    def __aiter__(self) -> Self:
        """Iterate over host events until the RPC ends."""
        return self

    async def _start(self) -> None:
        """Make the RPC (again)."""
        stub = _exec_stub(await self._client._connected(self._deadline))
        self._call = stub.ExecuteMany(
            self._request, timeout=self._deadline, metadata=self._metadata
        )
        self._skip = dict(self._output)

    async def __anext__(self) -> HostEvent:
        """Read the next Result, host ScoutError or HostOutput; the RPC's failure raises."""
        if self._call is None:
            if self._retry is None:
                await self._start()
            else:
                await with_retries(self._retry, self._start, stop=self._no_more)
        while True:
            try:
                response = await self._call.read()
            except grpc.RpcError as err:
                error = from_rpc_error(err, "")
                if not await self._retried(error):
                    raise error from err
                continue
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if self._cancelled and task is not None and task.cancelling() == 0:
                    cancelled = grpc.aio.AioRpcError(
                        grpc.StatusCode.CANCELLED, details="fan-out cancelled"
                    )
                    raise from_rpc_error(cancelled, "") from None
                raise
            if response is grpc.aio.EOF:
                raise StopAsyncIteration
            self._outage = None
            event = host_event_from_response(response)
            if event is None:  # a newer server's event kind, skipped
                continue
            if isinstance(event, HostOutput):
                event = self._unread(event)
                if event is None:
                    continue
            elif event.host in self._reported:
                continue  # read before the call was made again
            else:
                self._reported.add(event.host)
                if isinstance(event, Result):
                    event = self._rest_of(event)
            return event

    def _rest_of(self, result: Result) -> Result:
        """A host's Result without the output its HostOutput chunks already gave (a
        keyed host's answer carries all of it: the recorded outcome, after a retry)."""
        if not self._request.stream_output:
            return result
        streamed = {kind: self._output.get((result.host, kind), 0) for kind in ("stdout", "stderr")}
        if not any(streamed.values()):
            return result
        stdout, stderr = result.stdout[streamed["stdout"] :], result.stderr[streamed["stderr"] :]
        return dataclasses.replace(
            result,
            stdout=stdout,
            stderr=stderr,
            stdout_text=stdout.decode(errors="replace") if result.stdout_text else "",
            stderr_text=stderr.decode(errors="replace") if result.stderr_text else "",
        )

    def _unread(self, event: HostOutput) -> HostOutput | None:
        """The part of a host's output chunk not read before a retry."""
        stream = (event.host, event.stream)
        if event.host in self._reported:
            return None
        skip = self._skip.get(stream, 0)
        data = event.data
        if skip:
            self._skip[stream] = max(0, skip - len(data))
            data = data[skip:]
            if not data:
                return None
            event = HostOutput(
                host=event.host,
                stream=event.stream,
                data=data,
                text=data.decode(errors="replace") if event.text else "",
            )
        self._output[stream] = self._output.get(stream, 0) + len(data)
        return event

    def _no_more(self) -> bool:
        """Whether nothing may be sent again: cancelled, or the client closed."""
        return self._cancelled or self._client._stopped()

    async def _retried(self, error: ScoutError) -> bool:
        """After the call failed: wait, then make it again, until that works (True) or
        the policy says the error is final (False)."""
        if self._retry is None or self._cancelled:
            return False
        self._outage = self._outage or Outage(self._retry)
        if not await self._outage.again(error, self._start, self._no_more):
            return False
        self.retries += 1
        return True
