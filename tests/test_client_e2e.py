"""The client against a scripted fake ExecService on 127.0.0.1:0 (no SSH involved).

The fake's behaviour is chosen by the command string, as asyncssh's test
server chooses by user name, so each test states the server side it needs.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2_grpc

from client import (
    Aborted,
    Cancelled,
    Client,
    CommandFailed,
    Exit,
    ExitStatus,
    HostNotFound,
    HostRejected,
    InvalidRequest,
    Overloaded,
    ScoutError,
    Stderr,
    Stdout,
    SyncClient,
    Timeout,
    Unavailable,
)
from client.cli import amain
from scout.v1 import exec_pb2, exec_pb2_grpc

S = grpc.StatusCode
pytestmark = pytest.mark.timeout(10)


@dataclass
class Seen:
    """What the fake server received, for the tests to assert on."""

    requests: list[exec_pb2.ExecuteRequest] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    time_remaining: list[float | None] = field(default_factory=list)
    stream_messages: list[exec_pb2.StreamRequest] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)


class FakeExec(exec_pb2_grpc.ExecServiceServicer):
    """An ExecService whose behaviour is picked by the request's command."""

    def __init__(self) -> None:
        self.seen = Seen()

    def _record(self, request: exec_pb2.ExecuteRequest, context: Any) -> None:
        self.seen.requests.append(request)
        self.seen.hosts.append(dict(context.invocation_metadata()).get("x-scout-host", ""))
        self.seen.time_remaining.append(context.time_remaining())
        self.seen.started.set()

    async def Execute(
        self, request: exec_pb2.ExecuteRequest, context: Any
    ) -> exec_pb2.ExecuteResponse:
        self._record(request, context)
        words = request.command.split(" ", 2)
        if words[0] == "fail":
            await context.abort(S[words[1]], words[2])
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
        await context.send_initial_metadata(())  # as scout: headers mean "started"
        if words[0] == "partial-then-abort":
            await context.write(exec_pb2.StreamResponse(stdout=b"partial"))
            await context.abort(S.ABORTED, "lost the connection to web1 after the command started")
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


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeExec, str]]:
    server = grpc.aio.server()
    servicer = FakeExec()
    exec_pb2_grpc.add_ExecServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


@pytest.fixture
async def client(fake: tuple[FakeExec, str]) -> AsyncIterator[Client]:
    async with Client(fake[1]) as c:
        yield c


# ---- Execute ---------------------------------------------------------------


async def test_execute_returns_the_outcome_as_payload(
    fake: tuple[FakeExec, str], client: Client
) -> None:
    result = await client.execute(
        "web1",
        "echo",
        stdin=b"hello",
        env={"LANG": "C"},
        timeout=2.0,
        max_output_bytes=10,
        text=True,
        working_dir="/tmp",
        pty=True,
        terminal_size=(120, 40),
    )
    assert (result.stdout, result.stderr, result.exit_code) == (b"hello", b"\xffwarn", 3)
    assert (result.stdout_text, result.stderr_text) == ("hello", "\ufffdwarn")
    assert result.stdout_truncated and not result.stderr_truncated
    assert result.stdout_bytes == 105
    assert result.duration == 0.25
    assert not result.ok
    with pytest.raises(CommandFailed, match="web1 exited with status 3"):
        result.check()
    sent = fake[0].seen.requests[0]
    assert (sent.host, sent.command, dict(sent.env)) == ("web1", "echo", {"LANG": "C"})
    assert (sent.max_output_bytes, sent.text, sent.working_dir, sent.pty) == (
        10,
        True,
        "/tmp",
        True,
    )
    assert sent.timeout.ToMilliseconds() == 2000
    assert (sent.terminal_size.columns, sent.terminal_size.rows) == (120, 40)
    assert fake[0].seen.hosts == ["web1"]
    remaining = fake[0].seen.time_remaining[0]
    assert remaining is not None and 2.0 < remaining <= 7.5  # timeout plus the 5 s margin


async def test_execute_without_timeout_leaves_it_to_the_server(
    fake: tuple[FakeExec, str], client: Client
) -> None:
    result = await client.execute("web1", "killed")
    assert (result.exit_code, result.signal, result.core_dumped, result.ok) == (
        -1,
        "TERM",
        True,
        False,
    )
    assert not fake[0].seen.requests[0].HasField("timeout")
    assert fake[0].seen.time_remaining[0] is None


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("NOT_FOUND", HostNotFound),
        ("FAILED_PRECONDITION", HostRejected),
        ("UNAVAILABLE", Unavailable),
        ("RESOURCE_EXHAUSTED", Overloaded),
        ("DEADLINE_EXCEEDED", Timeout),
        ("INVALID_ARGUMENT", InvalidRequest),
    ],
)
async def test_execute_maps_server_errors(client: Client, code: str, cls: type[ScoutError]) -> None:
    with pytest.raises(cls) as info:
        await client.execute("web1", f"fail {code} web1: something a person can act on")
    assert (info.value.code, info.value.host) == (code, "web1")
    assert str(info.value) == "web1: something a person can act on"


