"""One caller must never hurt another, and nothing runs on after scout lets go.

Each test is one defect found by trying scout as a hostile caller and a faulty network
would, checked against real servers: OpenSSH where the fault is sshd's own behaviour
(packet limits, frozen processes, shutdown), the in-process server where a fault must be
scripted, raw bytes through grpc's generic calls for malformed messages.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import grpc
import pytest

from scout.v1 import exec_pb2, exec_pb2_grpc
from server.app import start
from server.config import Config, ConfigError, HostConfig
from server.keyfiles import ShellKeys, write_key
from server.logs import JsonFormatter, TextFormatter
from testkit.processes import eventually, gone, marker, process_list, running, sleeps
from testkit.scripted import ScriptedServer
from testkit.sshd import OpenSSHServer

from .scoutd import Scout, config, running_scout, secs, started
from .serverproc import ROOT, host_toml, server_exits, start_server

EXECUTE = "/scout.v1.ExecService/Execute"
STREAM = "/scout.v1.ExecService/Stream"


# ---- 1. the exec line ------------------------------------------------------------------


@pytest.mark.sshd
async def test_oversize_exec_lines_are_refused_and_hurt_no_other_command(
    openssh_scout: Scout,
) -> None:
    victims = [
        asyncio.ensure_future(openssh_scout.execute(host="o", command="sleep 1; echo ok"))
        for _ in range(6)
    ]
    await asyncio.sleep(0.3)  # the victims run on the pooled connections now
    attacks: list[dict[str, object]] = [
        {"command": "true", "working_dir": "/" + "d" * 300 * 1024},
        {"command": "true", "env": {"V": "'" * 60 * 1024}},  # 300 KiB once quoted
        {"command": "'" * 64 * 1024, "env": {"A": "'" * 30 * 1024}},
    ]
    for fields in attacks:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await openssh_scout.stub.Execute(exec_pb2.ExecuteRequest(host="o", **fields))  # type: ignore[arg-type]
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert started(info.value) == "false"
        assert len(info.value.details() or "") < 300
    results = await asyncio.gather(*victims)
    assert all((r.exit_code, r.stdout) == (0, b"ok\n") for r in results)
    assert openssh_scout.app.pool.stats.evictions == {}  # no connection was lost


# ---- 2. shutdown -----------------------------------------------------------------------


@pytest.mark.sshd
@pytest.mark.slow
async def test_shutdown_stops_every_running_command_before_the_process_exits(
    openssh: OpenSSHServer, tmp_path: Path
) -> None:
    m = marker()
    cfg = tmp_path / "scout.toml"
    cfg.write_text("shutdown_grace = 2.0\n" + host_toml("o", openssh.host_config("o")))
    proc, target = start_server(["--config", str(cfg)], tmp_path / "scout.log")
    channel = grpc.aio.insecure_channel(target)
    stub = exec_pb2_grpc.ExecServiceStub(channel)
    calls = [
        asyncio.ensure_future(stub.Execute(exec_pb2.ExecuteRequest(host="o", command=f"sleep {m}")))
        for _ in range(20)
    ]
    try:
        assert await eventually(lambda: len(sleeps(m)) == 20, within=10)
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        codes = {
            r.code() if isinstance(r, grpc.aio.AioRpcError) else r
            for r in await asyncio.gather(*calls, return_exceptions=True)
        }
        assert proc.wait(timeout=15) == 0
        exited = time.monotonic() - began
        assert exited < 2.0 + 5.0  # the grace, then the stop budget
        assert not process_list(m)  # every command was stopped first
        assert codes <= {grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE}
        log = (tmp_path / "scout.log").read_text()
        assert "shutting down" in log and "stopped; pool closed" in log
    finally:
        await channel.close()
        if proc.poll() is None:
            proc.kill()


# ---- 3. a frozen connection ------------------------------------------------------------


@pytest.mark.sshd
async def test_a_frozen_connection_costs_one_channel_open_timeout_not_the_host(
    openssh: OpenSSHServer, openssh_scout: Scout
) -> None:
    m = marker()
    hostage = asyncio.ensure_future(openssh_scout.execute(host="o", command=f"sleep {m}"))
    assert await running(f"sleep {m}")
    (command,) = sleeps(m)
    frozen = openssh.connection_processes(command)
    assert frozen
    for p in frozen:
        p.send_signal(signal.SIGSTOP)
    try:
        began = time.monotonic()
        r = await openssh_scout.execute(
            host="o", command="echo alive", timeout=secs(5), rpc_timeout=30
        )
        assert r.stdout == b"alive\n"
        assert time.monotonic() - began < 5.0
        began = time.monotonic()  # the frozen connection is no longer chosen
        r = await openssh_scout.execute(
            host="o", command="echo again", timeout=secs(5), rpc_timeout=30
        )
        assert r.stdout == b"again\n" and time.monotonic() - began < 1.0
        assert openssh_scout.app.pool.stats.evictions.get("stalled") == 1
    finally:
        for p in frozen:
            p.send_signal(signal.SIGCONT)
        hostage.cancel()
        await asyncio.gather(hostage, return_exceptions=True)
    assert await gone(f"sleep {m}", within=5)


# ---- 4. bursts -------------------------------------------------------------------------


async def test_a_burst_beyond_grpc_cores_queue_gets_no_cancelled(
    shell_server: ScriptedServer,
) -> None:
    async with running_scout(config({"h": shell_server.host_config("h")})) as s:
        calls = [
            s.stub.Execute(exec_pb2.ExecuteRequest(host="nope", command="true"), timeout=60)
            for _ in range(2000)
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        codes = {r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)}
        assert codes == {grpc.StatusCode.NOT_FOUND}


async def burst(stub: Any, request: exec_pb2.ExecuteRequest, n: int) -> list[tuple[str, float]]:
    """n calls at once; each one's status name and its latency from its own start."""

    async def one() -> tuple[str, float]:
        began = time.monotonic()
        try:
            await stub.Execute(request, timeout=30)
            return "OK", time.monotonic() - began
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                assert "retry" in (err.details() or ""), err.details()
            return err.code().name, time.monotonic() - began

    return list(await asyncio.gather(*(one() for _ in range(n))))


