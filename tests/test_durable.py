"""Keyed commands (server.durable, server.attach, server.replay): a retry never runs the
command twice, and a caller that went away can come back to it.

Every test counts what reached the far side: the in-process SSH server's exec requests.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2

from scout.v1 import exec_pb2, exec_pb2_grpc
from server.callers import hash_token
from server.config import AuditSettings, CallerConfig, Config
from server.metrics import exposition
from server.replay import Entry, ReplayLog
from server.replay import Lost as ReplayLost
from testkit.cutproxy import CutProxy
from testkit.redis import start_redis
from testkit.scripted import ScriptedServer
from tests.pausable import RecordedChannel
from tests.scoutd import Scout, config, running_scout
from tests.serverproc import host_toml, start_server

ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789"
CALLERS = (
    CallerConfig(name="alice", token_sha256=hash_token(ALICE), hosts=("*",), stream=True),
    CallerConfig(name="bob", token_sha256=hash_token(BOB), hosts=("*",), stream=True),
)


def keyed_config(server: ScriptedServer, tmp_path: Path, **durable: Any) -> Config:
    """One host, "local"; the two callers; the SQLite store in tmp_path (or `store`)."""
    base = config(
        {"local": server.host_config("local")},
        callers=CALLERS,
        durable={"store": f"sqlite:{tmp_path / 'durable.sqlite3'}", **durable},
    )
    return dataclasses.replace(base, allow_plaintext=True)


@pytest.fixture
async def scout(shell_server: ScriptedServer, tmp_path: Path) -> AsyncIterator[Scout]:
    async with running_scout(keyed_config(shell_server, tmp_path)) as s:
        yield s


def auth(token: str = ALICE) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


async def keyed(
    scout: Scout, key: str, command: str, token: str = ALICE, **fields: Any
) -> tuple[exec_pb2.ExecuteResponse, dict[str, str]]:
    """Execute with a key; the answer and its trailing metadata."""
    call = scout.stub.Execute(
        exec_pb2.ExecuteRequest(host="local", command=command, idempotency_key=key, **fields),
        metadata=auth(token),
        timeout=30,
    )
    response = await call
    trailers = {k: v for k, v in (await call.trailing_metadata() or ())}
    return response, trailers


async def failure(scout: Scout, token: str = ALICE, **fields: Any) -> grpc.aio.AioRpcError:
    """The error of an Execute that must fail."""
    request = exec_pb2.ExecuteRequest(host="local", **fields)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await scout.stub.Execute(request, metadata=auth(token), timeout=30)
    return caught.value


async def stream_fails(
    scout: Scout, messages: AsyncIterator[exec_pb2.StreamRequest], code: grpc.StatusCode, says: str
) -> None:
    """A Stream (as alice) that ends with code, its details containing says."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in scout.stub.Stream(messages, metadata=auth(), timeout=10):
            pass
    assert caught.value.code() == code, caught.value
    assert says in (caught.value.details() or ""), caught.value


async def test_a_retry_after_the_end_gets_the_recorded_outcome(
    scout: Scout, shell_server: ScriptedServer
) -> None:
    first, trailers = await keyed(scout, "k1", "echo out; echo err >&2; exit 3")
    assert (first.exit_code, first.stdout, first.stderr) == (3, b"out\n", b"err\n")
    assert "x-scout-replayed" not in trailers
    again, trailers = await keyed(scout, "k1", "echo out; echo err >&2; exit 3", text=True)
    assert (again.exit_code, again.stdout, again.stdout_text) == (3, b"out\n", "out\n")
    assert trailers["x-scout-replayed"] == "true"
    assert shell_server.stats.exec_requests == 1


async def test_a_retry_while_it_runs_waits_for_the_one_run(
    scout: Scout, shell_server: ScriptedServer
) -> None:
    command = "sleep 0.5; echo done"
    results = await asyncio.gather(*(keyed(scout, "k2", command) for _ in range(3)))
    assert [r.stdout for r, _ in results] == [b"done\n"] * 3
    assert sorted(t.get("x-scout-replayed", "") for _, t in results) == ["", "true", "true"]
    assert shell_server.stats.exec_requests == 1


