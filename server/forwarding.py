"""Workers of one supervisor reach each other: a keyed call lands on any worker, the owner answers.

With `--workers N` the kernel spreads connections over the workers (SO_REUSEPORT), so a
retry with an idempotency key, or an `attach`, often reaches a worker that is not the one
running the key's command. The store's record names the owner (`GROUP/ID`, server.durable);
GROUP is the supervisor's, the same for all its workers. So a worker that finds a sibling's
record running forwards the call to that sibling instead of watching the store:

- The supervisor (server.workers) makes, once, the group id, a random secret and a private
  folder (0700, a temporary one it removes when it stops), and hands them to every worker
  in its start message with the worker's own id (`ForwardingPlan`).
- Each worker serves a second gRPC server on a Unix socket in that folder, `ID.sock`,
  with only Execute and Stream (`ForwardingServer`). A call there must carry the secret
  (`x-scout-forward-secret`, compared with hmac.compare_digest; never logged): without it
  UNAUTHENTICATED. It names the caller the receiving worker authenticated
  (`x-scout-forward-caller`) and its request id; the owner takes the caller by name
  (callers.Gate.named) and runs the call through the same RPC loop as any other, without
  counting, auditing or forwarding it again (the receiving worker does those).
- `Forwarder` is the receiving side: an Execute whose key a sibling runs waits at the
  owner (server.durable calls `execute`), and a Stream `attach` is proxied whole, both
  ways (`attach`: stdin, signals and resizes to the owner, output back). The owner's
  answer comes back unchanged: its response or status and message, its
  `x-scout-started` and `x-scout-replayed`.

An owner that cannot be reached (its socket is gone, refused, or the connection dropped
before it answered anything) is `OwnerGone`: then its liveness decides, as for another
replica's record: the store is watched until the outcome appears or the owner's heartbeat
stops (ABORTED, outcome unknown). An answer cut after it began is UNAVAILABLE with
`x-scout-started: true` (attach again). Replicas (separate processes, each its own group)
never forward: the proxy's hash on `x-scout-host` brings a retry to its owner
(docs/architecture.md, "Who runs a key").
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from scout.v1 import exec_pb2

from .audit import CallRecord
from .callers import Forwarded, forwarded
from .durable import Owner, OwnerGone
from .errors import REPLAYED_KEY, STARTED_KEY, HostUnavailable, InvalidRequest, RecordedFailure
from .logs import REQUEST_ID_KEY
from .rpc import MALFORMED, Context, safe_parser

log = logging.getLogger(__name__)

SECRET_KEY = "x-scout-forward-secret"
CALLER_KEY = "x-scout-forward-caller"
SERVICE = "scout.v1.ExecService"
EXECUTE, STREAM = f"/{SERVICE}/Execute", f"/{SERVICE}/Stream"
# Between workers of one machine: the messages are the ones the receiving worker already
# accepted (or will send on), sized by its own limits.
_UNBOUNDED = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]


@dataclass(frozen=True)
class ForwardingPlan:
    """What the supervisor tells a worker: its owner id, the group's folder and secret."""

    group: str
    id: str
    folder: Path
    secret: str = field(repr=False)  # never in a log line

    @property
    def owner(self) -> Owner:
        """This worker, as records name it."""
        return Owner(self.group, self.id)

    def socket(self, owner_id: str) -> Path:
        """Where the worker `owner_id` listens."""
        return self.folder / f"{owner_id}.sock"


def _value(metadata: Sequence[Any] | None, key: str) -> str:
    for name, value in metadata or ():
        if name == key and isinstance(value, str):
            return value
    return ""


def _flag(metadata: Sequence[Any] | None, key: str) -> bool:
    return _value(metadata, key) == "true"


