"""A scripted fake ExecService for the client's tests (no SSH involved).

The fake's behaviour is chosen by the command string, as asyncssh's test
server chooses by user name, so each test states the server side it needs:

    fail CODE TEXT          abort with CODE and no x-scout-started mark (like a proxy)
    refuse CODE TEXT        abort with CODE marked x-scout-started: false (nothing ran)
    sleep SECS              Execute: wait, then answer as echo does
    killed                  Execute: answer "killed by TERM"
    hang                    Stream: send headers, then wait 30 s
    partial-then-abort      Stream: headers, some stdout, then ABORTED
    output-then-refuse      Stream: headers, some stdout, then a (wrong) "false" mark
    exit-now CODE [SIGNAL]  Stream: exit at once
    wait-signal             Stream: exit with the first signal received
    anything else           Execute: echo stdin, exit 3; Stream: cat

Run as `python -m tests.fakeexec`, it serves on 127.0.0.1:0, prints "port N",
then "started HOST" for every call it receives, so a test can kill it mid-call.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from scout.v1 import exec_pb2, exec_pb2_grpc

S = grpc.StatusCode
NOTHING_RAN = (("x-scout-started", "false"),)


@dataclass
class Seen:
    """What the fake server received, for the tests to assert on."""

    requests: list[exec_pb2.ExecuteRequest] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    peer_names: list[list[bytes]] = field(default_factory=list)
    time_remaining: list[float | None] = field(default_factory=list)
    stream_messages: list[exec_pb2.StreamRequest] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


class FakeExec(exec_pb2_grpc.ExecServiceServicer):
    """An ExecService whose behaviour is picked by the request's command."""

    def __init__(self, on_call: Callable[[str], None] | None = None) -> None:
        self.seen = Seen()
        self._on_call = on_call

    def _record(self, request: exec_pb2.ExecuteRequest, context: Any) -> None:
        metadata = {key: str(value) for key, value in context.invocation_metadata()}
        self.seen.requests.append(request)
        self.seen.metadata.append(metadata)
        self.seen.hosts.append(metadata.get("x-scout-host", ""))
        self.seen.peer_names.append(context.auth_context().get("x509_common_name", []))
        self.seen.time_remaining.append(context.time_remaining())
        self.seen.started.set()
        if self._on_call is not None:
            self._on_call(request.host)

    async def Execute(
        self, request: exec_pb2.ExecuteRequest, context: Any
    ) -> exec_pb2.ExecuteResponse:
        self._record(request, context)
        words = request.command.split(" ", 2)
        if words[0] == "fail":
            await context.abort(S[words[1]], words[2])
        if words[0] == "refuse":
            await context.abort(S[words[1]], words[2], trailing_metadata=NOTHING_RAN)
        if words[0] == "sleep":
            await asyncio.sleep(float(words[1]))
        if words[0] == "killed":
            return exec_pb2.ExecuteResponse(exit_code=-1, signal="TERM", core_dumped=True)
        response = exec_pb2.ExecuteResponse(
            stdout=request.stdin,
            stderr=b"\xffwarn",
            exit_code=3,
            stdout_bytes=len(request.stdin) + 100,
            stdout_truncated=True,
        )
        response.duration.FromMilliseconds(250)
        if request.text:
            response.stdout_text = request.stdin.decode(errors="replace")
            response.stderr_text = "\ufffdwarn"
        return response

    async def Stream(self, request_iterator: Any, context: Any) -> None:
        first = await context.read()
        self._record(first.start, context)
        words = first.start.command.split(" ", 2)
        try:
            await self._script(words, first.start, context)
        except asyncio.CancelledError:
            self.seen.cancelled.set()
            raise

    async def _script(self, words: list[str], start: exec_pb2.ExecuteRequest, context: Any) -> None:
        """Play one scripted stream; `cat` echoes stdin and reports signals and resizes."""
        if words[0] == "fail":  # before the command started: no response headers
            await context.abort(S[words[1]], words[2])
        if words[0] == "refuse":
            await context.abort(S[words[1]], words[2], trailing_metadata=NOTHING_RAN)
        await context.send_initial_metadata(())  # as scout: headers mean "started"
        if words[0] == "partial-then-abort":
            await context.write(exec_pb2.StreamResponse(stdout=b"partial"))
            await context.abort(S.ABORTED, "lost the connection to web1 after the command started")
        if words[0] == "output-then-refuse":
            await context.write(exec_pb2.StreamResponse(stdout=b"partial"))
            await context.abort(S.UNAVAILABLE, "a wrong mark", trailing_metadata=NOTHING_RAN)
        if words[0] == "hang":
            await asyncio.sleep(30)
        if words[0] == "exit-now":
            signal_name = words[2] if len(words) > 2 else ""
            await context.write(_exit(exit_code=int(words[1]), signal=signal_name))
            return
        if words[0] == "wait-signal":
            while (message := await context.read()) is not grpc.aio.EOF:
                self.seen.stream_messages.append(message)
                if message.WhichOneof("event") == "signal":
                    await context.write(exec_pb2.StreamResponse(stderr=b"got it\n"))
                    await context.write(_exit(exit_code=-1, signal=message.signal))
                    return
            await context.write(_exit(exit_code=0))
            return
        # cat: stdout echoes stdin, stderr narrates signals and resizes, EOF ends it
        # (close_stdin or a half-close).
        total = 0
        if start.stdin:
            total += len(start.stdin)
            await context.write(exec_pb2.StreamResponse(stdout=start.stdin))
        while not start.close_stdin and (message := await context.read()) is not grpc.aio.EOF:
            self.seen.stream_messages.append(message)
            kind = message.WhichOneof("event")
            if kind == "stdin":
                total += len(message.stdin)
                await context.write(exec_pb2.StreamResponse(stdout=message.stdin))
            elif kind == "signal":
                await context.write(
                    exec_pb2.StreamResponse(stderr=f"signal {message.signal}".encode())
                )
            elif kind == "resize":
                size = f"resize {message.resize.columns}x{message.resize.rows}"
                await context.write(exec_pb2.StreamResponse(stderr=size.encode()))
            elif kind == "close_stdin":
                break
        await context.write(_exit(exit_code=0, stdout_bytes=total))


def _exit(**fields: Any) -> exec_pb2.StreamResponse:
    return exec_pb2.StreamResponse(exit=exec_pb2.ExitStatus(**fields))


@asynccontextmanager
async def serving(
    servicer: FakeExec, credentials: grpc.ServerCredentials | None = None
) -> AsyncIterator[str]:
    """Serve servicer on 127.0.0.1:0; yield the target.

    The health service knows "" and "scout.v1.ExecService" (SERVING) and
    "maintenance" (NOT_SERVING).
    """
    server = grpc.aio.server()
    exec_pb2_grpc.add_ExecServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    status = health_pb2.HealthCheckResponse
    await health_servicer.set("scout.v1.ExecService", status.SERVING)
    await health_servicer.set("maintenance", status.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def _serve_forever() -> None:
    """Serve until killed, telling the parent the port and each call on stdout."""

    def tell(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    async with serving(FakeExec(on_call=lambda host: tell(f"started {host}"))) as target:
        tell(f"port {target.rsplit(':', 1)[1]}")
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(_serve_forever())
