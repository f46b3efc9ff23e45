"""Keyed commands: a retry with the same idempotency key never runs the command twice.

A request with a key is one of five cases (docs/architecture.md, "Durable commands"):

1. the key is new: its record is written to the store (write-ahead, before the exec
   request goes out; if the store cannot be written nothing runs), the command runs in a
   task this registry owns, and its outcome is recorded when it ends;
2. the key's command is running in this process: Execute waits for it, Stream attaches;
3. the key has an outcome: that outcome again (`x-scout-replayed: true`), nothing runs;
4. the key was started and its outcome is unknown (the process running it died, or a
   shutdown stopped it): ABORTED, and never run again under that key;
5. the key names a different request: ALREADY_EXISTS.

A run belongs to the registry, not to the call that started it, so callers can come and
go: each waiting or attached call `join`s it and `leave`s it. When the last one leaves,
the command is stopped, unless it was started with `detach_grace`: then it runs on, and is
stopped only if nobody attaches within the grace. A run that ended before its command
started (nothing reached the host) forgets its key, so a retry may run it.

Keys are scoped to the caller (two callers' equal keys never meet), and the store is
shared by every process that serves the same callers: an owner that is not this process
is asked through `Forwarder` when it is a worker of the same supervisor, otherwise the
store is watched for the outcome, or for the owner's heartbeat to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from scout.v1 import exec_pb2

from .audit import CallRecord
from .command import CommandSpec, RunningCommand
from .config import DurableSettings, HostConfig
from .durablestore import HEARTBEAT_EVERY, Record, Store
from .errors import (
    DurableLimit,
    HostUnavailable,
    KeyConflict,
    OutcomeUnknown,
    ScoutError,
    StoreUnavailable,
)
from .idempotency import detach_grace, fingerprint
from .launch import Bounds, Launcher
from .outcomes import Outcome
from .replay import ReplayLog
from .responses import execute_response
from .rpc import status_of

log = logging.getLogger(__name__)

WATCH_PAUSES = (0.05, 1.0)  # first and longest pause between looks at another's record
KeyId = tuple[str, str]  # (scope, key)


@dataclass(frozen=True)
class Owner:
    """This process, as records name their runner: `GROUP/ID`. GROUP is the supervisor's
    (workers of one supervisor can forward to each other), else the process's own."""

    group: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __str__(self) -> str:
        return f"{self.group}/{self.id}"

    @staticmethod
    def group_of(owner: str) -> str:
        """The group part of an owner string."""
        return owner.partition("/")[0]


class OwnerGone(Exception):
    """The worker a call was forwarded to could not be reached (no socket, refused, or
    gone before it answered anything): the owner's liveness decides instead."""


class Forwarder(Protocol):
    """Reaches the worker that owns a key (server.forwarding), for Execute and attach."""

    def reaches(self, owner: str) -> bool:
        """Whether `owner` is another worker of this supervisor, with its socket there."""

    async def execute(
        self, owner: str, call: CallRecord, request: exec_pb2.ExecuteRequest
    ) -> exec_pb2.ExecuteResponse:
        """Execute `request` at `owner`, for the same caller: its answer (the call's
        `replayed` set as the owner's trailer says), or its error as the owner gave it
        (RecordedFailure); OwnerGone when it could not be reached."""

    async def attach(
        self,
        owner: str,
        call: CallRecord,
        attach: exec_pb2.Attach,
        requests: AsyncIterator[exec_pb2.StreamRequest],
        context: Any,
    ) -> None:
        """A Stream `attach` at `owner`, proxied both ways to its end (its status raised
        as RecordedFailure); OwnerGone when it could not be reached."""


