"""Execute and Stream end to end: gRPC in, a real SSH server (in-process asyncssh) out."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client import Client, Exit, HostNotFound, Stdout
from scout.v1 import exec_pb2
from server.config import Config, HostConfig
from server.keyfiles import write_key
from testkit.processes import marker, sleeping
from testkit.scripted import ScriptedServer

from .scoutd import Scout, running_scout, secs


async def stream(scout: Scout, *requests: exec_pb2.StreamRequest) -> list[exec_pb2.StreamResponse]:
    """Send requests (then half-close), collect every response."""
    call = scout.stub.Stream(iter(requests), timeout=30)
    return [r async for r in call]


async def test_execute_returns_output_and_exit_code(local_scout: Scout) -> None:
    r = await local_scout.execute(host="local", command="echo out; echo err >&2; exit 3")
    assert (r.stdout, r.stderr, r.exit_code, r.signal) == (b"out\n", b"err\n", 3, "")
    assert (r.stdout_bytes, r.stderr_bytes) == (4, 4)
    assert not r.stdout_truncated and not r.stdout_text  # text only when asked


async def test_execute_feeds_stdin(local_scout: Scout) -> None:
    data = bytes(range(256)) * 1000
    r = await local_scout.execute(host="local", command="cat", stdin=data)
    assert r.stdout == data and r.exit_code == 0


async def test_env_and_working_dir_are_quoted(local_scout: Scout, tmp_path: Path) -> None:
    odd = 'it\'s $HOME `x` "q"\nline2'
    r = await local_scout.execute(
        host="local",
        command='printf %s "$A"; pwd',
        env={"A": odd},
        working_dir=str(tmp_path),
    )
    assert r.stdout == odd.encode() + f"{tmp_path}\n".encode()


async def test_non_utf8_output_round_trips_and_text_replaces(local_scout: Scout) -> None:
    r = await local_scout.execute(host="local", command=r"printf 'a\377b\n'", text=True)
    assert r.stdout == b"a\xffb\n"
    assert r.stdout_text == "a\ufffdb\n"


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"host": "", "command": "true"}, grpc.StatusCode.INVALID_ARGUMENT, "host: required"),
        ({"host": "local", "command": " "}, grpc.StatusCode.INVALID_ARGUMENT, "command"),
        ({"host": "nope", "command": "true"}, grpc.StatusCode.NOT_FOUND, "'nope' is not"),
        (
            {"host": "local", "command": "true", "env": {"1BAD": "x"}},
            grpc.StatusCode.INVALID_ARGUMENT,
            "'1BAD' is not a valid variable name",
        ),
        (
            {"host": "local", "command": "true", "timeout": secs(-1)},
            grpc.StatusCode.INVALID_ARGUMENT,
            "timeout: must be positive",
        ),
        (
            {"host": "local", "command": "true", "timeout": secs(10**6)},
            grpc.StatusCode.INVALID_ARGUMENT,
            "timeout: at most",
        ),
        (
            {"host": "local", "command": "x" * 70000},
            grpc.StatusCode.INVALID_ARGUMENT,
            "command: at most",
        ),
    ],
)
async def test_bad_requests_get_clear_statuses(
    local_scout: Scout, fields: dict[str, Any], code: grpc.StatusCode, words: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await local_scout.execute(**fields)
    assert info.value.code() == code
    assert words in (info.value.details() or "")
    ok = await local_scout.execute(host="local", command="echo still up")
    assert ok.stdout == b"still up\n"


async def test_stream_sends_output_stdin_and_exit(local_scout: Scout) -> None:
    start = exec_pb2.ExecuteRequest(
        host="local", command="cat; echo done >&2; exit 7", stdin=b"first "
    )
    responses = await stream(
        local_scout,
        exec_pb2.StreamRequest(start=start),
        exec_pb2.StreamRequest(stdin=b"second"),
    )
    out = b"".join(r.stdout for r in responses if r.WhichOneof("event") == "stdout")
    err = b"".join(r.stderr for r in responses if r.WhichOneof("event") == "stderr")
    assert (out, err) == (b"first second", b"done\n")
    last = responses[-1]
    assert last.WhichOneof("event") == "exit"
    assert last.exit.exit_code == 7 and last.exit.stdout_bytes == 12


async def test_stream_output_arrives_as_produced(local_scout: Scout) -> None:
    start = exec_pb2.ExecuteRequest(host="local", command="echo one; sleep 2; echo two")
    call = local_scout.stub.Stream(iter([exec_pb2.StreamRequest(start=start)]), timeout=30)
    first = await asyncio.wait_for(call.read(), 1.5)  # long before the command ends
    assert first.stdout == b"one\n"
    rest = []
    while (r := await call.read()) is not grpc.aio.EOF:
        rest.append(r)
    assert rest[0].stdout == b"two\n" and rest[-1].exit.exit_code == 0


async def test_stream_must_start_with_start(local_scout: Scout) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stream(local_scout, exec_pb2.StreamRequest(stdin=b"x"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "the first message must be `start`" in (info.value.details() or "")


async def test_stream_rejects_an_unknown_signal(local_scout: Scout) -> None:
    start = exec_pb2.ExecuteRequest(host="local", command="sleep 5")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stream(
            local_scout, exec_pb2.StreamRequest(start=start), exec_pb2.StreamRequest(signal="NOPE")
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unknown signal 'NOPE'" in (info.value.details() or "")


async def test_hundred_sequential_commands_use_one_ssh_connection(
    local_scout: Scout, shell_server: ScriptedServer
) -> None:
    for i in range(100):
        r = await local_scout.execute(host="local", command=f"echo {i}")
        assert r.stdout == f"{i}\n".encode()
    assert shell_server.stats.accepted == 1  # counted where connections are accepted
    assert shell_server.stats.sessions_opened == 100
    assert local_scout.app.pool.stats.connects == {"ok": 1}


async def assert_refused(host: HostConfig, code: grpc.StatusCode, says: str) -> None:
    """`true` on a scout whose inventory is this one host fails with code, saying this."""
    async with running_scout(Config(hosts={host.name: host})) as s:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.execute(host=host.name, command="true")
    assert info.value.code() == code
    assert says in (info.value.details() or "")


async def test_changed_host_key_is_failed_precondition(
    shell_server: ScriptedServer, tmp_path: Path
) -> None:
    impostor = asyncssh.generate_private_key("ssh-ed25519")
    known = tmp_path / "other_known_hosts"
    public = impostor.export_public_key("openssh").decode().strip()
    known.write_text(f"[{shell_server.address}]:{shell_server.port} {public}\n")
    host = dataclasses.replace(shell_server.host_config(), known_hosts=known)
    await assert_refused(host, grpc.StatusCode.FAILED_PRECONDITION, "HOST KEY CHANGED")


async def test_refused_authentication_is_failed_precondition(
    shell_server: ScriptedServer, tmp_path: Path
) -> None:
    stranger = tmp_path / "stranger"
    write_key(stranger, asyncssh.generate_private_key("ssh-ed25519"))
    host = dataclasses.replace(shell_server.host_config(), identity_file=stranger)
    await assert_refused(host, grpc.StatusCode.FAILED_PRECONDITION, "authentication refused")


async def test_unreachable_host_is_unavailable(shell_server: ScriptedServer) -> None:
    port = shell_server.port
    await shell_server.close()  # nothing listens there now
    host = HostConfig(
        name="gone",
        address="127.0.0.1",
        port=port,
        identity_file=shell_server.identity_file,
        known_hosts=shell_server.known_hosts,
    )
    await assert_refused(host, grpc.StatusCode.UNAVAILABLE, "gone")


async def test_connection_closed_mid_command_is_aborted_then_recovers(
    local_scout: Scout, shell_server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="asyncio")
    m = marker()
    call = asyncio.create_task(local_scout.execute(host="local", command=f"sleep {m}; echo late"))
    assert await sleeping(m, within=10)  # it runs: a fixed 0.5 s was too short on busy cores
    for server in list(shell_server.connections.values()):
        assert server.conn is not None
        server.conn.abort()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == grpc.StatusCode.ABORTED
    assert "may have had effects" in (info.value.details() or "")
    r = await local_scout.execute(host="local", command="echo again")
    assert r.stdout == b"again\n"
    assert shell_server.stats.accepted == 2
    gc.collect()  # a future whose exception nobody read says so when it is collected
    assert not [r.getMessage() for r in caplog.records if r.name == "asyncio"]


async def test_a_connection_reset_under_a_stream_leaves_no_unread_error(
    local_scout: Scout, shell_server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The session's end is watched by a callback there; the reset must not leave a future
    holding an exception nobody reads (asyncio logs those at ERROR when collected)."""
    caplog.set_level(logging.ERROR, logger="asyncio")
    start = exec_pb2.ExecuteRequest(host="local", command="sleep 5", close_stdin=True)
    call = local_scout.stub.Stream(iter([exec_pb2.StreamRequest(start=start)]))
    await call.initial_metadata()  # the command runs
    for server in list(shell_server.connections.values()):
        assert server.conn is not None
        server.conn.abort()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.ABORTED
    del call, info
    gc.collect()
    assert not [r.getMessage() for r in caplog.records if r.name == "asyncio"]