async def test_the_same_key_for_another_request_is_already_exists(
    scout: Scout, shell_server: ScriptedServer
) -> None:
    await keyed(scout, "k3", "echo one")
    error = await failure(scout, command="echo two", idempotency_key="k3")
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "'k3'" in (error.details() or "")
    assert shell_server.stats.exec_requests == 1


async def test_two_callers_with_one_key_run_twice(
    scout: Scout, shell_server: ScriptedServer
) -> None:
    a, _ = await keyed(scout, "shared", "echo hi", token=ALICE)
    b, trailers = await keyed(scout, "shared", "echo hi", token=BOB)
    assert a.stdout == b.stdout == b"hi\n"
    assert "x-scout-replayed" not in trailers
    assert shell_server.stats.exec_requests == 2


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({"idempotency_key": "has space"}, "idempotency_key"),
        ({"idempotency_key": "x" * 129}, "idempotency_key"),
        ({"idempotency_key": "k\n"}, "idempotency_key"),
        ({"detach_grace": seconds(5)}, "detach_grace"),
        ({"idempotency_key": "k", "detach_grace": seconds(3601)}, "detach_grace"),
        ({"idempotency_key": "k", "detach_grace": seconds(-1)}, "detach_grace"),
    ],
)
async def test_bad_keys_and_graces_are_invalid_argument(
    scout: Scout, shell_server: ScriptedServer, fields: dict[str, Any], names: str
) -> None:
    error = await failure(scout, command="echo no", **fields)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (error.details() or "").startswith(names)
    assert shell_server.stats.exec_requests == 0


async def test_a_cut_connection_with_a_grace_keeps_the_run_for_the_retry(
    scout: Scout, shell_server: ScriptedServer
) -> None:
    proxy = await CutProxy(("127.0.0.1", scout.app.port), cut_after=1 << 40).start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
            stub = exec_pb2_grpc.ExecServiceStub(channel)
            request = exec_pb2.ExecuteRequest(
                host="local",
                command="sleep 1; echo finished; exit 7",
                idempotency_key="cut",
                detach_grace=seconds(30),
            )
            call = stub.Execute(request, metadata=auth(), timeout=30)
            await asyncio.sleep(0.4)
            assert shell_server.stats.exec_requests == 1
            proxy.abort()  # a real TCP cut, mid-command
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                await call
            assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await proxy.close()
    again, trailers = await keyed(
        scout, "cut", "sleep 1; echo finished; exit 7", detach_grace=seconds(30)
    )
    assert (again.exit_code, again.stdout) == (7, b"finished\n")
    assert trailers["x-scout-replayed"] == "true"
    assert shell_server.stats.exec_requests == 1


async def _read_stream(
    call: Any, out: bytearray, offsets: list[int], until: int | None = None
) -> exec_pb2.StreamResponse | None:
    """Read a Stream into out (checking offsets), until `until` bytes or its exit."""
    async for message in call:
        event = message.WhichOneof("event")
        if event == "stdout":
            assert message.offset == offsets[0], (message.offset, offsets)
            out += message.stdout
            offsets[0] += len(message.stdout)
            if until is not None and len(out) >= until:
                return None
        elif event == "exit":
            return message  # type: ignore[no-any-return]
        elif event == "lost":
            raise AssertionError(f"lost {message.lost}")
    return None


async def _start_then_leave(
    stub: Any, start: exec_pb2.ExecuteRequest, until: int
) -> tuple[bytearray, list[int]]:
    """Start a Stream, read its first `until` bytes of stdout, then go away (cancel): the
    bytes read and the stdout offset to attach from."""

    async def first() -> AsyncIterator[exec_pb2.StreamRequest]:
        yield exec_pb2.StreamRequest(start=start)
        await asyncio.sleep(60)

    out, offsets = bytearray(), [0]
    call = stub.Stream(first(), metadata=auth(), timeout=30)
    await _read_stream(call, out, offsets, until=until)
    call.cancel()
    return out, offsets