class ForwardingServer:
    """The worker's Unix-socket gRPC server: Execute and Stream, for sibling workers only."""

    def __init__(
        self,
        plan: ForwardingPlan,
        execute: Callable[[Any, Any], Awaitable[Any]],
        stream: Callable[[Any, Any], Awaitable[Any]],
    ) -> None:
        self.plan = plan
        self.path = plan.socket(plan.id)
        self._secret = plan.secret.encode()
        self._server = grpc.aio.server(options=_UNBOUNDED)
        handlers = {
            "Execute": grpc.unary_unary_rpc_method_handler(
                self._trusted(execute),
                request_deserializer=safe_parser(exec_pb2.ExecuteRequest),
                response_serializer=exec_pb2.ExecuteResponse.SerializeToString,
            ),
            "Stream": grpc.stream_stream_rpc_method_handler(
                self._trusted(stream),
                request_deserializer=safe_parser(exec_pb2.StreamRequest),
                response_serializer=exec_pb2.StreamResponse.SerializeToString,
            ),
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )

    async def start(self) -> None:
        """Listen on the socket (in the supervisor's private folder)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale one of ours cannot exist: ids are fresh per start
        try:
            port = self._server.add_insecure_port(f"unix:{self.path}")
        except RuntimeError:
            port = 0
        if port == 0:
            raise OSError(f"cannot listen on the workers' socket {self.path}")
        await self._server.start()

    async def stop(self, grace: float | None) -> None:
        """Stop serving (calls in flight get the grace), and remove the socket."""
        await self._server.stop(grace)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def gone(self) -> None:
        """At shutdown, first: no sibling forwards here any more (they watch the store)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _trusted(
        self, method: Callable[[Any, Any], Awaitable[Any]]
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        """method, for calls that carry the supervisor's secret; the caller they name."""

        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            metadata = context.invocation_metadata()
            given = _value(metadata, SECRET_KEY).encode()
            if not hmac.compare_digest(given, self._secret):
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "this socket serves only calls forwarded by the workers of this server",
                )
            relay = Forwarded(_value(metadata, CALLER_KEY), _value(metadata, REQUEST_ID_KEY))
            token = forwarded.set(relay)
            try:
                return await method(request, context)
            finally:
                forwarded.reset(token)

        return handle


