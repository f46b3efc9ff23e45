"""Stream for keyed commands: the starter and every later `attach` read the same run.

A caller attached to a run reads its output through a `server.replay.Reader` from the
offsets it asked for (the starter from 0), gets `lost` for what the buffer no longer has,
then live output; its stdin, signals and resizes reach the command as the starter's do.
When it goes away the run goes on or stops as `server.durable` decides. A finished run
(the key's outcome is recorded) is replayed from the record, then its `exit`.
"""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import AsyncIterator
from typing import Any

from scout.v1 import exec_pb2

from .audit import CallRecord
from .command import RunningCommand
from .config import ExecSettings
from .durable import Durable, KeyedRun
from .errors import STARTED_KEY, HostUnavailable, InvalidRequest, KeyNotFound
from .idempotency import check_key
from .logs import REQUEST_ID_KEY
from .outcomes import Outcome, replayed_output
from .output import STDERR, STDOUT
from .replay import STREAM_NAMES, Entry, Item, Lost
from .requests import is_host_name
from .responses import recorded_exit
from .rpc import Context
from .stream import StdinPump

Offsets = dict[int, int]


def attach_offsets(attach: exec_pb2.Attach) -> Offsets:
    """The offsets an attach asks for."""
    return {STDOUT: attach.stdout_offset, STDERR: attach.stderr_offset}


def check_attach(attach: exec_pb2.Attach) -> None:
    """An attach names a key and a host: the request's key, or an ExecuteMany host's
    `KEY/HOST` (HOST being attach.host)."""
    if not attach.host:
        raise InvalidRequest("attach.host: required, the host the command runs on")
    if not is_host_name(attach.host):
        raise InvalidRequest("attach.host: not a host name")
    key, slash, host = attach.idempotency_key.partition("/")
    check_key(key, "attach.idempotency_key")
    if slash and host != attach.host:
        raise InvalidRequest(
            "attach.idempotency_key: KEY/HOST (an ExecuteMany host's key) must name "
            "attach.host after the slash"
        )


def check_offsets(ends: Offsets, offsets: Offsets) -> None:
    """Offsets past what a stream has so far are refused, naming the field."""
    for kind, offset in offsets.items():
        if offset > ends[kind]:
            name = STREAM_NAMES[kind]
            raise InvalidRequest(
                f"attach.{name}_offset: {offset} is past the {ends[kind]} bytes of {name} "
                "the command has written"
            )


async def follow(
    durable: Durable,
    run: KeyedRun,
    offsets: Offsets,
    *,
    starter: bool,
    requests: AsyncIterator[exec_pb2.StreamRequest],
    context: Context,
    call: CallRecord,
    text: bool,
    limits: ExecSettings,
) -> None:
    """Read a run from the offsets until its end; pass the caller's messages in."""
    durable.join(run)
    pump: StdinPump | None = None
    reader = None
    try:
        command = await _started(run)
        if command is None:  # it ended before the command started: its outcome says why
            outcome = await _done(run)
            await _finish(outcome, context, call)
            return
        if not starter:
            check_offsets({k: run.log.end(k) for k in (STDOUT, STDERR)}, offsets)
        reader = run.log.reader(offsets[STDOUT], offsets[STDERR])
        await context.send_initial_metadata(
            ((STARTED_KEY, "true"), (REQUEST_ID_KEY, call.request_id))
        )
        pump = StdinPump(command, requests, reader, limits.stream_messages_per_second)
        pump.start(initial=starter)
        decoders = {k: codecs.getincrementaldecoder("utf-8")("replace") for k in STREAM_NAMES}
        while (items := await reader.read()) is not None:
            for item in items:
                await context.write(_message(item, decoders if text else None))
        outcome = await _done(run)
        await _finish(outcome, context, call)
        await pump.finish()
    finally:
        if reader is not None:
            reader.leave()
        if pump is not None:
            await pump.stop()
        durable.leave(run)


async def replay_record(
    outcome: Outcome, offsets: Offsets, context: Context, call: CallRecord, *, text: bool
) -> None:
    """A finished run's recorded output from the offsets, then its exit (or its error)."""
    call.replayed = True
    if outcome.response is not None:
        response = outcome.response
        ends = {STDOUT: response.stdout_bytes, STDERR: response.stderr_bytes}
        check_offsets(ends, offsets)
        await context.send_initial_metadata(
            ((STARTED_KEY, "true"), (REQUEST_ID_KEY, call.request_id))
        )
        for message in replayed_output(response, offsets):
            if text and message.WhichOneof("event") in ("stdout", "stderr"):
                message.text = getattr(message, message.WhichOneof("event")).decode(
                    "utf-8", "replace"
                )
            await context.write(message)
    await _finish(outcome, context, call)


async def _started(run: KeyedRun) -> RunningCommand | None:
    return await asyncio.shield(run.started)


async def _done(run: KeyedRun) -> Outcome:
    return await asyncio.shield(run.done)


async def _finish(outcome: Outcome, context: Context, call: CallRecord) -> None:
    """The run's end for this caller: `exit`, or the run's error raised."""
    if outcome.response is None:
        raise outcome.error()
    response = outcome.response
    call.exit_code, call.signal = response.exit_code, response.signal
    await context.write(recorded_exit(response))


def _message(item: Item, decoders: dict[int, Any] | None) -> exec_pb2.StreamResponse:
    if isinstance(item, Lost):
        lost = exec_pb2.Lost(stream=STREAM_NAMES[item.kind], bytes=item.count)
        return exec_pb2.StreamResponse(lost=lost)
    assert isinstance(item, Entry)
    message = (
        exec_pb2.StreamResponse(stdout=item.data)
        if item.kind == STDOUT
        else exec_pb2.StreamResponse(stderr=item.data)
    )
    message.offset = item.offset
    if decoders is not None:
        message.text = decoders[item.kind].decode(item.data)
    return message


def elsewhere(key: str) -> HostUnavailable:
    """An attach for a run another replica owns."""
    return HostUnavailable(
        f"the command with idempotency_key {key!r} is running on another replica; retry",
        started=True,
    )


def not_found(key: str) -> KeyNotFound:
    """The same answer for a key never used and another caller's key."""
    return KeyNotFound(f"no command with idempotency_key {key!r} for this caller")
