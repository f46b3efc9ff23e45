"""The loop around every RPC handler: admission, errors to statuses, trailers, counts.

In the style of grpclib's server loop, each ExecService method is wrapped by `@rpc`:

- admission: beyond `max_concurrent_rpcs`, RESOURCE_EXHAUSTED at once, with a retry
  hint (grpc core's own queue would answer CANCELLED, late); a call whose request is one
  message is turned away at the door (`door`, from the interceptor), before grpc reads it;
- a request whose bytes are not a valid message gets INVALID_ARGUMENT (grpcio would say
  UNKNOWN with its own internal text, and log a traceback);
- expected failures (ScoutError) become the status codes (docs/architecture.md,
  "Statuses") in `status_of`, the one place that mapping lives; anything else is a bug:
  logged with its traceback, answered with a generic INTERNAL and no internal text;
- every status scout decides carries the trailing metadata `x-scout-started`: `false`
  when nothing reached the host (retrying is safe), `true` when the command may have
  started. A status without it was not scout's decision (a proxy, a reset connection,
  grpc's own limits): the caller must assume the command may have run;
- a cancellation is told apart from a passed deadline and from a shutdown (ABORTED), for
  the counts, the audit and the log;
- a call another worker forwarded (server.forwarding) is its caller's by name and keeps
  its request id; the receiving worker admits, counts and audits it, so here it is only
  served and logged (its access line says `forwarded`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2

from scout.v1 import exec_pb2

from . import logs
from .audit import AuditLog, CallRecord
from .callers import Gate, forwarded
from .counters import Histogram, Tally
from .errors import (
    REPLAYED_KEY,
    STARTED_KEY,
    AuditUnavailable,
    CommandAborted,
    CommandTimeout,
    DurableLimit,
    FileChanged,
    FileExists,
    FileMissing,
    FileRefused,
    HostNotFound,
    HostRejected,
    HostUnavailable,
    InvalidRequest,
    KeyConflict,
    KeyNotFound,
    OutcomeUnknown,
    PermissionDenied,
    PoolExhausted,
    RecordedFailure,
    ScoutError,
    StoreUnavailable,
    TransferMismatch,
    Unauthenticated,
)
from .logs import new_request_id, owned_request_id, supplied_request_id
from .requests import is_host_name

log = logging.getLogger(__name__)

MALFORMED = object()  # what `safe_parser` yields for bytes that are not a valid message

_STATUS: dict[type[ScoutError], grpc.StatusCode] = {
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    AuditUnavailable: grpc.StatusCode.UNAVAILABLE,
    InvalidRequest: grpc.StatusCode.INVALID_ARGUMENT,
    HostNotFound: grpc.StatusCode.NOT_FOUND,
    HostRejected: grpc.StatusCode.FAILED_PRECONDITION,
    HostUnavailable: grpc.StatusCode.UNAVAILABLE,
    CommandAborted: grpc.StatusCode.ABORTED,
    PoolExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    CommandTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    FileMissing: grpc.StatusCode.NOT_FOUND,
    FileRefused: grpc.StatusCode.FAILED_PRECONDITION,
    FileExists: grpc.StatusCode.ALREADY_EXISTS,
    TransferMismatch: grpc.StatusCode.DATA_LOSS,
    FileChanged: grpc.StatusCode.ABORTED,
    KeyConflict: grpc.StatusCode.ALREADY_EXISTS,
    KeyNotFound: grpc.StatusCode.NOT_FOUND,
    OutcomeUnknown: grpc.StatusCode.ABORTED,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    DurableLimit: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class Context(Protocol):
    """What handlers use of grpc.aio's ServicerContext (grpcio ships no type hints)."""

    async def abort(
        self, code: grpc.StatusCode, details: str = "", trailing_metadata: Sequence[Any] = ()
    ) -> NoReturn:
        """End the RPC with a status."""

    def time_remaining(self) -> float | None:
        """Seconds to the caller's deadline, or None."""

    def auth_context(self) -> dict[str, list[bytes]]:
        """What the transport proved: the client certificate's names under mutual TLS."""

    async def send_initial_metadata(self, metadata: Sequence[Any]) -> None:
        """Send the response headers."""

    def set_trailing_metadata(self, metadata: Sequence[Any]) -> None:
        """Metadata sent with the status."""

    async def write(self, message: Any) -> None:
        """Send one response message (streaming responses)."""

    def invocation_metadata(self) -> Sequence[Any] | None:
        """The caller's metadata."""

    def peer(self) -> str:
        """The caller's address."""


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str, bool]:
    """Status, message and "may have started" for an exception: the only error mapping."""
    if isinstance(exc, RecordedFailure):
        return grpc.StatusCode[exc.code_name], exc.message, exc.started
    if isinstance(exc, ScoutError):
        for cls in type(exc).__mro__:
            if cls in _STATUS:
                return _STATUS[cls], exc.message, exc.started
    return grpc.StatusCode.INTERNAL, "internal error (logged on the server)", True


