"""The contract's answers, built from a command's outcome: ExecuteResponse and ExitStatus,
and the output messages of Stream and ExecuteMany.

ExecuteResponse and ExitStatus carry the same outcome (exit code or signal, byte counts,
truncation, duration); this is the one place that copies it into the generated messages.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from google.protobuf import duration_pb2

from scout.v1 import exec_pb2

from .command import ExitInfo
from .output import STDOUT, CappedBuffer, OutputQueue, chunks

Chunk = TypeVar("Chunk", exec_pb2.StreamResponse, exec_pb2.OutputChunk)


def duration(seconds: float) -> duration_pb2.Duration:
    """A protobuf Duration from seconds."""
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(max(seconds, 0) * 1e9))
    return d


def capped_text(data: bytes, cap: int) -> str:
    """UTF-8 text of data (bad bytes replaced), at most cap bytes once encoded."""
    text = data.decode("utf-8", "replace")
    if cap and len(text) * 3 > cap and len(encoded := text.encode()) > cap:
        text = encoded[:cap].decode("utf-8", "ignore")
    return text


def _outcome(info: ExitInfo, out: CappedBuffer, err: CappedBuffer) -> dict[str, object]:
    """The fields ExecuteResponse and ExitStatus share."""
    return {
        "exit_code": info.exit_code,
        "signal": info.signal,
        "core_dumped": info.core_dumped,
        "stdout_bytes": out.total,
        "stderr_bytes": err.total,
        "stdout_truncated": out.truncated,
        "stderr_truncated": err.truncated,
        "duration": duration(info.ended - info.started),
    }


def execute_response(
    info: ExitInfo, out: CappedBuffer, err: CappedBuffer, *, text: bool
) -> exec_pb2.ExecuteResponse:
    """Execute's answer: the outcome, the kept output, and its text form if asked."""
    response = exec_pb2.ExecuteResponse(**_outcome(info, out, err))  # type: ignore[arg-type]
    if out.collect:
        response.stdout, response.stderr = out.value(), err.value()
        if text:
            response.stdout_text = capped_text(response.stdout, out.cap)
            response.stderr_text = capped_text(response.stderr, err.cap)
    return response


def exit_status(info: ExitInfo, out: CappedBuffer, err: CappedBuffer) -> exec_pb2.StreamResponse:
    """Stream's last message."""
    return exec_pb2.StreamResponse(exit=exec_pb2.ExitStatus(**_outcome(info, out, err)))  # type: ignore[arg-type]


def recorded_exit(response: exec_pb2.ExecuteResponse) -> exec_pb2.StreamResponse:
    """Stream's last message for a recorded ExecuteResponse (a keyed run's): every field
    ExitStatus has, copied from the response's field of the same name."""
    status = exec_pb2.ExitStatus()
    for field in status.DESCRIPTOR.fields:
        value = getattr(response, field.name)
        if field.message_type is not None:
            getattr(status, field.name).CopyFrom(value)
        else:
            setattr(status, field.name, value)
    return exec_pb2.StreamResponse(exit=status)


async def send_output(
    queue: OutputQueue, text: bool, message: type[Chunk], send: Callable[[Chunk], Awaitable[None]]
) -> None:
    """The command's output as it comes, one `message` (Stream's StreamResponse or
    ExecuteMany's OutputChunk) a chunk, each handed to `send`, which may wait (gRPC's
    flow control, the fan-out's queue), so a slow reader slows the command."""
    offsets = {1: 0, 2: 0}  # Stream's chunks say where they start, for an attach later
    stream = message is exec_pb2.StreamResponse
    async for kind, data, decoded in chunks(queue, text):
        msg = message(stdout=data) if kind == STDOUT else message(stderr=data)
        if decoded is not None:
            msg.text = decoded
        if stream:
            msg.offset = offsets[kind]  # type: ignore[attr-defined]
            offsets[kind] += len(data)
        await send(msg)