class Forwarder:
    """The calls of this worker for keys a sibling runs: sent to the sibling's socket."""

    def __init__(self, plan: ForwardingPlan) -> None:
        self.plan = plan
        self._secret = plan.secret
        self._channels: dict[str, grpc.aio.Channel] = {}
        self.forwarded = 0  # calls answered by a sibling (for tests and the log)

    def reaches(self, owner: str) -> bool:
        """Whether owner is another worker of this supervisor whose socket is there."""
        group, _, ident = owner.partition("/")
        if group != self.plan.group or not ident or ident == self.plan.id:
            return False
        return self.plan.socket(ident).is_socket()

    def _channel(self, owner: str) -> grpc.aio.Channel:
        channel = self._channels.get(owner)
        if channel is None:
            path = self.plan.socket(owner.partition("/")[2])
            channel = grpc.aio.insecure_channel(f"unix:{path}", options=_UNBOUNDED)
            self._channels[owner] = channel
        return channel

    def _lost(self, owner: str) -> OwnerGone:
        """The owner could not be reached: forget its channel."""
        channel = self._channels.pop(owner, None)
        if channel is not None:
            task = asyncio.ensure_future(channel.close())
            task.add_done_callback(lambda t: t.cancelled() or t.exception())
        return OwnerGone(owner)

    def _metadata(self, call: CallRecord) -> tuple[tuple[str, str], ...]:
        assert call.who is not None
        return (
            (SECRET_KEY, self._secret),
            (CALLER_KEY, call.who.name),
            (REQUEST_ID_KEY, call.request_id),
        )

    async def execute(
        self, owner: str, call: CallRecord, request: exec_pb2.ExecuteRequest
    ) -> exec_pb2.ExecuteResponse:
        """Execute at the owner for the same caller: its answer, or its status raised
        (RecordedFailure, with its x-scout-started); OwnerGone if it never answered."""
        method = self._channel(owner).unary_unary(
            EXECUTE,
            request_serializer=exec_pb2.ExecuteRequest.SerializeToString,
            response_deserializer=exec_pb2.ExecuteResponse.FromString,
        )
        remote = method(request, metadata=self._metadata(call))
        try:
            response: exec_pb2.ExecuteResponse = await remote
        except grpc.aio.AioRpcError as exc:
            trailers = exc.trailing_metadata()
            if not _value(trailers, REQUEST_ID_KEY):  # not the owner's answer: none came
                raise self._lost(owner) from None
            call.replayed = _flag(trailers, REPLAYED_KEY)
            raise RecordedFailure(
                exc.code().name, exc.details() or "", started=_flag(trailers, STARTED_KEY)
            ) from None
        finally:
            if not remote.done():
                remote.cancel()  # our caller went away: so does the owner's
        self.forwarded += 1
        call.replayed = _flag(await remote.trailing_metadata(), REPLAYED_KEY)
        return response

    async def attach(
        self,
        owner: str,
        call: CallRecord,
        attach: exec_pb2.Attach,
        requests: AsyncIterator[exec_pb2.StreamRequest],
        context: Context,
    ) -> None:
        """A Stream `attach` at the owner, proxied whole: the caller's messages there, its
        output and its end back. OwnerGone if the owner never answered."""
        method = self._channel(owner).stream_stream(
            STREAM,
            request_serializer=exec_pb2.StreamRequest.SerializeToString,
            response_deserializer=exec_pb2.StreamResponse.FromString,
        )
        remote = method(metadata=self._metadata(call))
        pump = asyncio.ensure_future(_pump(attach, requests, remote))
        answered = False
        try:
            headers = await remote.initial_metadata()
            if headers:
                answered = True
                await context.send_initial_metadata(
                    tuple((k, v) for k, v in headers if k.startswith("x-"))
                )
            while (message := await remote.read()) is not grpc.aio.EOF:
                answered = True
                if message.WhichOneof("event") == "exit":
                    call.exit_code, call.signal = message.exit.exit_code, message.exit.signal
                await context.write(message)
        except grpc.aio.AioRpcError:
            pass  # its status, below
        finally:
            if not remote.done():
                remote.cancel()
            if not pump.done():
                pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([pump])
        failed = None if pump.cancelled() else pump.exception()
        if failed is not None:
            raise failed  # a malformed message of the caller
        code = await remote.code()
        trailers = await remote.trailing_metadata()
        if code == grpc.StatusCode.OK:
            self.forwarded += 1
            call.replayed = _flag(trailers, REPLAYED_KEY)
            return
        if not _value(trailers, REQUEST_ID_KEY):  # not the owner's status
            if not answered:
                raise self._lost(owner)
            raise HostUnavailable(
                f"the worker running the command with idempotency_key "
                f"{attach.idempotency_key!r} stopped answering; attach again",
                started=True,
            )
        call.replayed = _flag(trailers, REPLAYED_KEY)
        details = await remote.details()
        raise RecordedFailure(code.name, details or "", started=_flag(trailers, STARTED_KEY))

    async def close(self) -> None:
        """Close the channels to siblings."""
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()


async def _pump(
    attach: exec_pb2.Attach,
    requests: AsyncIterator[exec_pb2.StreamRequest],
    remote: grpc.aio.StreamStreamCall[exec_pb2.StreamRequest, exec_pb2.StreamResponse],
) -> None:
    """The caller's messages to the owner: the attach, then stdin, signals, resizes."""
    try:
        await remote.write(exec_pb2.StreamRequest(attach=attach))
        async for message in requests:
            if message is MALFORMED:
                remote.cancel()
                raise InvalidRequest("Stream: a message is not a valid StreamRequest")
            await remote.write(message)
        await remote.done_writing()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass  # the owner ended the call: its status says how