class KeyedRun:
    """One keyed command running in this process: its output, its callers, its end."""

    def __init__(
        self,
        key: KeyId,
        *,
        digest: str,
        host: HostConfig,
        spec: CommandSpec,
        log_: ReplayLog,
        grace: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.key = key
        self.fingerprint = digest
        self.host = host
        self.spec = spec
        self.log = log_
        self.grace = grace
        self.claimed: asyncio.Future[Record | None] = loop.create_future()  # None: ours
        self.started: asyncio.Future[RunningCommand | None] = loop.create_future()
        self.done: asyncio.Future[Outcome] = loop.create_future()
        self.task: asyncio.Future[None] | None = None
        self.feeds_stdin = False  # Execute: the run writes stdin and EOF itself
        self.starter: CallRecord | None = None  # the call that started it
        self.inline: tuple[CallRecord, Bounds] | None = None  # run by its starter's task
        self.request = exec_pb2.ExecuteRequest()  # what it runs, for an attach's policy check
        self.attached = 0
        self.began = time.time()  # wall clock, as its record says
        self.stop_reason = ""
        self._timer: asyncio.TimerHandle | None = None

    @property
    def command(self) -> RunningCommand | None:
        """The running command, once it has started."""
        if self.started.done() and not self.started.cancelled():
            return self.started.result()
        return None


class Durable:
    """The keyed runs of this process, and the store their records live in."""

    def __init__(
        self,
        settings: Callable[[], DurableSettings],
        store: Store,
        launcher: Launcher,
        owner: Owner,
    ) -> None:
        self._settings = settings
        self.store = store
        self.launcher = launcher
        self.owner = owner
        self.forwarder: Forwarder | None = None
        self.runs: dict[KeyId, KeyedRun] = {}
        self.detached = 0  # runs with nobody attached, running on their detach_grace
        self.replayed = 0  # answers given from a record (or a run another call started)
        self.refused: dict[str, int] = {}  # by limit
        self.started = 0  # keyed runs started here
        self.store_errors = 0  # store operations that failed
        self.records = 0  # the store's count of unexpired records, as last read
        self._beating: asyncio.Task[None] | None = None
        self.stopping = False

    @property
    def settings(self) -> DurableSettings:
        """[durable] in force (a reload may change the numbers)."""
        return self._settings()

    def refuse(self, limit: str, message: str) -> DurableLimit:
        """A refusal naming the limit, counted for scout_durable_refused_total."""
        self.refused[limit] = self.refused.get(limit, 0) + 1
        return DurableLimit(message)

    # -- the way in --------------------------------------------------------------------

    async def begin(
        self,
        call: CallRecord,
        host: HostConfig,
        spec: CommandSpec,
        request: exec_pb2.ExecuteRequest,
        *,
        key: str,
        bounds: Callable[[float], Bounds],
        stream: bool,
        inline: bool = False,
    ) -> KeyedRun | Outcome:
        """The run to join (a new one started, or one running here), or the recorded
        outcome; raises KeyConflict, OutcomeUnknown, StoreUnavailable, DurableLimit.

        `bounds(grace)` gives the run's bounds: without a grace the starter's deadline
        bounds the command, with one only its own timeout does."""
        assert call.who is not None
        grace = detach_grace(self.settings, request)
        ident: KeyId = (call.who.name, key)
        digest = fingerprint(host.name, request)
        call.key = key
        forward = None
        if not stream and not call.forwarded:  # a forwarded call is never forwarded again
            forward = functools.partial(_forwarded_request, request, host.name, key)
        for _ in range(3):  # a record that vanishes while watched: its run never started
            found = await self._begin_once(
                call,
                host,
                spec,
                ident=ident,
                digest=digest,
                grace=grace,
                bounds=bounds,
                stream=stream,
                inline=inline,
                forward=forward,
                request=request,
            )
            if found is not None:
                return found
        raise HostUnavailable(
            f"the run with idempotency_key {key!r} keeps ending before its command starts; "
            "retry later with the same key"
        )

    async def _begin_once(
        self,
        call: CallRecord,
        host: HostConfig,
        spec: CommandSpec,
        *,
        ident: KeyId,
        digest: str,
        grace: float,
        bounds: Callable[[float], Bounds],
        stream: bool,
        inline: bool,
        forward: Callable[[], exec_pb2.ExecuteRequest] | None,
        request: exec_pb2.ExecuteRequest,
    ) -> KeyedRun | Outcome | None:
        key = ident[1]
        settings = self.settings
        run = self.runs.get(ident)
        if run is not None:
            return await self._existing_run(run, digest, call, forward)
        if self.stopping:
            raise HostUnavailable("scout is shutting down; retry on another replica")
        if grace and sum(1 for r in self.runs.values() if r.grace) >= settings.max_detached:
            raise self.refuse(
                "max_detached",
                f"{settings.max_detached} commands that may detach are running "
                "([durable] max_detached); nothing was started",
            )
        cap = min(spec.max_output_bytes or settings.max_outcome_bytes, settings.max_outcome_bytes)
        replay = ReplayLog(spec.max_output_bytes, cap, settings.replay_buffer_bytes)
        run = KeyedRun(ident, digest=digest, host=host, spec=spec, log_=replay, grace=grace)
        run.feeds_stdin = not stream
        run.request = request
        self.runs[ident] = run  # before the claim: a second call here waits on this one
        record = Record(ident[0], key, digest, str(self.owner), run.began)
        store = self.store  # a reload may have changed these two
        store.retention, store.max_records = settings.retention, settings.max_records
        self._beat_soon()
        try:
            existing = await self.store.claim(record)
        except BaseException as exc:
            del self.runs[ident]
            if isinstance(exc, DurableLimit):
                self.refused["max_records"] = self.refused.get("max_records", 0) + 1
            elif not isinstance(exc, asyncio.CancelledError):
                self.store_errors += 1
            if isinstance(exc, asyncio.CancelledError):  # the claim may have landed: undo it
                self.launcher.track(_undo_claim(self.store, record))
                exc = _retry_now(key)
            elif not isinstance(exc, ScoutError):
                log.exception("durable store claim failed")
                exc = _store_failed()
            run.claimed.set_exception(exc)
            run.claimed.exception()  # seen: the calls waiting on it (if any) raise it too
            raise
        run.claimed.set_result(existing)  # at once: the calls waiting here look for themselves
        if existing is not None:
            del self.runs[ident]
            return await self._recorded(existing, digest, key, call, forward)
        run.starter = call
        self.started += 1
        if inline and not grace:  # bound to its caller anyway: run in the caller's task
            run.inline = (call, bounds(grace))
        else:
            run.task = self.launcher.track(self._run(run, call, bounds(grace)))
        return run

    async def run_inline(self, run: KeyedRun) -> Outcome:
        """Run a keyed command begun with `inline` in the calling task (Execute without a
        detach_grace: no task of its own, as the caller's cancel stops it anyway)."""
        assert run.inline is not None
        call, bounds = run.inline
        await self._run(run, call, bounds)
        return run.done.result()

    async def _existing_run(
        self,
        run: KeyedRun,
        digest: str,
        call: CallRecord,
        forward: Callable[[], exec_pb2.ExecuteRequest] | None,
    ) -> KeyedRun | Outcome | None:
        """A call for a key already running (or being claimed) here."""
        key = run.key[1]
        if run.fingerprint != digest:
            raise _conflict(key)
        existing = await asyncio.shield(run.claimed)
        if existing is None:
            return run
        return await self._recorded(existing, digest, key, call, forward)

    async def _recorded(
        self,
        record: Record,
        digest: str,
        key: str,
        call: CallRecord,
        forward: Callable[[], exec_pb2.ExecuteRequest] | None = None,
    ) -> Outcome | None:
        """The outcome of a record another run wrote: wait for it while its owner lives
        (None: the record went away, its command never started: claim it again).

        With `forward` (an Execute), an owner that is another worker of this supervisor
        is asked for it instead (server.forwarding): it waits on its run and answers as
        it would have answered the caller. If it cannot be reached, the store is watched."""
        pause = WATCH_PAUSES[0]
        while True:
            if record.fingerprint != digest:
                raise _conflict(key)
            if record.outcome is not None:
                return Outcome.decode(record.outcome)
            if record.owner == str(self.owner) or not await self.store.alive(record.owner):
                raise _unknown(key, record)
            forwarder = self.forwarder
            if forward is not None and forwarder is not None and forwarder.reaches(record.owner):
                request = forward()
                try:
                    response = await forwarder.execute(record.owner, call, request)
                except OwnerGone:
                    forward = None  # an owner is one process: once gone, gone for good
                else:
                    call.relayed = True
                    return Outcome(request.host, response=response)
            await asyncio.sleep(pause)
            pause = min(pause * 2, WATCH_PAUSES[1])
            fresh = await self.store.get(record.scope, record.key)
            if fresh is None:  # its run never started and forgot the key: claim it now
                return None
            record = fresh

    async def find(self, scope: str, key: str) -> KeyedRun | Record | None:
        """For an attach: the run here, else the store's record (None: no such key)."""
        run = self.runs.get((scope, key))
        if run is not None and await asyncio.shield(run.claimed) is None:
            return run
        return await self.store.get(scope, key)

    async def settle(self, record: Record, call: CallRecord) -> Outcome | None:
        """A record whose owner was a sibling worker that cannot be reached: its outcome
        once recorded, OutcomeUnknown once the owner's heartbeat stops, None if the record
        goes away (its command never started)."""
        return await self._recorded(record, record.fingerprint, record.key, call)

    def sibling(self, owner: str) -> bool:
        """Whether owner is another worker of this process's supervisor."""
        return Owner.group_of(owner) == self.owner.group and owner != str(self.owner)

    def unknown(self, key: str, record: Record) -> OutcomeUnknown:
        """Case 4, for a caller that found the record itself."""
        return _unknown(key, record)

    # -- callers come and go -----------------------------------------------------------

    def join(self, run: KeyedRun) -> None:
        """A call waits on or reads the run."""
        if run.attached == 0 and run._timer is not None:
            run._timer.cancel()
            run._timer = None
            self.detached -= 1
        run.attached += 1

    def leave(self, run: KeyedRun) -> None:
        """A call stopped waiting: the last one out stops the command, or starts the grace."""
        run.attached -= 1
        if run.attached > 0 or run.done.done():
            return
        if not run.grace or self.stopping:
            self._stop(run, "its caller went away (no detach_grace)")
            return
        self.detached += 1
        grace = run.grace
        run._timer = asyncio.get_running_loop().call_later(
            grace, self._grace_over, run, f"nobody attached within its detach_grace ({grace:g}s)"
        )

    def _grace_over(self, run: KeyedRun, reason: str) -> None:
        run._timer = None
        self.detached -= 1
        self._stop(run, reason)

    def _stop(self, run: KeyedRun, reason: str) -> None:
        if run.task is not None and not run.task.done():
            run.stop_reason = reason
            run.task.cancel()

    # -- the run -----------------------------------------------------------------------

    async def _run(self, run: KeyedRun, call: CallRecord, bounds: Bounds) -> None:
        """Run the command to its end (or its stop), record the outcome, let go of it. An
        inline run's cancel is its caller's: raised again once the outcome is recorded."""
        outcome: Outcome
        cancelled = False
        try:
            async with self.launcher.run(run.host, run.spec, run.log, bounds, call) as ran:
                command = ran.command
                run.started.set_result(command)
                if run.feeds_stdin:  # Execute's; a Stream's starter writes its own
                    await command.write(run.spec.stdin)
                    command.close_stdin()
                await ran.bounded(command.wait_closed())
            info = ran.outcome()
            outcome = Outcome(run.spec.host, response=recorded_response(info, run.log))
        except asyncio.CancelledError:
            cancelled = True
            started = run.command is not None
            reason = run.stop_reason or "the server is shutting down"
            when = _iso(run.began)
            message = (
                f"{run.spec.host}: the command with idempotency_key {run.key[1]!r}, started "
                f"at {when}, was stopped ({reason}); its outcome is unknown, and it is not run "
                "again under this key"
                if started
                else f"{run.spec.host}: the command was not started ({reason})"
            )
            outcome = Outcome(
                run.spec.host, code=grpc.StatusCode.ABORTED, message=message, started=started
            )
        except ScoutError as exc:
            code, message, started = status_of(exc)
            outcome = Outcome(run.spec.host, code=code, message=message, started=started)
        except Exception:
            log.exception("keyed command on %s failed", run.spec.host)
            outcome = Outcome(
                run.spec.host,
                code=grpc.StatusCode.INTERNAL,
                message="internal error (logged on the server)",
            )
        finally:
            if not run.started.done():
                run.started.set_result(None)
            run.log.close()
        await self._record(run, outcome)
        if cancelled and run.inline is not None:
            raise asyncio.CancelledError

    async def _record(self, run: KeyedRun, outcome: Outcome) -> None:
        """Keep the outcome (or forget a key whose command never started), then end."""
        scope, key = run.key
        failed = ""
        try:
            if outcome.started:
                await self.store.finish(scope, key, outcome.encode())
            else:
                await self.store.forget(scope, key)
        except ScoutError as exc:
            failed = exc.message
            self.store_errors += 1
        except Exception:
            log.exception("the outcome of key %s could not be recorded", key)
        finally:
            if run._timer is not None:
                run._timer.cancel()
                run._timer = None
                self.detached -= 1
            self.runs.pop(run.key, None)
            run.done.set_result(outcome)
        if failed:
            log.error("the outcome of key %s could not be recorded: %s", key, failed)

    # -- liveness ----------------------------------------------------------------------

    def _beat_soon(self) -> None:
        """Start the heartbeat with the first keyed call (a server without keys never
        touches the store)."""
        if self._beating is None:
            self._beating = asyncio.get_running_loop().create_task(self._beat())

    async def _beat(self) -> None:
        while True:
            try:
                await self.store.beat(str(self.owner))
                self.records = await self.store.count()
            except ScoutError as exc:
                self.store_errors += 1
                log.warning("durable store heartbeat failed: %s", exc.message)
            await asyncio.sleep(HEARTBEAT_EVERY)

    async def close(self, within: float) -> None:
        """At shutdown: stop the keyed runs (recorded as stopped), say this owner is gone."""
        self.stopping = True
        tasks = [r.task for r in self.runs.values() if r.task is not None]
        for run in list(self.runs.values()):
            self._stop(run, "the server is shutting down")
        if tasks:
            await asyncio.wait(tasks, timeout=within)
        if self._beating is not None:
            self._beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beating
            with contextlib.suppress(Exception):
                await self.store.gone(str(self.owner))
        with contextlib.suppress(Exception):
            await self.store.close()


def recorded_response(info: object, replay: ReplayLog) -> exec_pb2.ExecuteResponse:
    """The outcome to record: exit status, the output kept for it, the whole counts."""
    out, err = replay.kept.values()
    response = execute_response(info, out, err, text=False)  # type: ignore[arg-type]
    response.stdout_bytes, response.stderr_bytes = replay.stdout.total, replay.stderr.total
    response.stdout_truncated = replay.stdout.total > out.kept
    response.stderr_truncated = replay.stderr.total > err.kept
    return response


async def _undo_claim(store: Store, record: Record) -> None:
    """A claim whose caller went away before the run began: forget it if it landed."""
    with contextlib.suppress(Exception):
        found = await store.get(record.scope, record.key)
        if found is not None and found.owner == record.owner and found.outcome is None:
            await store.forget(record.scope, record.key)


def _forwarded_request(
    request: exec_pb2.ExecuteRequest, host: str, key: str
) -> exec_pb2.ExecuteRequest:
    """The Execute an owner gets for this key and host (ExecuteMany's per-host key too)."""
    forward = exec_pb2.ExecuteRequest()
    forward.CopyFrom(request)
    forward.host, forward.idempotency_key = host, key
    return forward


def _conflict(key: str) -> KeyConflict:
    return KeyConflict(
        f"idempotency_key {key!r} was used for a different request (host, command, env, "
        "working_dir, stdin or pty differ); nothing was run"
    )


def _iso(wall: float) -> str:
    """A wall-clock time for a message: 2026-12-07T21:07:03+00:00."""
    return datetime.datetime.fromtimestamp(wall, datetime.UTC).isoformat(timespec="seconds")


def _unknown(key: str, record: Record) -> OutcomeUnknown:
    return OutcomeUnknown(
        f"the command with idempotency_key {key!r} was started at "
        f"{_iso(record.started)} and its outcome is unknown (the scout "
        "process running it stopped); it is not run again under this key"
    )


def _retry_now(key: str) -> HostUnavailable:
    return HostUnavailable(
        f"the run with idempotency_key {key!r} ended before its command started; "
        "retry with the same key to run it"
    )


def _store_failed() -> StoreUnavailable:
    return StoreUnavailable("the durable store failed; nothing was run")
