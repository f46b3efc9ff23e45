"""The client against a scripted fake ExecService on 127.0.0.1:0 (no SSH involved).

The fake (tests/fakeexec.py) plays the server side each test names in its command.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import signal
import threading
import time
from typing import Any

import grpc
import pytest

from client import (
    Aborted,
    Cancelled,
    Client,
    CommandFailed,
    ExecOptions,
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

from .fakeexec import FakeExec

S = grpc.StatusCode
pytestmark = pytest.mark.timeout(10)


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
        close_stdin=True,
        idempotency_key="deploy-42",
        detach_grace=30,
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
    # every option but rpc_timeout (the gRPC deadline, not a request field) is sent
    option_names = {f.name for f in dataclasses.fields(ExecOptions)} - {"rpc_timeout"}
    assert {f.name for f, _ in sent.ListFields()} == option_names | {"host", "command"}
    assert (sent.host, sent.command, dict(sent.env)) == ("web1", "echo", {"LANG": "C"})
    assert (sent.max_output_bytes, sent.text, sent.working_dir, sent.pty) == (
        10,
        True,
        "/tmp",
        True,
    )
    assert sent.timeout.ToMilliseconds() == 2000
    assert (sent.terminal_size.columns, sent.terminal_size.rows) == (120, 40)
    assert (sent.idempotency_key, sent.detach_grace.seconds) == ("deploy-42", 30)
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
        await client.execute("web1", f"refuse {code} web1: something a person can act on")
    assert (info.value.code, info.value.host) == (code, "web1")
    assert str(info.value) == "web1: something a person can act on"
    assert not info.value.may_have_run  # the server marked it x-scout-started: false


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
    assert not info.value.may_have_run  # the request was never sent


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
        ["exec", *target, "web1", "--", "refuse NOT_FOUND no host web1"], b""
    )
    assert (code, err) == (125, b"scout: no host web1 (the command did not run)\n")


async def test_cli_health(fake: tuple[FakeExec, str]) -> None:
    assert await run_cli(["health", "--target", fake[1]], None) == (0, b"SERVING\n", b"")


async def test_cli_health_names_the_service(fake: tuple[FakeExec, str]) -> None:
    target = ["--target", fake[1]]
    assert await run_cli(["health", *target, "--service", "scout.v1.ExecService"], None) == (
        0,
        b"scout.v1.ExecService: SERVING\n",
        b"",
    )
    assert await run_cli(["health", *target, "--service", "maintenance"], None) == (
        1,
        b"maintenance: NOT_SERVING\n",
        b"",
    )
    assert await run_cli(["health", *target, "--service", "nope"], None) == (
        1,
        b"nope: SERVICE_UNKNOWN\n",
        b"",
    )


async def test_cli_health_failure_says_what_failed() -> None:
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await server.stop(None)  # nothing listens there any more
    code, out, err = await run_cli(["health", "--target", f"127.0.0.1:{port}"], None)
    assert (code, out) == (125, b"")  # nothing ran
    assert err.startswith(b"scout: ")
    assert b"host ''" not in err
    assert b"command" not in err  # health runs no command: no "did not run" note


async def test_cli_options_after_the_host_are_options(fake: tuple[FakeExec, str]) -> None:
    argv = ["exec", "web1", "--target", fake[1], "--timeout", "1.5", "--cwd", "/srv"]
    argv += ["--tty", "--env", "A=1", "--env=B=2", "--", "exit-now", "0"]
    assert (await run_cli(argv, None))[0] == 0
    sent = fake[0].seen.requests[0]
    assert sent.command == "exit-now 0"
    assert sent.timeout.ToMilliseconds() == 1500
    assert (sent.working_dir, sent.pty, dict(sent.env)) == ("/srv", True, {"A": "1", "B": "2"})
    assert not sent.HasField("terminal_size")  # our stdout is no terminal here


async def test_options_value_and_keywords_build_one_request(
    fake: tuple[FakeExec, str], client: Client
) -> None:
    base = ExecOptions(stdin=b"in", env={"A": "1"}, timeout=2.0, working_dir="/tmp")
    await client.execute("web1", "echo", base, text=True, timeout=3.0)
    await client.execute("web1", "echo", options=base)
    async with client.stream("web1", "cat", base, close_stdin=True) as call:
        assert [e async for e in call] == [
            Stdout(b"in"),
            Exit(ExitStatus(exit_code=0, stdout_bytes=2)),
        ]
    with_keywords, plain, streamed = fake[0].seen.requests
    assert (with_keywords.text, with_keywords.timeout.seconds, with_keywords.stdin) == (
        True,
        3,
        b"in",
    )
    assert (plain.text, plain.timeout.seconds, dict(plain.env)) == (False, 2, {"A": "1"})
    assert streamed.close_stdin and streamed.working_dir == "/tmp"
    assert base.timeout == 2.0  # the value itself never changes
    with pytest.raises(TypeError, match="timout"):
        await client.execute("web1", "echo", timout=1)
    with pytest.raises(ValueError, match="timeout must be positive"):
        client.stream("web1", "cat", timeout=0)