async def test_rpc_timeout_is_a_client_deadline(client: Client) -> None:
    started = time.monotonic()
    with pytest.raises(Timeout):
        await client.execute("web1", "sleep 5", rpc_timeout=0.2)
    assert time.monotonic() - started < 2


async def test_unreachable_server_is_unavailable() -> None:
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await server.stop(None)  # nothing listens on that port any more
    async with Client(f"127.0.0.1:{port}") as c:
        with pytest.raises(Unavailable) as info:
            await c.execute("web1", "true")
    assert info.value.host == "web1"


async def test_unroutable_host_name_is_refused_before_sending(client: Client) -> None:
    with pytest.raises(InvalidRequest, match="printable ASCII"):
        await client.execute("wéb1", "true")
    with pytest.raises(InvalidRequest):
        client.stream("web\n1", "true")


async def test_closed_client_refuses_calls(fake: tuple[FakeExec, str]) -> None:
    c = Client(fake[1])
    await c.execute("web1", "echo")
    await c.close()
    await c.close()
    with pytest.raises(RuntimeError, match="closed"):
        await c.execute("web1", "echo")


async def test_health(client: Client) -> None:
    assert await client.health() == "SERVING"


# ---- Stream ----------------------------------------------------------------


async def collect(call: Any) -> list[Any]:
    return [event async for event in call]


async def test_stream_stdin_signal_resize_then_close_stdin(
    fake: tuple[FakeExec, str], client: Client
) -> None:
    async with client.stream("web1", "cat", stdin=b"first ", pty=True) as call:
        await call.write(b"second")
        await call.write(b"")  # nothing to send: no message
        await call.signal("INT")
        await call.signal(signal.SIGTERM)
        await call.resize(100, 30)
        await call.close_stdin()
        await call.close_stdin()  # idempotent
        assert call.stdin_closed
        events = await collect(call)
    assert events == [
        Stdout(b"first "),
        Stdout(b"second"),
        Stderr(b"signal INT"),
        Stderr(b"signal SIGTERM"),
        Stderr(b"resize 100x30"),
        Exit(ExitStatus(exit_code=0, stdout_bytes=12)),
    ]
    assert call.exit_status == ExitStatus(exit_code=0, stdout_bytes=12)
    assert fake[0].seen.hosts == ["web1"]
    assert fake[0].seen.requests[0].pty
    kinds = [m.WhichOneof("event") for m in fake[0].seen.stream_messages]
    assert kinds == ["stdin", "signal", "signal", "resize", "close_stdin"]


async def test_stream_signal_reported_in_exit(client: Client) -> None:
    async with client.stream("web1", "wait-signal") as call:
        await call.signal("INT")
        events = await collect(call)
    assert events[-1] == Exit(ExitStatus(exit_code=-1, signal="INT"))
    assert call.exit_status is not None and not call.exit_status.ok


@pytest.mark.parametrize(
    ("code", "cls"), [("NOT_FOUND", HostNotFound), ("RESOURCE_EXHAUSTED", Overloaded)]
)
async def test_stream_maps_errors_at_start(
    client: Client, code: str, cls: type[ScoutError]
) -> None:
    with pytest.raises(cls, match="web9 is not in the inventory") as info:
        async with client.stream("web9", f"fail {code} web9 is not in the inventory") as call:
            await collect(call)
    assert info.value.host == "web9"


async def test_stream_maps_errors_after_output(client: Client) -> None:
    seen: list[Any] = []
    with pytest.raises(Aborted, match="after the command started"):
        async with client.stream("web1", "partial-then-abort") as call:
            async for event in call:
                seen.append(event)
    assert seen == [Stdout(b"partial")]


async def test_leaving_the_block_cancels_the_rpc(
    fake: tuple[FakeExec, str], client: Client
) -> None:
    async with client.stream("web1", "hang") as call:
        await asyncio.wait_for(fake[0].seen.started.wait(), 2)  # the handler runs
    await asyncio.wait_for(fake[0].seen.cancelled.wait(), 2)
    assert "web1" in repr(call)