@pytest.mark.sshd
@pytest.mark.slow
async def test_beyond_max_concurrent_rpcs_calls_are_refused_at_once(
    openssh: OpenSSHServer, tmp_path: Path
) -> None:
    """Limit 50, 500 calls at once: 450 RESOURCE_EXHAUSTED about as fast as gRPC can answer.

    "As fast as gRPC can answer" is measured in the same run: a grpc.aio server that
    refuses every call with no work at all (tests/fakeexec.py), hit the same way. Its
    latencies are the floor (on a 2-core machine, a median of ~0.1 s for 500 calls:
    Python's gRPC takes each new call one at a time); scout's refusals must stay near it,
    never queue behind the admitted calls (grpc's own limiter would) nor be CANCELLED.
    """
    floor_proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakeexec", cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    cfg = tmp_path / "scout.toml"
    cfg.write_text("max_concurrent_rpcs = 50\n" + host_toml("o", openssh.host_config("o")))
    proc, target = start_server(["--config", str(cfg)], tmp_path / "scout.log")
    try:
        async with grpc.aio.insecure_channel(await fake_target(floor_proc)) as channel:
            stub = exec_pb2_grpc.ExecServiceStub(channel)
            busy = exec_pb2.ExecuteRequest(host="h", command="refuse RESOURCE_EXHAUSTED retry")
            floor = sorted(t for _, t in await burst(stub, busy, 500))
        async with grpc.aio.insecure_channel(target) as channel:
            stub = exec_pb2_grpc.ExecServiceStub(channel)
            await stub.Execute(exec_pb2.ExecuteRequest(host="o", command="true"))  # warm
            outcomes = await burst(stub, exec_pb2.ExecuteRequest(host="o", command="sleep 3"), 500)
        assert {code for code, _ in outcomes} == {"OK", "RESOURCE_EXHAUSTED"}
        assert sum(code == "OK" for code, _ in outcomes) >= 50
        refused = sorted(t for code, t in outcomes if code == "RESOURCE_EXHAUSTED")
        median, floor_median = refused[len(refused) // 2], floor[len(floor) // 2]
        print(
            f"\nrefusals: median {median * 1e3:.0f} ms, max {refused[-1] * 1e3:.0f} ms; "
            f"bare gRPC floor: median {floor_median * 1e3:.0f} ms, max {floor[-1] * 1e3:.0f} ms"
        )
        # margins for a busy 2-core machine; queued refusals would come after the 3 s sleeps
        assert median < 3 * floor_median + 0.25
        assert refused[-1] < min(3 * floor[-1] + 0.5, 2.0)
    finally:
        floor_proc.kill()
        await floor_proc.wait()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


async def fake_target(proc: asyncio.subprocess.Process) -> str:
    """Where a `python -m tests.fakeexec` child serves (it prints "port N" first).

    The child then prints a line per call: 500 short lines fit in the pipe unread.
    """
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    return f"127.0.0.1:{line.decode().split()[1]}"


# ---- 5. inputs echoed without bound ----------------------------------------------------


async def test_huge_values_are_refused_with_a_short_message_and_a_short_log_line(
    shell_server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running_scout(config({"h": shell_server.host_config("h")})) as s:
        for fields in (
            {"host": "h" * 10 * 1024 * 1024, "command": "true"},
            {"host": "h", "command": "true", "env": {"N" * 5 * 1024 * 1024: "v"}},
            {"host": "h", "command": "true", "env": {"A\n": "v"}},
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await s.stub.Execute(exec_pb2.ExecuteRequest(**fields))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert len(info.value.details() or "") < 300
        with pytest.raises(grpc.aio.AioRpcError) as info:  # over the receive limit
            await s.stub.Execute(exec_pb2.ExecuteRequest(host="x" * 60 * 1024 * 1024))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # the whole line as an operator's pipeline gets it, fields too (the host among them)
    for formatter in (JsonFormatter(), TextFormatter()):
        assert max(len(formatter.format(r)) for r in caplog.records) < 1000


FORGED = "\n2026-01-01 00:00:00,000 INFO server.rpc: Execute OK 0.001s [caller=admin]"
FIELD = r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s\]"]+)'
FIELDS = re.compile(rf"(?P<head>.*) \[(?P<fields>{FIELD}(?: {FIELD})*)\]")


def fields_of(line: str) -> dict[str, str]:
    """The [k=v ...] fields at the end of a text log line, values unquoted: after the last
    ` [` where the rest reads as fields (a quoted value cannot end them early)."""
    match = FIELDS.fullmatch(line)
    assert match is not None, line
    return {
        k: json.loads(v) if v.startswith('"') else v for k, v in re.findall(FIELD, match["fields"])
    }


async def test_no_caller_can_forge_a_text_log_line(
    shell_server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sneaky = "h] status=OK caller=admin [x"  # a valid host name: no control characters
    async with running_scout(config({"h": shell_server.host_config("h")})) as s:
        for host in ("h" + FORGED, "h\r\x1b[2K", sneaky):
            with pytest.raises(grpc.aio.AioRpcError):
                await s.stub.Execute(
                    exec_pb2.ExecuteRequest(host=host, command="true" + FORGED),
                    metadata=(("x-request-id", "r] caller=admin"),),
                )
    formatter = TextFormatter()
    access = [r for r in caplog.records if r.name == "server.rpc"]
    assert len(access) == 3
    for record in access:
        line = formatter.format(record)
        assert "\n" not in line and "\r" not in line and "\x1b" not in line, line
        assert set(fields_of(line)) == {"status", "duration", "host"}, line
    hosts = [fields_of(formatter.format(r))["host"] for r in access]
    assert hosts == ["(invalid)", "(invalid)", sneaky]
    # a message that carries a caller's value stays on its line
    record = logging.makeLogRecord({"msg": "ExecuteMany on %s failed", "args": (FORGED,)})
    assert "\n" not in formatter.format(record)
    assert "\\n2026-01-01" in formatter.format(record)


# ---- 6. the output budget --------------------------------------------------------------


async def test_buffered_output_waits_for_the_budget_and_stays_near_it(
    shell_server: ScriptedServer,
) -> None:
    cfg = config(
        {"h": shell_server.host_config("h")},
        exec={"max_output_bytes": 1_000_000, "max_buffered_output_bytes": 4_000_000},
    )
    async with running_scout(cfg) as s:
        cmd = "head -c 1000000 /dev/zero; head -c 1000000 /dev/zero >&2; sleep 0.3"
        results = await asyncio.gather(*(s.execute(host="h", command=cmd) for _ in range(8)))
        assert all(len(r.stdout) == len(r.stderr) == 1_000_000 for r in results)
        budget = s.app.service.output_budget
        assert budget.paused > 0  # some calls waited for room
        assert budget.peak <= budget.limit + 8 * 2 * 1024 * 1024  # one window each, at most
        assert budget.used == 0


# ---- 7. a default client gets a full default response ----------------------------------


async def test_a_default_grpc_client_receives_the_largest_default_response(
    shell_server: ScriptedServer,
) -> None:
    async with running_scout(config({"h": shell_server.host_config("h")})) as s:
        async with grpc.aio.insecure_channel(s.target) as channel:  # 4 MiB receive limit
            stub = exec_pb2_grpc.ExecServiceStub(channel)
            cmd = "head -c 3000000 /dev/urandom; head -c 3000000 /dev/urandom >&2"
            r = await stub.Execute(exec_pb2.ExecuteRequest(host="h", command=cmd, text=True))
        assert len(r.stdout) == len(r.stderr) == 1_000_000
        assert r.stdout_truncated and r.stdout_bytes == 3_000_000
        assert len(r.stdout_text.encode()) <= 1_000_000  # replacement chars are capped too


# ---- 8. an idle Stream -----------------------------------------------------------------


async def test_a_stream_that_never_starts_is_dropped(shell_server: ScriptedServer) -> None:
    cfg = config({"h": shell_server.host_config("h")}, exec={"stream_start_timeout": 0.3})
    async with running_scout(cfg) as s:

        async def nothing() -> AsyncIterator[exec_pb2.StreamRequest]:
            await asyncio.sleep(30)
            yield exec_pb2.StreamRequest()

        began = time.monotonic()
        await s.assert_stream_fails(
            nothing(), grpc.StatusCode.INVALID_ARGUMENT, "no `start` message within 0.3s", 30
        )
        assert time.monotonic() - began < 2.0
        assert s.app.service.rpcs.in_flight == 0


# ---- 9. malformed messages -------------------------------------------------------------


async def test_bytes_that_are_not_a_message_get_invalid_argument_and_no_traceback(
    shell_server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running_scout(config({"h": shell_server.host_config("h")})) as s:
        execute = s.channel.unary_unary(EXECUTE)
        for body in (b"\xff\xff\xff\xff", b"\x0a\x02\xff\xfe"):  # garbage; bad UTF-8 host
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await execute(body)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "not a valid message" in (info.value.details() or "")
        stream = s.channel.stream_stream(STREAM)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in stream(iter([b"\xff\xff\xff"])):
                pass
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in caplog.records if r.exc_info]


# ---- 10. validation gaps ---------------------------------------------------------------


async def test_malformed_fields_are_invalid_argument(shell_server: ScriptedServer) -> None:
    async with running_scout(config({"h": shell_server.host_config("h")})) as s:
        bad_duration = exec_pb2.ExecuteRequest(host="h", command="true")
        bad_duration.timeout.seconds, bad_duration.timeout.nanos = 1, 1_000_000_000
        for request in (
            exec_pb2.ExecuteRequest(host="h", command="true", env={"A\n": "1"}),
            exec_pb2.ExecuteRequest(host="h\0", command="true"),
            bad_duration,
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await s.stub.Execute(request)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request

        async def resize_zero() -> AsyncIterator[exec_pb2.StreamRequest]:
            yield exec_pb2.StreamRequest(
                start=exec_pb2.ExecuteRequest(host="h", command="sleep 5", pty=True)
            )
            yield exec_pb2.StreamRequest(resize=exec_pb2.TerminalSize(columns=0, rows=0))
            await asyncio.sleep(10)

        await s.assert_stream_fails(resize_zero(), grpc.StatusCode.INVALID_ARGUMENT, "resize")


# ---- 11. unreachable hosts -------------------------------------------------------------


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts TCP connections and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield sock.getsockname()[1]


async def test_a_host_that_never_speaks_is_one_connect_timeout_and_unavailable(
    silent_port: int, ssh_keys: ShellKeys
) -> None:
    host = HostConfig(
        name="mute",
        address="127.0.0.1",
        port=silent_port,
        user="u",
        known_hosts=ssh_keys.known_hosts,
    )
    async with running_scout(config({"mute": host}, pool={"connect_timeout": 1.0})) as s:
        began = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.execute(host="mute", command="true")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "timed out" in (info.value.details() or "")
        assert 0.9 < time.monotonic() - began < 1.8  # one connect, not retried
    async with running_scout(config({"mute": host}, pool={"connect_timeout": 10.0})) as s:
        began = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.execute(host="mute", command="true", rpc_timeout=1.0)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "while connecting" in (info.value.details() or "")
        assert started(info.value) == "false"
        assert time.monotonic() - began < 1.0


# ---- 12. known_hosts while the server runs ---------------------------------------------


async def test_a_host_key_added_and_revoked_while_scout_runs(
    shell_server: ScriptedServer, tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    entry = shell_server.keys.known_hosts.read_text().splitlines()
    line = next(x for x in entry if x.startswith(f"[{shell_server.address}]:{shell_server.port} "))
    host = HostConfig(
        name="h",
        address=shell_server.address,
        port=shell_server.port,
        user=shell_server.user,
        identity_file=shell_server.identity_file,
        known_hosts=known,
    )
    async with running_scout(config({"h": host})) as s:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.execute(host="h", command="true")
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        details = info.value.details() or ""
        assert "host key unknown" in details and "SHA256:" in details and str(known) in details
        known.write_text(line + "\n")  # an operator adds the key; no restart
        await s.app.reload()  # what SIGHUP (or the file check every 2 s) does
        assert (await s.execute(host="h", command="echo in")).stdout == b"in\n"
        other = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh")
        impostor = line.split(" ", 1)[0] + " " + other.decode().strip() + "\n"
        known.write_text(impostor)  # ... and later replaces it: the old key is revoked
        await s.app.reload()  # what SIGHUP (or the file check every 2 s) does
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.execute(host="h", command="true")
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "HOST KEY CHANGED" in (info.value.details() or "")


# ---- 13. small ones --------------------------------------------------------------------


async def test_missing_key_or_known_hosts_file_stops_the_start_naming_it(tmp_path: Path) -> None:
    known, key = tmp_path / "known_hosts", tmp_path / "id"
    known.write_text("")
    write_key(key, asyncssh.generate_private_key("ssh-ed25519"))
    base = HostConfig(name="h", address="127.0.0.1", user="u", known_hosts=known, identity_file=key)
    for host in (
        dataclasses.replace(base, identity_file=tmp_path / "no-such-key"),
        dataclasses.replace(base, known_hosts=tmp_path / "no-such-known_hosts"),
    ):
        missing = host.identity_file if host.identity_file != key else host.known_hosts
        with pytest.raises(ConfigError, match=str(missing)):
            await start(Config(hosts={"h": host}), "127.0.0.1:0")
    key.chmod(0o644)  # readable by others: refused, as ssh refuses it
    with pytest.raises(ConfigError, match="too open"):
        await start(Config(hosts={"h": base}), "127.0.0.1:0")


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        done = server_exits("--demo", "--listen", f"127.0.0.1:{port}")
    assert done.returncode == 1
    lines = done.stderr.decode().strip().splitlines()
    assert lines[-1] == (
        f"scout-server: cannot listen on 127.0.0.1:{port} "
        "(in use, or not an address of this machine)"
    )
    assert not any("Traceback" in x for x in lines)


async def test_a_flood_of_stream_messages_is_paced(shell_server: ScriptedServer) -> None:
    cfg = config({"h": shell_server.host_config("h")}, exec={"stream_messages_per_second": 100})
    async with running_scout(cfg) as s:

        async def flood() -> AsyncIterator[exec_pb2.StreamRequest]:
            yield exec_pb2.StreamRequest(
                start=exec_pb2.ExecuteRequest(host="h", command="cat >/dev/null; echo done")
            )
            for _ in range(300):
                yield exec_pb2.StreamRequest(stdin=b"x")
            yield exec_pb2.StreamRequest(close_stdin=True)

        began = time.monotonic()
        out = [m async for m in s.stub.Stream(flood(), timeout=30)]
        assert out[-1].exit.exit_code == 0
        assert time.monotonic() - began >= 1.9  # 100 at once, then 100 a second