async def test_stream_detach_and_attach_assemble_the_output_exactly(
    scout: Scout, shell_server: ScriptedServer
) -> None:
    command = "i=0; while [ $i -lt 60 ]; do echo line-$i; i=$((i+1)); sleep 0.02; done"
    start = exec_pb2.ExecuteRequest(
        host="local", command=command, idempotency_key="s1", detach_grace=seconds(30)
    )
    out, offsets = await _start_then_leave(scout.stub, start, until=40)
    await asyncio.sleep(0.3)  # output goes on while nobody is attached

    async def again() -> AsyncIterator[exec_pb2.StreamRequest]:
        attach = exec_pb2.Attach(idempotency_key="s1", host="local", stdout_offset=len(out))
        yield exec_pb2.StreamRequest(attach=attach)

    call = scout.stub.Stream(again(), metadata=auth(), timeout=30)
    end = await _read_stream(call, out, offsets)
    expected = "".join(f"line-{i}\n" for i in range(60)).encode()
    assert bytes(out) == expected
    assert end is not None and end.exit.exit_code == 0
    assert shell_server.stats.exec_requests == 1


async def test_attach_to_another_callers_key_is_not_found(scout: Scout) -> None:
    await keyed(scout, "mine", "echo private", token=ALICE)

    async def attach(key: str, **fields: Any) -> AsyncIterator[exec_pb2.StreamRequest]:
        yield exec_pb2.StreamRequest(
            attach=exec_pb2.Attach(idempotency_key=key, host="local", **fields)
        )

    for token, key, fields, code, says in [
        (BOB, "mine", {}, grpc.StatusCode.NOT_FOUND, "no command"),
        (ALICE, "never", {}, grpc.StatusCode.NOT_FOUND, "no command"),
        (ALICE, "mine", {"stdout_offset": 99}, grpc.StatusCode.INVALID_ARGUMENT, "stdout_offset"),
    ]:
        call = scout.stub.Stream(attach(key, **fields), metadata=auth(token), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        assert caught.value.code() == code, caught.value
        assert says in (caught.value.details() or "")
        assert "private" not in (caught.value.details() or "")


async def test_detach_grace_expiry_stops_the_command(
    scout: Scout, shell_server: ScriptedServer, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pid"
    command = f"echo $$ > {pidfile}; exec sleep 30"
    request = exec_pb2.ExecuteRequest(
        host="local", command=command, idempotency_key="g1", detach_grace=seconds(0.5)
    )
    call = scout.stub.Execute(request, metadata=auth(), timeout=30)
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        await asyncio.sleep(0.05)
    pid = int(pidfile.read_text())
    call.cancel()
    await asyncio.sleep(0.3)
    os.kill(pid, 0)  # still running within the grace
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the command outlived its detach_grace")
    await asyncio.sleep(0.2)
    error = await failure(scout, command=command, idempotency_key="g1", detach_grace=seconds(0.5))
    assert error.code() == grpc.StatusCode.ABORTED
    assert "detach_grace" in (error.details() or "")
    assert "outcome is unknown" in (error.details() or "")
    assert shell_server.stats.exec_requests == 1


async def _attach_all(
    scout: Scout, key: str, offset: int
) -> tuple[bytes, list[exec_pb2.Lost], exec_pb2.StreamResponse | None]:
    """Attach at a stdout offset; the stdout read, the `lost` messages, the exit."""

    async def messages() -> AsyncIterator[exec_pb2.StreamRequest]:
        attach = exec_pb2.Attach(idempotency_key=key, host="local", stdout_offset=offset)
        yield exec_pb2.StreamRequest(attach=attach)

    out, end = bytearray(), None
    lost: list[exec_pb2.Lost] = []
    position = None
    async for message in scout.stub.Stream(messages(), metadata=auth(), timeout=30):
        event = message.WhichOneof("event")
        if event == "stdout":
            if position is not None:
                assert message.offset == position
            position = message.offset + len(message.stdout)
            if not out:
                first_offset = message.offset
                assert first_offset == offset + sum(item.bytes for item in lost)
            out += message.stdout
        elif event == "lost":
            lost.append(message.lost)
        elif event == "exit":
            end = message
    return bytes(out), lost, end


async def test_output_older_than_the_buffer_is_lost_with_its_exact_count(
    shell_server: ScriptedServer, tmp_path: Path
) -> None:
    cfg = keyed_config(shell_server, tmp_path, replay_buffer_bytes=4096)
    lines = "".join(f"{i:07d}\n" for i in range(5000)).encode()  # 40,000 bytes
    marker = tmp_path / "written"
    command = "printf 'first\\n'; sleep 1.5; i=0; while [ $i -lt 5000 ]; do "
    command += f"printf '%07d\\n' $i; i=$((i+1)); done; touch {marker}; sleep 0.5"
    async with running_scout(cfg) as scout:
        start = exec_pb2.ExecuteRequest(
            host="local", command=command, idempotency_key="lost", detach_grace=seconds(30)
        )
        out, _ = await _start_then_leave(scout.stub, start, until=6)
        assert bytes(out) == b"first\n"
        (run,) = scout.app.service.durable.runs.values()
        for _ in range(100):  # the starter's place in the buffer is gone (within 1.5 s,
            if not run.log.readers:  # before the output starts, unless the machine crawls)
                break
            await asyncio.sleep(0.05)
        for _ in range(400):  # the 40,000 bytes come while nobody is attached
            # written by the command, then read by scout (a pipe holds them all, so the
            # marker alone says nothing about what has crossed the SSH channel)
            if marker.exists() and run.log.appended >= len(b"first\n") + len(lines):
                break
            await asyncio.sleep(0.05)
        # the buffer keeps 4,096 bytes, or its one newest chunk whole when that is larger
        # (output that waited in a paused channel comes on in large chunks)
        held = run.log.held
        assert held <= 4096 or len(run.log.entries) == 1, (held, len(run.log.entries))
        rest, lost, end = await _attach_all(scout, "lost", len(out))
    expected = b"first\n" + lines
    assert len(lost) == 1 and lost[0].stream == "stdout"
    gone = lost[0].bytes
    assert gone == len(expected) - len(out) - held  # all but what the buffer held
    assert rest == expected[len(out) + gone :]  # the rest exactly, from where loss ended
    assert end is not None and end.exit.stdout_bytes == len(expected)
    assert shell_server.stats.exec_requests == 1


FLEET_SIZE = 3


async def test_execute_many_keys_each_host_and_a_retry_resumes_per_host(
    fleet: list[ScriptedServer], tmp_path: Path
) -> None:
    hosts = {f"h{i}": server.host_config(f"h{i}") for i, server in enumerate(fleet)}
    cfg = config(
        hosts,
        callers=CALLERS,
        durable={"store": f"sqlite:{tmp_path / 'durable.sqlite3'}"},
    )
    cfg = dataclasses.replace(cfg, allow_plaintext=True)
    request = exec_pb2.ExecuteManyRequest(
        hosts=["h*"],
        request=exec_pb2.ExecuteRequest(command="echo $RANDOM", idempotency_key="fan"),
    )
    async with running_scout(cfg) as scout:

        async def run() -> dict[str, bytes]:
            got = {}
            async for message in scout.stub.ExecuteMany(request, metadata=auth(), timeout=30):
                assert message.WhichOneof("event") == "result", message
                got[message.host] = message.result.stdout
            return got

        first = await run()
        again = await run()
    assert first == again and sorted(first) == ["h0", "h1", "h2"]
    assert [server.stats.exec_requests for server in fleet] == [1, 1, 1]


async def test_a_stream_cut_at_10s_and_attached_at_15s_of_a_30s_command(
    scout: Scout, shell_server: ScriptedServer
) -> None:
    """The issue's own case, with a real TCP cut: nothing missing, nothing twice."""
    command = "i=0; while [ $i -lt 300 ]; do echo line-$i; i=$((i+1)); sleep 0.1; done"
    start = exec_pb2.ExecuteRequest(
        host="local", command=command, idempotency_key="long", detach_grace=seconds(60)
    )
    proxy = await CutProxy(("127.0.0.1", scout.app.port), cut_after=1 << 40).start()
    out = bytearray()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
            stub = exec_pb2_grpc.ExecServiceStub(channel)

            async def first() -> AsyncIterator[exec_pb2.StreamRequest]:
                yield exec_pb2.StreamRequest(start=start)
                await asyncio.sleep(120)

            call = stub.Stream(first(), metadata=auth(), timeout=60)
            ten = asyncio.get_running_loop().time() + 10
            while asyncio.get_running_loop().time() < ten:
                message = await call.read()
                assert message.offset == len(out)
                out += message.stdout
            proxy.abort()  # cut at 10 s, while the call is open
            with pytest.raises(grpc.aio.AioRpcError) as cut:
                await call.read()
            assert cut.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await proxy.close()
    assert 50 < len(out) < 2000
    await asyncio.sleep(5)  # re-attached at 15 s
    rest, lost, end = await _attach_all(scout, "long", len(out))
    assert lost == []
    assert bytes(out) + rest == "".join(f"line-{i}\n" for i in range(300)).encode()
    assert end is not None and end.exit.exit_code == 0
    assert shell_server.stats.exec_requests == 1


async def test_a_retry_after_scout_was_killed_mid_command_is_outcome_unknown(
    shell_server: ScriptedServer, tmp_path: Path
) -> None:
    """SIGKILL, a restart on the same SQLite file: the key is never run again."""
    store = tmp_path / "durable.sqlite3"
    path = tmp_path / "scout.toml"
    path.write_text(
        f"[durable]\nstore = 'sqlite:{store}'\n\n"
        + host_toml("local", shell_server.host_config("local"))
    )
    request = exec_pb2.ExecuteRequest(host="local", command="sleep 30", idempotency_key="kill")
    proc, target = await asyncio.to_thread(
        start_server, ["--config", str(path)], tmp_path / "1.log"
    )
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            call = exec_pb2_grpc.ExecServiceStub(channel).Execute(request, timeout=30)
            for _ in range(100):
                if shell_server.stats.exec_requests:
                    break
                await asyncio.sleep(0.05)
            proc.kill()  # SIGKILL, mid-command
            with pytest.raises(grpc.aio.AioRpcError):
                await call
    finally:
        proc.kill()
        await asyncio.to_thread(proc.wait, 20)
    proc, target = await asyncio.to_thread(
        start_server, ["--config", str(path)], tmp_path / "2.log"
    )
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            call = exec_pb2_grpc.ExecServiceStub(channel).Execute(request, timeout=30)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            trailers = dict(caught.value.trailing_metadata() or ())
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 20)
    assert caught.value.code() == grpc.StatusCode.ABORTED, caught.value
    assert "outcome is unknown" in (caught.value.details() or "")
    assert trailers.get("x-scout-started") == "true"
    assert shell_server.stats.exec_requests == 1


async def test_a_store_that_is_down_refuses_keyed_calls_before_anything_runs(
    shell_server: ScriptedServer, tmp_path: Path
) -> None:
    """Redis stopped: a keyed Execute is UNAVAILABLE and nothing ran; unkeyed ones run."""
    redis = await asyncio.to_thread(start_redis, tmp_path / "redis")
    cfg = keyed_config(shell_server, tmp_path, store=redis.url)
    try:
        async with running_scout(cfg) as scout:
            first, _ = await keyed(scout, "up", "echo up")
            assert first.stdout == b"up\n"
            await asyncio.to_thread(redis.stop)
            error = await failure(scout, command="echo down", idempotency_key="down")
            assert error.code() == grpc.StatusCode.UNAVAILABLE, error
            assert dict(error.trailing_metadata() or ()).get("x-scout-started") == "false"
            assert shell_server.stats.exec_requests == 1
            plain = await scout.stub.Execute(
                exec_pb2.ExecuteRequest(host="local", command="echo plain"),
                metadata=auth(),
                timeout=30,
            )
            assert plain.stdout == b"plain\n"
            assert shell_server.stats.exec_requests == 2
    finally:
        await asyncio.to_thread(redis.stop)


async def test_an_outcome_the_store_cannot_keep_still_reaches_its_caller_and_is_counted(
    shell_server: ScriptedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis stopped while the command runs: the caller still gets its output (the
    command ran); the outcome that could not be recorded is counted and logged."""
    redis = await asyncio.to_thread(start_redis, tmp_path / "redis")
    cfg = keyed_config(shell_server, tmp_path, store=redis.url)
    try:
        async with running_scout(cfg) as scout:
            call = asyncio.ensure_future(keyed(scout, "lost", "sleep 0.5; echo done"))
            for _ in range(100):  # claimed and started
                if shell_server.stats.exec_requests == 1:
                    break
                await asyncio.sleep(0.05)
            await asyncio.to_thread(redis.stop)
            response, trailers = await call
            assert (response.exit_code, response.stdout) == (0, b"done\n")
            assert "x-scout-replayed" not in trailers
            text = exposition(scout.app.counted())().decode()
            errors = re.search(r"^scout_durable_store_errors_total (\S+)$", text, re.M)
            assert errors is not None and float(errors[1]) >= 1  # and a heartbeat's, maybe
            assert "scout_durable_running 0.0" in text
    finally:
        await asyncio.to_thread(redis.stop)
    assert any("the outcome of key lost could not be recorded" in r.message for r in caplog.records)


async def test_an_attach_is_judged_by_the_policy_in_force_now(
    shell_server: ScriptedServer, tmp_path: Path
) -> None:
    """A reload that takes the host (or Stream) away also takes the attach away."""
    cfg = keyed_config(shell_server, tmp_path)
    async with running_scout(cfg) as scout:
        start = exec_pb2.ExecuteRequest(
            host="local", command="sleep 5", idempotency_key="p1", detach_grace=seconds(30)
        )
        call = scout.stub.Execute(start, metadata=auth(), timeout=30)
        for _ in range(100):
            if shell_server.stats.exec_requests:
                break
            await asyncio.sleep(0.05)
        narrowed = (
            dataclasses.replace(CALLERS[0], stream=False),
            dataclasses.replace(CALLERS[1]),
        )
        scout.app.live.swap(dataclasses.replace(cfg, callers=narrowed))

        async def attach() -> AsyncIterator[exec_pb2.StreamRequest]:
            yield exec_pb2.StreamRequest(attach=exec_pb2.Attach(idempotency_key="p1", host="local"))

        await stream_fails(scout, attach(), grpc.StatusCode.PERMISSION_DENIED, "Stream")
        gone = (dataclasses.replace(CALLERS[0], hosts=("other",)), CALLERS[1])
        scout.app.live.swap(dataclasses.replace(cfg, callers=gone))
        await stream_fails(scout, attach(), grpc.StatusCode.NOT_FOUND, "no command")
        call.cancel()


async def test_max_detached_refuses_before_anything_runs(
    shell_server: ScriptedServer, tmp_path: Path
) -> None:
    cfg = keyed_config(shell_server, tmp_path, max_detached=1)
    async with running_scout(cfg) as scout:
        first = exec_pb2.ExecuteRequest(
            host="local", command="sleep 3", idempotency_key="d1", detach_grace=seconds(10)
        )
        call = scout.stub.Execute(first, metadata=auth(), timeout=30)
        for _ in range(100):
            if shell_server.stats.exec_requests:
                break
            await asyncio.sleep(0.05)
        error = await failure(
            scout, command="sleep 3", idempotency_key="d2", detach_grace=seconds(10)
        )
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_detached" in (error.details() or "")
        assert shell_server.stats.exec_requests == 1
        call.cancel()


async def test_an_execute_many_hosts_key_can_be_attached_and_streams_once(
    fleet: list[ScriptedServer], tmp_path: Path
) -> None:
    """KEY/HOST reaches one host's run; with stream_output its output comes once."""
    hosts = {f"h{i}": server.host_config(f"h{i}") for i, server in enumerate(fleet)}
    cfg = dataclasses.replace(
        config(hosts, callers=CALLERS, durable={"store": f"sqlite:{tmp_path / 'd.sqlite3'}"}),
        allow_plaintext=True,
    )
    command = "echo one; sleep 1; echo two"
    request = exec_pb2.ExecuteManyRequest(
        hosts=["h1"],
        stream_output=True,
        request=exec_pb2.ExecuteRequest(
            command=command, idempotency_key="fan2", detach_grace=seconds(30)
        ),
    )
    async with running_scout(cfg) as scout:
        chunks, results = bytearray(), []

        async def many() -> None:
            async for message in scout.stub.ExecuteMany(request, metadata=auth(), timeout=30):
                if message.WhichOneof("event") == "output":
                    chunks.extend(message.output.stdout)
                else:
                    results.append(message)

        async def attach() -> AsyncIterator[exec_pb2.StreamRequest]:
            yield exec_pb2.StreamRequest(
                attach=exec_pb2.Attach(idempotency_key="fan2/h1", host="h1")
            )

        fan = asyncio.ensure_future(many())
        for _ in range(100):
            if fleet[1].stats.exec_requests:
                break
            await asyncio.sleep(0.05)
        out = bytearray()
        async for message in scout.stub.Stream(attach(), metadata=auth(), timeout=30):
            out.extend(message.stdout)
        await fan
        await stream_fails(
            scout,
            _attach_messages("fan2/h0", "h1"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "attach.idempotency_key",
        )
    assert bytes(out) == bytes(chunks) == b"one\ntwo\n"
    assert len(results) == 1 and results[0].result.exit_code == 0
    assert results[0].result.stdout == b""  # it came as chunks
    assert [server.stats.exec_requests for server in fleet] == [0, 1, 0]


async def _attach_messages(key: str, host: str) -> AsyncIterator[exec_pb2.StreamRequest]:
    yield exec_pb2.StreamRequest(attach=exec_pb2.Attach(idempotency_key=key, host=host))


async def test_keyed_calls_are_counted_in_the_metrics(
    shell_server: ScriptedServer, tmp_path: Path
) -> None:
    cfg = keyed_config(shell_server, tmp_path, max_detached=1)
    async with running_scout(cfg) as scout:
        await keyed(scout, "m1", "echo one")
        await keyed(scout, "m1", "echo one")
        long = exec_pb2.ExecuteRequest(
            host="local", command="sleep 3", idempotency_key="m2", detach_grace=seconds(10)
        )
        call = scout.stub.Execute(long, metadata=auth(), timeout=30)
        for _ in range(100):
            if shell_server.stats.exec_requests == 2:
                break
            await asyncio.sleep(0.05)
        await failure(scout, command="sleep 3", idempotency_key="m3", detach_grace=seconds(10))
        text = exposition(scout.app.counted())().decode()
        call.cancel()
    assert "scout_durable_runs_total 2.0" in text
    assert "scout_durable_replayed_total 1.0" in text
    assert "scout_durable_running 1.0" in text
    assert 'scout_durable_refused_total{limit="max_detached"} 1.0' in text
    assert "scout_durable_detached_limit 1.0" in text


async def test_an_attached_reader_loses_nothing_however_large_the_chunks() -> None:
    """Chunks far over the buffer: an attached reader still gets every byte (the channel
    is paused instead); once it leaves, old output makes room and a later reader is told."""
    log = ReplayLog(0, 1024, 4096)
    channel = RecordedChannel()
    log.attach(channel)
    reader = log.reader(0, 0)
    chunks = [bytes([65 + i]) * 32768 for i in range(4)]
    for chunk in chunks:
        log.feed(1, chunk)
    assert channel.paused
    got = bytearray()
    while items := await asyncio.wait_for(reader.read(), 1):
        assert all(not isinstance(item, ReplayLost) for item in items)
        got += b"".join(item.data for item in items if isinstance(item, Entry))
        if len(got) == len(b"".join(chunks)):
            break
    assert bytes(got) == b"".join(chunks)
    assert not channel.paused
    reader.leave()
    log.feed(1, b"z" * 8192)  # nobody attached: the old entries go
    late = log.reader(0, 0)
    items = await asyncio.wait_for(late.read(), 1)
    assert items[0] == ReplayLost(1, 4 * 32768)


async def test_the_audit_line_names_the_key_and_whether_it_was_replayed(
    shell_server: ScriptedServer, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    cfg = dataclasses.replace(
        keyed_config(shell_server, tmp_path), audit=AuditSettings(file=str(audit))
    )
    async with running_scout(cfg) as scout:
        await keyed(scout, "a1", "echo audited")
        await keyed(scout, "a1", "echo audited")
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    keyed_lines = [(line["idempotency_key"], line["replayed"], line["code"]) for line in lines]
    assert keyed_lines == [("a1", False, "OK"), ("a1", True, "OK")]
    assert shell_server.stats.exec_requests == 1
