"""A keyed command's outcome as the store keeps it, and as a later caller gets it back.

An outcome is the ExecuteResponse of a command that ended (output kept up to
`[durable] max_outcome_bytes`, no text: text is made for each answer, as asked), or the
status a run ended with when it did not (its code, message and whether the command may
have started). Encoded as one tag byte and the serialized message, so the store keeps
opaque bytes and a record written by one version of scout reads in the next.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import grpc

from scout.v1 import exec_pb2

from .errors import RecordedFailure
from .output import MAX_MESSAGE, STDERR, STDOUT
from .replay import STREAM_NAMES
from .responses import capped_text

_RESPONSE, _FAILURE = b"R", b"F"


@dataclass(frozen=True)
class Outcome:
    """How a keyed run ended: `response`, or `code`/`message` when it ended in an error."""

    host: str  # where it ran: an attach must name it
    response: exec_pb2.ExecuteResponse | None = None
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""
    started: bool = True

    def encode(self) -> bytes:
        """The bytes the store keeps: tag, host (length first), then the body."""
        host = self.host.encode()
        head = len(host).to_bytes(2, "big") + host
        if self.response is not None:
            return _RESPONSE + head + self.response.SerializeToString()
        body = {"code": self.code.name, "message": self.message, "started": self.started}
        return _FAILURE + head + json.dumps(body).encode()

    @classmethod
    def decode(cls, data: bytes) -> Outcome:
        """An outcome from the store's bytes."""
        tag, size = data[:1], int.from_bytes(data[1:3], "big")
        host, body = data[3 : 3 + size].decode(), data[3 + size :]
        if tag == _RESPONSE:
            return cls(host, response=exec_pb2.ExecuteResponse.FromString(body))
        fields = json.loads(body)
        code = grpc.StatusCode[fields["code"]]
        return cls(host, code=code, message=fields["message"], started=bool(fields["started"]))

    def error(self) -> RecordedFailure:
        """The recorded failure, to raise for the caller."""
        return RecordedFailure(self.code.name, self.message, started=self.started)

    def answer(self, *, text: bool) -> exec_pb2.ExecuteResponse:
        """Execute's answer (raises the recorded failure): text made if asked."""
        if self.response is None:
            raise self.error()
        response = exec_pb2.ExecuteResponse()
        response.CopyFrom(self.response)
        if text:
            response.stdout_text = capped_text(response.stdout, 0)
            response.stderr_text = capped_text(response.stderr, 0)
        return response


def replayed_output(
    response: exec_pb2.ExecuteResponse, offsets: dict[int, int]
) -> list[exec_pb2.StreamResponse]:
    """A finished command's recorded output from the offsets: the kept bytes, then a
    `lost` for what the record did not keep (stdout first, then stderr)."""
    messages = []
    for kind, data, total in (
        (STDOUT, response.stdout, response.stdout_bytes),
        (STDERR, response.stderr, response.stderr_bytes),
    ):
        start = offsets[kind]
        for at in range(start, len(data), MAX_MESSAGE):
            chunk = data[at : at + MAX_MESSAGE]
            message = (
                exec_pb2.StreamResponse(stdout=chunk)
                if kind == STDOUT
                else exec_pb2.StreamResponse(stderr=chunk)
            )
            message.offset = at
            messages.append(message)
        gone = total - max(start, len(data))
        if gone > 0:
            messages.append(
                exec_pb2.StreamResponse(lost=exec_pb2.Lost(stream=STREAM_NAMES[kind], bytes=gone))
            )
    return messages