async def test_our_own_cancel_reads_as_cancelled(client: Client) -> None:
    async with client.stream("web1", "hang") as call:
        call.cancel()
        with pytest.raises(Cancelled):
            await anext(call)
        with pytest.raises(Cancelled):
            await call.write(b"late")


async def test_a_cancelled_task_keeps_its_cancelled_error(client: Client) -> None:
    async with client.stream("web1", "hang") as call:
        reader = asyncio.ensure_future(anext(call))
        await asyncio.sleep(0.05)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader


async def test_writes_after_the_command_ended_are_dropped(client: Client) -> None:
    async with client.stream("web1", "exit-now 7") as call:
        events = await collect(call)
        assert events == [Exit(ExitStatus(exit_code=7))]
        await call.write(b"too late")  # like writing to a closed pipe: dropped
        await call.signal("INT")
        await call.close_stdin()
        with pytest.raises(RuntimeError, match="stdin is closed"):
            await call.write(b"x")


async def test_stream_must_be_entered(client: Client) -> None:
    call = client.stream("web1", "cat")
    with pytest.raises(RuntimeError, match="async with"):
        await call.write(b"x")
    assert "not started" in repr(call)


# ---- SyncClient ------------------------------------------------------------


async def test_sync_client_reuses_its_channel(fake: tuple[FakeExec, str]) -> None:
    def use() -> tuple[Any, Any, str]:
        with SyncClient(fake[1]) as c:
            first = c.execute("web1", "echo", stdin=b"a")
            second = c.execute("web2", "echo", stdin=b"b", timeout=1)
            with pytest.raises(HostNotFound):
                c.execute("web3", "fail NOT_FOUND no web3")
            status = c.health()
        c.close()  # idempotent
        with pytest.raises(RuntimeError, match="closed"):
            c.execute("web1", "echo")
        return first, second, status

    first, second, status = await asyncio.to_thread(use)
    assert (first.stdout, second.stdout, status) == (b"a", b"b", "SERVING")
    assert fake[0].seen.hosts == ["web1", "web2", "web3"]


# ---- the scout command -----------------------------------------------------


async def run_cli(argv: list[str], stdin: bytes | None) -> tuple[int, bytes, bytes]:
    """Run the scout command in-process; stdin arrives through a real pipe."""
    out, err = io.BytesIO(), io.BytesIO()
    if stdin is None:
        return await amain(argv, stdin=None, stdout=out, stderr=err), out.getvalue(), err.getvalue()
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        with os.fdopen(write_fd, "wb") as pipe_out:
            pipe_out.write(stdin)

    writer = threading.Thread(target=feed, daemon=True)  # the pipe holds only 64 KiB
    writer.start()
    with os.fdopen(read_fd, "rb") as pipe_in:
        code = await amain(argv, stdin=pipe_in, stdout=out, stderr=err)
    writer.join(2)
    return code, out.getvalue(), err.getvalue()


async def test_cli_forwards_stdin_and_streams_output(fake: tuple[FakeExec, str]) -> None:
    data = os.urandom(200_000)  # several stdin chunks
    code, out, err = await run_cli(
        ["exec", "--target", fake[1], "--env", "A=1", "--timeout", "3", "web1", "--", "cat"], data
    )
    assert (code, out, err) == (0, data, b"")
    sent = fake[0].seen.requests[0]
    assert (sent.command, dict(sent.env), sent.timeout.seconds) == ("cat", {"A": "1"}, 3)
    assert fake[0].seen.hosts == ["web1"]


async def test_cli_sends_eof_at_once_without_stdin(fake: tuple[FakeExec, str]) -> None:
    code, out, _ = await run_cli(["exec", "--target", fake[1], "web1", "--", "cat"], None)
    assert (code, out) == (0, b"")
    assert fake[0].seen.requests[0].close_stdin  # EOF in the start message
    assert fake[0].seen.stream_messages == []  # nothing written after it


async def test_cli_exit_codes(fake: tuple[FakeExec, str]) -> None:
    target = ["--target", fake[1]]
    for _ in range(20):  # the command ends at once: the EOF write races the end
        assert (await run_cli(["exec", *target, "web1", "--", "exit-now", "5"], None))[:3:2] == (
            5,
            b"",
        )
        done = await run_cli(["exec", *target, "web1", "--", "exit-now -1 TERM"], None)
        assert done[:3:2] == (143, b"")
    code, _, err = await run_cli(
        ["exec", *target, "web1", "--", "fail NOT_FOUND no host web1"], b""
    )
    assert (code, err) == (255, b"scout: no host web1\n")


async def test_cli_health(fake: tuple[FakeExec, str]) -> None:
    assert await run_cli(["health", "--target", fake[1]], None) == (0, b"SERVING\n", b"")