async def test_server_vanishing_between_commands_reconnects_once(
    local_scout: Scout, shell_server: ScriptedServer
) -> None:
    assert (await local_scout.execute(host="local", command="true")).exit_code == 0
    for server in list(shell_server.connections.values()):
        assert server.conn is not None
        server.conn.abort()
    await asyncio.sleep(0.1)
    r = await local_scout.execute(host="local", command="echo back")
    assert r.stdout == b"back\n" and shell_server.stats.accepted == 2


async def test_health_and_graceful_shutdown(shell_server: ScriptedServer) -> None:
    async with running_scout(Config(hosts={"local": shell_server.host_config()})) as s:
        health = health_pb2_grpc.HealthStub(s.channel)
        check = await health.Check(health_pb2.HealthCheckRequest(service="scout.v1.ExecService"))
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        in_flight = asyncio.create_task(s.execute(host="local", command="sleep 0.5; echo ok"))
        await asyncio.sleep(0.2)
        await s.app.stop(grace=5)
        assert (await in_flight).stdout == b"ok\n"  # finished within the grace period
        assert s.app.pool.gauges()["connections_open"] == 0
        await asyncio.sleep(0.2)
        assert shell_server.stats.open == 0


async def test_python_client_against_the_real_server(local_scout: Scout) -> None:
    """The client library end to end: results, errors, and a signal after stdin's EOF."""
    async with Client(local_scout.target) as c:
        result = await c.execute("local", "printf hi; exit 4")
        assert (result.stdout, result.exit_code) == (b"hi", 4)
        with pytest.raises(HostNotFound, match="'nope' is not in the inventory"):
            await c.execute("nope", "true")
        async with c.stream("local", "cat; exec sleep 30.4242") as call:
            await call.write(b"abc")
            await call.close_stdin()  # cat ends; the stream stays open for signals
            events = []
            async for event in call:
                events.append(event)
                if isinstance(event, Stdout):
                    await call.signal("TERM")
        assert events[0] == Stdout(b"abc")
        last = events[-1]
        assert isinstance(last, Exit) and last.status.signal == "TERM"


async def test_stream_start_can_carry_eof(local_scout: Scout) -> None:
    """close_stdin in `start`: the command gets EOF with no message after the start."""
    never = asyncio.Event()

    async def requests() -> AsyncIterator[exec_pb2.StreamRequest]:
        yield exec_pb2.StreamRequest(
            start=exec_pb2.ExecuteRequest(
                host="local", command="cat; echo end", stdin=b"in ", close_stdin=True
            )
        )
        await never.wait()  # keep the request stream open: EOF must come from the flag

    call = local_scout.stub.Stream(requests(), timeout=10)
    out = b""
    while (msg := await call.read()) is not grpc.aio.EOF:
        if msg.WhichOneof("event") == "exit":
            assert msg.exit.exit_code == 0
            break
        out += msg.stdout
    call.cancel()
    assert out == b"in end\n"
