"""The clients of durable commands against the real server, with a real TCP cut: the
Python Client's RetryPolicy through testkit/cutproxy.py, the Stream iterator re-attaching
byte for byte, and `scout exec --idempotency-key` / `scout attach` end to end.

scout runs in this process (tests/scoutd.py) with its SQLite outcome store in tmp_path;
host "local" is the in-process SSH server (testkit/scripted.py), which counts the exec
requests it receives: the far side's word that a command ran once.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from client import (
    Aborted,
    AlreadyExists,
    Client,
    ExecuteManyCall,
    Exit,
    Lost,
    Result,
    RetryPolicy,
    Stdout,
)
from client.cli import amain
from client.fleet import HostEvent
from testkit.cutproxy import CutProxy
from testkit.processes import eventually
from testkit.scripted import ScriptedServer

from .scoutd import Scout, config, running_scout

pytestmark = pytest.mark.timeout(60)
QUICK = RetryPolicy(initial_backoff=0.05, max_backoff=0.5, deadline=30, detach_grace=30)
NEVER_CUT = 1 << 40


@pytest.fixture
async def scout(shell_server: ScriptedServer, tmp_path: Path) -> AsyncIterator[Scout]:
    """scout with host "local" and its outcome store in tmp_path."""
    hosts = {"local": shell_server.host_config("local")}
    store = f"sqlite:{tmp_path / 'durable.db'}"
    async with running_scout(config(hosts, durable={"store": store})) as s:
        yield s


@pytest.fixture
async def proxy(scout: Scout) -> AsyncIterator[CutProxy]:
    """A TCP proxy in front of scout that cuts when told (abort())."""
    host, port = scout.target.rsplit(":", 1)
    cut = await CutProxy((host, int(port)), cut_after=NEVER_CUT).start()
    try:
        yield cut
    finally:
        await cut.close()


def execs(server: ScriptedServer) -> int:
    return server.stats.exec_requests


async def started_one_more(server: ScriptedServer, before: int) -> None:
    assert await eventually(lambda: execs(server) == before + 1, within=10)


# ---- Execute ------------------------------------------------------------------------


async def test_execute_cut_mid_command_is_retried_to_the_one_outcome(
    proxy: CutProxy, shell_server: ScriptedServer
) -> None:
    before = execs(shell_server)
    line = "sleep 1; echo ran at $(date +%s%N); exit 7"
    async with Client(f"127.0.0.1:{proxy.port}", retry=QUICK) as client:
        running = asyncio.ensure_future(
            client.execute("local", line, idempotency_key="deploy-1", timeout=20)
        )
        await started_one_more(shell_server, before)
        proxy.abort()  # both sockets reset: the client learns only from its own
        result = await running
        assert (result.exit_code, result.stdout.startswith(b"ran at ")) == (7, True)
        again = await client.execute("local", line, idempotency_key="deploy-1", timeout=20)
    assert again.replayed and (again.stdout, again.exit_code) == (result.stdout, 7)
    assert execs(shell_server) == before + 1  # the far side saw one exec request


async def test_a_retry_while_it_runs_waits_for_the_same_outcome(
    scout: Scout, shell_server: ScriptedServer
) -> None:
    before = execs(shell_server)
    line = "sleep 1; echo ran at $(date +%s%N)"
    async with Client(scout.target, retry=QUICK) as client:
        first = asyncio.ensure_future(client.execute("local", line, idempotency_key="k-wait"))
        await started_one_more(shell_server, before)
        second = await client.execute("local", line, idempotency_key="k-wait")
        assert (await first).stdout == second.stdout
    assert execs(shell_server) == before + 1


async def test_same_key_another_command_is_already_exists(
    scout: Scout, shell_server: ScriptedServer
) -> None:
    async with Client(scout.target, retry=QUICK) as client:
        await client.execute("local", "echo one", idempotency_key="k-conflict")
        before = execs(shell_server)
        with pytest.raises(AlreadyExists) as info:
            await client.execute("local", "echo two", idempotency_key="k-conflict")
    assert "k-conflict" in str(info.value) and not info.value.may_have_run
    assert execs(shell_server) == before


async def test_a_fan_out_cut_mid_command_reports_each_host_once(
    tmp_path: Path, shell_server: ScriptedServer
) -> None:
    hosts = {name: shell_server.host_config(name) for name in ("web1", "web2")}
    durable = {"store": f"sqlite:{tmp_path / 'durable.db'}"}
    async with running_scout(config(hosts, durable=durable)) as s:
        host, port = s.target.rsplit(":", 1)
        cut = await CutProxy((host, int(port)), cut_after=NEVER_CUT).start()
        before = execs(shell_server)
        try:
            async with Client(f"127.0.0.1:{cut.port}", retry=QUICK) as client:
                call = client.execute_many(
                    ["web1", "web2"], "sleep 1; echo ran", idempotency_key="fan-1", timeout=20
                )
                running = asyncio.ensure_future(collect(call))
                assert await eventually(lambda: execs(shell_server) == before + 2, within=10)
                cut.abort()
                events = await running
        finally:
            await cut.close()
    assert sorted(e.host for e in events) == ["web1", "web2"]  # each once
    assert all(isinstance(e, Result) and e.stdout == b"ran\n" for e in events), events
    assert call.retries >= 1
    assert execs(shell_server) == before + 2


async def collect(call: ExecuteManyCall) -> list[HostEvent]:
    async with call:
        return [event async for event in call]


# ---- Stream -------------------------------------------------------------------------

COUNT = 'for i in $(seq 1 60); do echo "line $i of a numbered output"; sleep 0.03; done'
COUNTED = b"".join(b"line %d of a numbered output\n" % i for i in range(1, 61))


async def test_stream_through_a_cut_reattaches_byte_for_byte(
    proxy: CutProxy, shell_server: ScriptedServer
) -> None:
    before = execs(shell_server)
    got = bytearray()
    async with (
        Client(f"127.0.0.1:{proxy.port}", retry=QUICK) as client,
        client.stream("local", COUNT, close_stdin=True, timeout=30) as call,
    ):
        async for event in call:
            if isinstance(event, Stdout):
                got += event.data
                if b"line 10 " in got and not proxy.cut.is_set():
                    proxy.abort()
            assert not isinstance(event, Exit) or event.status.exit_code == 0
        assert call.reconnects >= 1 and call.exit_status is not None
    assert bytes(got) == COUNTED
    assert execs(shell_server) == before + 1


async def test_attach_from_the_python_client_replays_then_goes_live(
    scout: Scout, shell_server: ScriptedServer
) -> None:
    async with Client(scout.target) as client:
        async with client.stream(
            "local", COUNT, close_stdin=True, idempotency_key="k-attach", detach_grace=30
        ) as first:
            async for event in first:
                if isinstance(event, Stdout) and b"line 5 " in event.data:
                    break  # leave: the command keeps running for its grace
        async with client.attach("local", "k-attach", stdout_offset=6) as call:
            got = b"".join([e.data async for e in call if isinstance(e, Stdout)])
    assert got == COUNTED[6:]
    assert call.exit_status is not None and call.exit_status.exit_code == 0


async def test_output_older_than_the_replay_buffer_is_a_lost_event(
    tmp_path: Path, shell_server: ScriptedServer
) -> None:
    """Attached after 3000 bytes with a 1000-byte buffer: Lost says how much is gone, then
    the kept bytes and the live rest follow, byte for byte from there."""
    hosts = {"local": shell_server.host_config("local")}
    durable = {"store": f"sqlite:{tmp_path / 'durable.db'}", "replay_buffer_bytes": 1000}
    hundred = "printf %0100d 0 | tr 0 a"  # 100 bytes, written as one chunk
    line = f"printf start; sleep 0.3; for i in $(seq 30); do {hundred}; sleep 0.02; done; "
    line += "sleep 1; printf done"
    async with (
        running_scout(config(hosts, durable=durable)) as s,
        Client(s.target) as client,
    ):
        async with client.stream(
            "local", line, close_stdin=True, idempotency_key="k-lost-bytes", detach_grace=30
        ) as first:
            async for event in first:
                assert event == Stdout(b"start")
                break  # leave with 5 bytes; the command goes on without us
        (run,) = s.app.service.durable.runs.values()
        for _ in range(200):  # the 3000 bytes written meanwhile, and read by scout
            if run.log.appended >= 5 + 3000:
                break
            await asyncio.sleep(0.05)
        async with client.attach("local", "k-lost-bytes", stdout_offset=5) as call:
            events = [event async for event in call]
    (lost,) = [e for e in events if isinstance(e, Lost)]
    assert lost.stream == "stdout" and 2000 <= lost.bytes < 3000, events
    rest = b"".join(e.data for e in events if isinstance(e, Stdout))
    assert rest == b"a" * (3000 - lost.bytes) + b"done"  # from the oldest kept byte on
    assert call.offsets == (3009, 0)


async def cli(*argv: str) -> tuple[int, bytes, bytes]:
    out, err = io.BytesIO(), io.BytesIO()
    code = await amain(list(argv), stdin=None, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


async def test_scout_exec_with_a_key_then_attach(
    scout: Scout, shell_server: ScriptedServer
) -> None:
    before = execs(shell_server)
    line = "echo first; sleep 1; echo second; exit 3"
    target = ["--target", scout.target]
    keyed = ["--idempotency-key", "cli-1", "--detach-grace", "1m"]
    leaving = asyncio.ensure_future(cli("exec", "local", *target, *keyed, "--", line))
    await started_one_more(shell_server, before)
    leaving.cancel()  # Ctrl-C twice: we go, the command stays for its grace
    assert (await leaving)[0] == 130  # interrupted
    code, out, err = await cli("attach", "local", "cli-1", *target)
    assert (code, out) == (3, b"first\nsecond\n"), err
    code, out, err = await cli("exec", "local", *target, *keyed, "--", line)
    assert (code, out) == (3, b"first\nsecond\n")
    assert b"had already ended" in err
    assert execs(shell_server) == before + 1


async def test_scout_attach_to_an_unknown_key_exits_125(scout: Scout) -> None:
    code, out, err = await cli("attach", "local", "no-such-key", "--target", scout.target)
    assert (code, out) == (125, b"")
    assert err.startswith(b"scout: ")


async def test_outcome_unknown_is_not_retried(tmp_path: Path, shell_server: ScriptedServer) -> None:
    """A key whose run started in a scout that stopped before it ended (its outcome is
    unknown): the retry gets ABORTED, once, and nothing runs again."""
    hosts = {"local": shell_server.host_config("local")}
    durable = {"store": f"sqlite:{tmp_path / 'durable.db'}"}
    line = "sleep 30"
    before = execs(shell_server)
    async with running_scout(config(hosts, durable=durable)) as s, Client(s.target) as client:
        running = asyncio.ensure_future(
            client.execute("local", line, idempotency_key="k-lost", detach_grace=60)
        )
        await started_one_more(shell_server, before)
    running.cancel()  # the scout that ran it is gone, and the command with it
    async with (
        running_scout(config(hosts, durable=durable)) as s,
        Client(s.target, retry=QUICK) as client,
    ):
        with pytest.raises(Aborted) as info:
            await client.execute("local", line, idempotency_key="k-lost", detach_grace=60)
        code, out, err = await cli(
            "exec", "local", "--target", s.target, "--idempotency-key", "k-lost", "--", line
        )
    assert info.value.may_have_run and info.value.decided_by_scout
    assert "outcome is unknown" in str(info.value)
    assert (code, out) == (255, b"")  # scout lost track of it: it may have run
    assert b"outcome is unknown" in err and err.endswith(b"(the command may have run)\n")
    assert execs(shell_server) == before + 1


async def test_scout_exec_on_many_hosts_with_a_key_runs_each_host_once(
    tmp_path: Path, shell_server: ScriptedServer
) -> None:
    hosts = {name: shell_server.host_config(name) for name in ("web1", "web2")}
    durable = {"store": f"sqlite:{tmp_path / 'durable.db'}"}
    async with running_scout(config(hosts, durable=durable)) as s:
        before = execs(shell_server)
        argv = ["exec", "web1", "web2", "--target", s.target, "--idempotency-key", "fan-cli"]
        first = await cli(*argv, "--", "echo ran at $(date +%s%N)")
        again = await cli(*argv, "--", "echo ran at $(date +%s%N)")
    assert first[0] == again[0] == 0
    assert sorted(first[1].splitlines()) == sorted(again[1].splitlines())  # the same runs
    assert execs(shell_server) == before + 2