def failure(gate: Gate, call: CallRecord, exc: Exception) -> tuple[grpc.StatusCode, str, str]:
    """How a call (or one host of a fan-out) that raised ends: its status code, the whole
    message (for the server's log) and the part the caller may see; records in the call
    whether the command may have started."""
    code, message, call.started = status_of(exc)
    shown = gate.shown(call.who, exc) if isinstance(exc, ScoutError) else message
    return code, message, shown


def host_status(code: grpc.StatusCode, message: str) -> status_pb2.Status:
    """One host's status inside a streamed answer (ExecuteMany, UploadMany)."""
    return status_pb2.Status(code=code.value[0], message=message)


def record_end(servicer: Servicer, call: CallRecord, code: grpc.StatusCode, began: float) -> None:
    """A call's end (or one host's, in a fan-out): its code and duration, its audit line,
    and the counts of the command it ran or the file it moved."""
    call.code, call.duration = code.name, time.monotonic() - began
    if not call.forwarded:  # the worker that received a forwarded call audits and counts it
        servicer.audit.write(call)
        servicer.rpcs.replayed += call.replayed
    servicer.rpcs.command_done(call)
    servicer.rpcs.file_done(call)


@dataclass
class RpcStats:
    """RPCs in flight and finished, their durations, and the commands they ran."""

    max_in_flight: int
    in_flight: int = 0
    in_flight_by_method: Tally = field(default_factory=Tally)
    finished: dict[tuple[str, str], int] = field(default_factory=dict)  # (method, code)
    durations: dict[str, Histogram] = field(default_factory=dict)  # by method
    commands: Tally = field(default_factory=Tally)  # by outcome
    output_bytes: Tally = field(default_factory=Tally)  # by stream
    host_commands: dict[tuple[str, str], int] = field(default_factory=dict)  # (host, outcome)
    file_bytes: Tally = field(default_factory=Tally)  # by direction
    file_transfers: dict[tuple[str, str], int] = field(default_factory=dict)  # (direction, code)
    replayed: int = 0  # answers that were an earlier keyed run's outcome

    def done(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """Count one finished RPC."""
        key = (method, code.name)
        self.finished[key] = self.finished.get(key, 0) + 1
        histogram = self.durations.get(method)
        if histogram is None:
            histogram = self.durations[method] = Histogram()
        histogram.observe(seconds)

    def command_done(self, call: CallRecord) -> None:
        """Count a command that ran, by how it ended, and its output."""
        if not call.ran:
            return
        outcome = outcome_of(call)
        self.commands.add(outcome)
        key = (call.host, outcome)
        self.host_commands[key] = self.host_commands.get(key, 0) + 1
        self.output_bytes.add("stdout", call.stdout_bytes)
        self.output_bytes.add("stderr", call.stderr_bytes)

    def file_done(self, call: CallRecord) -> None:
        """Count a file transfer to one host (Upload, Download, each host of UploadMany;
        not UploadMany's own call, which names no host)."""
        if not call.direction or not call.host:
            return
        key = (call.direction, call.code)
        self.file_transfers[key] = self.file_transfers.get(key, 0) + 1
        self.file_bytes.add(call.direction, call.file_bytes)


def outcome_of(call: CallRecord) -> str:
    """exit_zero, exit_nonzero, signal, timeout or aborted (cancelled, shut down, lost)."""
    if call.code == "OK":
        if call.signal:
            return "signal"
        return "exit_zero" if call.exit_code == 0 else "exit_nonzero"
    return "timeout" if call.code == "DEADLINE_EXCEEDED" else "aborted"


def cancel_code(context: Context, *, stopping: bool) -> grpc.StatusCode:
    """Why a handler was cancelled: the server shutting down (ABORTED), the caller's
    deadline (DEADLINE_EXCEEDED) or the caller's cancel (CANCELLED)."""
    if stopping:
        return grpc.StatusCode.ABORTED
    remaining = context.time_remaining()
    passed = remaining is not None and remaining <= 0
    return grpc.StatusCode.DEADLINE_EXCEEDED if passed else grpc.StatusCode.CANCELLED


class Servicer(Protocol):
    """A servicer whose methods `@rpc` wraps: its counts, its gate, its audit log, and
    whether the server is shutting down."""

    rpcs: RpcStats
    gate: Gate
    audit: AuditLog
    stopping: bool


# A refused streaming call reads what its caller still sends (drain()) for this long at
# most, and this long after the last message: a Stream's refusal must still come soon.
REFUSAL_DRAIN = 2.0
REFUSAL_DRAIN_IDLE = 0.25

S = TypeVar("S", bound=Servicer)
R = TypeVar("R")
Handler = Callable[[S, Any, Context, CallRecord], Awaitable[R]]
Wrapped = Callable[[S, Any, Context], Awaitable[R]]


def rpc(method: str) -> Callable[[Handler[S, R]], Wrapped[S, R]]:
    """Wrap a servicer method in scout's RPC loop (see the module docstring).

    The method gets one more argument, the call's record: who called (already
    authenticated), and what the method fills in for the audit line.
    """

    def decorate(handler: Handler[S, R]) -> Wrapped[S, R]:
        @functools.wraps(handler)
        async def loop(self: S, request: Any, context: Context) -> R:
            stats = self.rpcs
            metadata = context.invocation_metadata()
            if stats.in_flight >= stats.max_in_flight:  # most are refused at the door
                await _at_limit(self, method, context, metadata)
            supplied = supplied_request_id(metadata)
            call = CallRecord(method, context.peer(), supplied or new_request_id())
            owned = None if self.gate.open else supplied  # with callers: `NAME:ID`
            if owned is not None:  # until the caller is known, NAME is "-" (as in the audit)
                call.request_id = owned_request_id(call.caller, owned)
            stats.in_flight += 1
            stats.in_flight_by_method.add(method)
            began = time.monotonic()
            fields = {"request_id": call.request_id, "method": method}
            token = logs.current.set(fields)
            code, message, told = grpc.StatusCode.OK, "", ""
            try:
                _identify(self.gate, call, metadata, context)
                fields["caller"] = call.caller
                relay = forwarded.get()
                if relay is not None:  # the id the receiving worker gave it, as it is
                    call.request_id = fields["request_id"] = relay.request_id
                    fields["forwarded"] = "true"
                elif owned is not None:
                    call.request_id = owned_request_id(call.caller, owned)
                    fields["request_id"] = call.request_id
                _well_formed(method, request)
                if isinstance(request, exec_pb2.ExecuteRequest):
                    fields["host"] = logged_host(request.host)
                result = await handler(self, request, context, call)
                trailers = [(logs.REQUEST_ID_KEY, call.request_id)]
                if call.replayed:
                    trailers.append((REPLAYED_KEY, "true"))
                context.set_trailing_metadata(tuple(trailers))
                return result
            except asyncio.CancelledError:
                code = cancel_code(context, stopping=self.stopping)
                raise
            except Exception as exc:
                code, message, told = failure(self.gate, call, exc)  # the log keeps `message`
                if isinstance(exc, Unauthenticated):
                    call.authorized = True  # a refusal at the door is audited too
                    call.describe(request)
                if code is grpc.StatusCode.INTERNAL:
                    log.exception("%s failed", method)
            finally:
                stats.in_flight -= 1
                stats.in_flight_by_method.add(method, -1)
                if call.who is not None and not call.forwarded:
                    self.gate.release(call.who)
                record_end(self, call, code, began)
                if not call.forwarded:  # counted by the worker that received it
                    stats.done(method, code, call.duration)
                _access_log(call, message)
                logs.current.reset(token)
            if not call.started and hasattr(request, "__anext__"):  # a refused streaming call
                await drain(request, REFUSAL_DRAIN, REFUSAL_DRAIN_IDLE)
            await _abort(context, code, told, call, started=call.started)

        return loop

    return decorate


# The methods whose request is one message, refused at the door (`door`) before grpc reads
# it; a streaming request is refused in the loop, which first reads what the caller sends.
ONE_MESSAGE = ("Execute", "ListHosts", "ExecuteMany", "Download")


def door(servicer: Servicer, service: str) -> Callable[[str], Any]:
    """`refusal(method_path)`: a handler that refuses the call at once, for a call of one of
    service's ONE_MESSAGE methods that arrives while the server runs max_concurrent_rpcs
    calls; None otherwise (the usual handler serves it). Called by an interceptor, before
    grpc reads the request: a refusal costs no read, no parse and no servicer call (the
    loop's own check, for the calls that were let in meanwhile, comes after all three)."""
    refusals = {
        f"/{service}/{method}": grpc.stream_stream_rpc_method_handler(_refuser(servicer, method))
        for method in ONE_MESSAGE
    }

    def refusal(path: str) -> Any:
        stats = servicer.rpcs
        return refusals.get(path) if stats.in_flight >= stats.max_in_flight else None

    return refusal


def _refuser(servicer: Servicer, method: str) -> Callable[[Any, Context], Awaitable[None]]:
    """The handler of a call refused at the door (a streaming request it never reads)."""

    async def refuse(requests: Any, context: Context) -> None:
        await _at_limit(servicer, method, context, context.invocation_metadata())

    return refuse


async def _at_limit(servicer: Servicer, method: str, context: Context, metadata: Any) -> NoReturn:
    """RESOURCE_EXHAUSTED for a call beyond max_concurrent_rpcs: counted, nothing started
    (`x-scout-started: false`), with its request id; no access line, no audit line."""
    stats = servicer.rpcs
    stats.done(method, grpc.StatusCode.RESOURCE_EXHAUSTED, 0.0)
    supplied = supplied_request_id(metadata)
    call = CallRecord(method, "", supplied or new_request_id())
    if supplied is not None and not servicer.gate.open:  # with callers: `-:ID`, as the loop
        call.request_id = owned_request_id(call.caller, supplied)
    await _abort(
        context,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"scout is at its limit of {stats.max_in_flight} calls at once "
        "(max_concurrent_rpcs); retry in a second",
        call,
        started=False,
    )


def _access_log(call: CallRecord, message: str) -> None:
    """The one INFO line of every RPC: what, who, where, how it ended, how long."""
    log.info(
        "%s %s %.3fs%s",
        call.method,
        call.code,
        call.duration,
        f": {message}" if message else "",
        extra={
            "status": call.code,
            "duration": round(call.duration, 6),
            "host": logged_host(call.host),
        },
    )


async def drain(requests: Any, within: float, idle: float | None = None) -> None:
    """Read (and drop) what the caller still sends before answering with an error.

    A status sent while a grpc-python caller is still writing reaches it as INTERNAL
    ("Failed execute_batch") instead of the status itself; once its writes are done it
    gets the real one. So a streaming call refused before anything ran reads the rest of
    the request stream first: until the caller half-closes, for at most `within` seconds,
    and (with `idle`) no longer than `idle` seconds after the last message, so that a
    caller who keeps its stream open hears the refusal soon.
    """
    with contextlib.suppress(Exception):
        async with asyncio.timeout(within):
            while True:
                wait = anext(requests, None)
                message = await (wait if idle is None else asyncio.wait_for(wait, idle))
                if message is None:
                    return


INVALID_HOST = "(invalid)"  # in a log line, for a host that is not a valid host name


def logged_host(host: str) -> str:
    """A request's host for a log line: the name when it can be one, else INVALID_HOST."""
    if not host:
        return ""
    return host if is_host_name(host) else INVALID_HOST


def _identify(gate: Gate, call: CallRecord, metadata: Any, context: Context) -> None:
    """Authenticate the call and count it against its caller's max_in_flight. A call
    another worker forwarded (server.forwarding) is its caller's by name, and counted
    there."""
    relay = forwarded.get()
    if relay is not None:
        who = gate.named(relay.caller)
        call.who, call.caller, call.forwarded = who, who.name, True
        return
    who = gate.authenticate(metadata, None if gate.open else context.auth_context())
    call.caller = who.name
    gate.admit(who)
    call.who = who


def _well_formed(method: str, request: Any) -> None:
    """Refuse bytes that did not parse as the method's request message."""
    if request is MALFORMED:
        raise InvalidRequest(f"{method}: the request is not a valid message")


async def _abort(
    context: Context, code: grpc.StatusCode, message: str, call: CallRecord, *, started: bool
) -> NoReturn:
    """End the call with scout's own status, its `x-scout-started` trailer, its request id."""
    trailers = [(STARTED_KEY, str(started).lower()), (logs.REQUEST_ID_KEY, call.request_id)]
    if call.replayed:
        trailers.append((REPLAYED_KEY, "true"))
    await context.abort(code, message, trailing_metadata=tuple(trailers))


def safe_parser(message: type[Message]) -> Callable[[bytes], Any]:
    """A request deserializer that yields MALFORMED instead of raising on bad bytes."""

    def parse(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except (DecodeError, UnicodeDecodeError, ValueError):
            return MALFORMED

    return parse
