"""Command lifecycle against real SSH servers: deadlines, cancellation, signals, caps, pty.

Remote processes are processes of this machine (both SSH servers run on loopback), so
"the remote command is gone" is checked in the process list. Each test uses a command
with a unique argument so it cannot see another test's processes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from scout.v1 import exec_pb2
from server.config import Config, HostConfig
from testkit.processes import gone, marker, process_list
from testkit.scripted import ScriptedServer
from testkit.sshd import OpenSSHServer

from .scoutd import Scout, running_scout, secs

TARGETS = ["shell", "openssh"]


@pytest.fixture(params=TARGETS)
def target(
    request: pytest.FixtureRequest, shell_server: ScriptedServer, openssh: OpenSSHServer
) -> HostConfig:
    """Host "t": the in-process SSH server or the real OpenSSH sshd."""
    server = openssh if request.param == "openssh" else shell_server
    return server.host_config("t")


@pytest.fixture
async def scout(target: HostConfig) -> AsyncIterator[Scout]:
    async with running_scout(Config(hosts={"t": target})) as s:
        yield s


async def test_request_timeout_stops_the_remote_command(scout: Scout) -> None:
    m = marker()
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await scout.execute(host="t", command=f"sleep {m}", timeout=secs(1))
    elapsed = time.monotonic() - started
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "and was stopped" in (info.value.details() or "")
    assert 0.9 < elapsed < 3.0
    assert await gone(f"sleep {m}", within=1.0)
    assert scout.app.pool.gauges()["channels_in_use"] == 0


async def test_rpc_deadline_stops_the_remote_command(scout: Scout) -> None:
    m = marker()
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await scout.execute(rpc_timeout=1.0, host="t", command=f"sleep {m}")
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2.0
    assert await gone(f"sleep {m}", within=2.0)
    await asyncio.sleep(0.2)
    assert scout.app.pool.gauges()["channels_in_use"] == 0


async def test_cancelled_stream_stops_the_remote_command(scout: Scout) -> None:
    m = marker()
    start = exec_pb2.ExecuteRequest(host="t", command=f"echo started; sleep {m}")
    call = scout.stub.Stream(iter([exec_pb2.StreamRequest(start=start)]), timeout=30)
    assert (await call.read()).stdout == b"started\n"
    assert process_list(f"sleep {m}")
    call.cancel()
    assert await gone(f"sleep {m}", within=1.0)
    await asyncio.sleep(0.2)
    assert scout.app.pool.gauges()["channels_in_use"] == 0


async def test_signal_over_stream_ends_the_command(scout: Scout) -> None:
    m = marker()
    queue: asyncio.Queue[exec_pb2.StreamRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[exec_pb2.StreamRequest]:
        while (item := await queue.get()) is not None:
            yield item

    await queue.put(
        exec_pb2.StreamRequest(
            start=exec_pb2.ExecuteRequest(host="t", command=f"echo ready; exec sleep {m}")
        )
    )
    call = scout.stub.Stream(requests(), timeout=30)
    assert (await call.read()).stdout == b"ready\n"
    await queue.put(exec_pb2.StreamRequest(signal="INT"))
    last = await asyncio.wait_for(call.read(), 5)
    assert last.WhichOneof("event") == "exit"
    assert last.exit.signal == "INT" and last.exit.exit_code == -1
    await queue.put(None)
    assert await gone(f"sleep {m}", within=1.0)


async def test_output_cap_keeps_the_head_and_counts_the_rest(scout: Scout) -> None:
    r = await scout.execute(
        host="t", command="head -c 10485760 /dev/zero", max_output_bytes=1 << 19
    )
    assert len(r.stdout) == 1 << 19 and r.stdout_truncated
    assert r.stdout_bytes == 10 << 20 and r.exit_code == 0
    assert not r.stderr_truncated


async def test_stream_honours_a_cap_when_set(scout: Scout) -> None:
    start = exec_pb2.ExecuteRequest(host="t", command="seq 100000", max_output_bytes=1000)
    responses = [r async for r in scout.stub.Stream(iter([exec_pb2.StreamRequest(start=start)]))]
    out = b"".join(r.stdout for r in responses)
    assert len(out) == 1000
    assert responses[-1].exit.stdout_truncated and responses[-1].exit.stdout_bytes == 588895


async def test_stream_text_keeps_split_characters_whole(scout: Scout) -> None:
    # "é" is two bytes; the pause splits it across two chunks.
    start = exec_pb2.ExecuteRequest(
        host="t", command=r"printf '\303'; sleep 0.3; printf '\251\377'", text=True
    )
    responses = [r async for r in scout.stub.Stream(iter([exec_pb2.StreamRequest(start=start)]))]
    assert b"".join(r.stdout for r in responses) == b"\xc3\xa9\xff"
    assert "".join(r.text for r in responses) == "\u00e9\ufffd"


async def test_pty_has_a_terminal_of_the_asked_size(scout: Scout) -> None:
    r = await scout.execute(
        host="t",
        command="stty size; test -t 0 && echo tty",
        pty=True,
        terminal_size=exec_pb2.TerminalSize(columns=123, rows=45),
    )
    assert r.stdout.replace(b"\r\n", b"\n") == b"45 123\ntty\n"


async def test_no_pty_by_default(scout: Scout) -> None:
    r = await scout.execute(host="t", command="test -t 0 || echo notty")
    assert r.stdout == b"notty\n"


async def test_stream_resize_reaches_the_pty(scout: Scout) -> None:
    queue: asyncio.Queue[exec_pb2.StreamRequest | None] = asyncio.Queue()

    async def requests() -> AsyncIterator[exec_pb2.StreamRequest]:
        while (item := await queue.get()) is not None:
            yield item

    start = exec_pb2.ExecuteRequest(
        host="t",
        command="stty size; read line; stty size",
        pty=True,
        terminal_size=exec_pb2.TerminalSize(columns=80, rows=24),
    )
    await queue.put(exec_pb2.StreamRequest(start=start))
    call = scout.stub.Stream(requests(), timeout=30)
    first = await call.read()
    assert first.stdout.strip() == b"24 80"
    await queue.put(exec_pb2.StreamRequest(resize=exec_pb2.TerminalSize(columns=132, rows=50)))
    await asyncio.sleep(0.2)
    await queue.put(exec_pb2.StreamRequest(stdin=b"go\n"))
    out = b""
    while (msg := await call.read()) is not grpc.aio.EOF and msg.WhichOneof("event") != "exit":
        out += msg.stdout
    await queue.put(None)
    assert b"50 132" in out
