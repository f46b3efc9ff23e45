"""Every way out of a command, checked on the far side: the SSH server's sessions and processes.

Each test ends by looking at the server, not at scout's counters: the in-process server's
open sessions (`open_sessions()`), or the commands sshd still runs (`commands()`), and the
test's own marker in the process list. Adversarial timing comes from the scripted server:
per test, by a fixture argument (open_delay, max_sessions) or a directive in front of the
command (`@late-exec=SECS`, `@no-exit-status`).
"""

from __future__ import annotations

import asyncio
import logging
import pwd
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from scout.v1 import exec_pb2
from server.command import RunningCommand
from server.config import HostConfig
from server.keyfiles import ShellKeys
from testkit.processes import eventually, gone, marker, running, sleeping
from testkit.scripted import ScriptedServer, scripted_server, start_scripted
from testkit.sshd import OpenSSHServer, login_user

from .scoutd import Scout, config, running_scout, secs, started


@pytest.fixture
async def slow_open(ssh_keys: ShellKeys) -> AsyncIterator[ScriptedServer]:
    """A server that confirms each channel open a second late."""
    async with scripted_server(ssh_keys, open_delay=1.0) as server:
        yield server


async def far_side_clean(server: ScriptedServer, pattern: str, scout: Scout) -> None:
    """No session open on the server, no process of the test, no channel held by scout."""
    assert await eventually(lambda: server.open_sessions() == 0), server.channels_per_connection()
    assert await gone(pattern, within=3.0)
    assert await eventually(lambda: scout.app.pool.reserved == 0)


async def test_cancel_during_a_slow_channel_open_stops_what_the_late_open_started(
    slow_open: ScriptedServer,
) -> None:
    m = marker()
    async with running_scout(config({"h": slow_open.host_config("h")})) as s:
        call = s.stub.Execute(exec_pb2.ExecuteRequest(host="h", command=f"sleep {m}"))
        await asyncio.sleep(0.4)  # the connection is up; the channel open is pending
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        # The open completes at ~1 s, after the caller left: the channel closes unused.
        await asyncio.sleep(1.0)
        await far_side_clean(slow_open, f"sleep {m}", s)
    assert slow_open.stats.sessions_opened == 1
    assert slow_open.stats.exec_requests == 0


async def test_opens_that_outlive_their_deadline_run_nothing(slow_open: ScriptedServer) -> None:
    """Told "nothing started" (x-scout-started: false), a caller may retry: so nothing may
    run, neither the late open nor the retry on another connection (docs/architecture.md,
    pool rule 7)."""
    m = marker()
    async with running_scout(config({"h": slow_open.host_config("h")})) as s:
        await s.execute(host="h", command="true")  # connected: only the opens are slow
        calls = [s.execute(host="h", command=f"sleep {m}", rpc_timeout=0.5) for _ in range(5)]
        errors = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(e, grpc.aio.AioRpcError) for e in errors), errors
        assert {started(e) for e in errors} == {"false"}, errors
        await asyncio.sleep(1.5)  # every late open has been confirmed by now
        await far_side_clean(slow_open, f"sleep {m}", s)
    assert slow_open.stats.exec_requests == 1  # the warm-up's `true`, and nothing else


async def test_a_deadline_during_a_late_exec_reply_is_may_have_run_and_stops_the_command(
    shell_server: ScriptedServer,
) -> None:
    m = marker()
    async with running_scout(config({"h": shell_server.host_config("h")})) as s:
        request = exec_pb2.ExecuteRequest(host="h", command=f"@late-exec=1.5 sleep {m}")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.stub.Execute(request, timeout=1.0)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert started(info.value) == "true"  # the exec was out: it may have started
        await asyncio.sleep(1.0)  # past the late reply, which starts the command...
        assert shell_server.stats.sessions_opened == 1
        await far_side_clean(shell_server, f"sleep {m}", s)  # ...that scout then stopped


async def test_a_bad_message_mid_stream_stops_the_command(shell_server: ScriptedServer) -> None:
    m = marker()
    async with running_scout(config({"h": shell_server.host_config("h")})) as s:
        queue: asyncio.Queue[exec_pb2.StreamRequest | None] = asyncio.Queue()
        await queue.put(
            exec_pb2.StreamRequest(start=exec_pb2.ExecuteRequest(host="h", command=f"sleep {m}"))
        )

        async def requests() -> AsyncIterator[exec_pb2.StreamRequest]:
            while (msg := await queue.get()) is not None:
                yield msg

        call = s.stub.Stream(requests(), timeout=10)
        await call.initial_metadata()
        assert await running(f"sleep {m}")
        await queue.put(exec_pb2.StreamRequest())  # carries no event
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "must carry an event" in (info.value.details() or "")
        assert "the command had started and has been stopped" in (info.value.details() or "")
        assert started(info.value) == "true"  # it had started: not "nothing ran"
        await far_side_clean(shell_server, f"sleep {m}", s)


@pytest.mark.sshd
async def test_the_rpc_deadline_leaves_time_to_kill_a_command_that_ignores_term(
    openssh: OpenSSHServer, openssh_scout: Scout
) -> None:
    m = marker()
    began = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await openssh_scout.execute(rpc_timeout=4.0, host="o", command=f"trap '' TERM; sleep {m}")
    took = time.monotonic() - began
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # scout's own answer, before the caller's deadline, after the command was stopped
    assert "the RPC deadline" in (info.value.details() or "") and took < 4.0
    assert started(info.value) == "true"
    assert await gone(f"sleep {m}", within=0.5)
    assert await eventually(lambda: not openssh.commands())
    assert await eventually(lambda: openssh_scout.app.pool.reserved == 0)


@pytest.mark.parametrize("target", ["shell", "openssh"])
async def test_a_signal_does_not_wait_behind_stdin_the_command_never_reads(
    target: str, shell_server: ScriptedServer, openssh: OpenSSHServer
) -> None:
    m = marker()
    host = shell_server.host_config("h") if target == "shell" else openssh.host_config("h")
    async with running_scout(config({"h": host})) as s:
        chunk = b"x" * 65536

        async def requests() -> AsyncIterator[exec_pb2.StreamRequest]:
            yield exec_pb2.StreamRequest(
                start=exec_pb2.ExecuteRequest(host="h", command=f"sleep {m}")
            )
            for _ in range(64):  # 4 MiB the command never reads
                yield exec_pb2.StreamRequest(stdin=chunk)
            # a signal that reaches the shell before it has started `sleep` may be lost
            assert await sleeping(m, within=10)
            signalled.append(time.monotonic())
            yield exec_pb2.StreamRequest(signal="TERM")
            await asyncio.sleep(30)  # keep the request stream open

        signalled: list[float] = []
        call = s.stub.Stream(requests(), timeout=20)
        last = None
        async for msg in call:
            last = msg
        assert last is not None and last.exit.signal == "TERM"
        assert time.monotonic() - signalled[0] < 3.0  # not behind the unread stdin
        assert await gone(f"sleep {m}", within=2.0)


async def test_a_server_that_refuses_every_session_is_failed_precondition_at_once(
    ssh_keys: ShellKeys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="server.pool")
    server = await start_scripted(ssh_keys, max_sessions=0)
    try:
        async with running_scout(config({"h": server.host_config("h")})) as s:
            began = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await s.execute(host="h", command="true", timeout=secs(20))
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "does not allow sessions" in (info.value.details() or "")
            assert started(info.value) == "false"
            assert time.monotonic() - began < 2.0
        refusals = [r.getMessage() for r in caplog.records if "channel refused" in r.msg]
        assert refusals and "(0 other channels on it)" in refusals[0]  # a pool event, at DEBUG
    finally:
        await server.close()


async def test_a_channel_closed_without_exit_status_is_aborted_not_killed(
    shell_server: ScriptedServer,
) -> None:
    async with running_scout(config({"h": shell_server.host_config("h")})) as s:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.execute(host="h", command="@no-exit-status echo hi")
        assert info.value.code() == grpc.StatusCode.ABORTED
        assert "without an exit status" in (info.value.details() or "")
        assert started(info.value) == "true"
        await far_side_clean(shell_server, "echo hi", s)


async def test_a_stream_that_ends_aborted_stops_reading_its_callers_messages(
    shell_server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_scout(config({"h": shell_server.host_config("h")})) as s:
        stop = asyncio.Event()

        async def requests() -> AsyncIterator[exec_pb2.StreamRequest]:
            start = exec_pb2.ExecuteRequest(host="h", command="@no-exit-status echo hi")
            yield exec_pb2.StreamRequest(start=start)
            await stop.wait()  # the caller stays, sending nothing (it may still write)

        call = s.stub.Stream(requests(), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
        assert info.value.code() == grpc.StatusCode.ABORTED
        assert started(info.value) == "true"

        def pumps() -> list[asyncio.Task[object]]:
            return [t for t in asyncio.all_tasks() if "StdinPump" in repr(t.get_coro())]

        assert await eventually(lambda: not pumps()), pumps()
        stop.set()
        await far_side_clean(shell_server, "echo hi", s)
    assert "Task was destroyed" not in caplog.text


async def test_a_stop_that_raises_still_frees_the_channels_place(
    shell_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: RunningCommand, within: float | None = None) -> None:
        self.chan.close()  # the far side is told, but the stop itself fails
        raise RuntimeError("the stop broke")

    monkeypatch.setattr(RunningCommand, "stop", broken)
    host = shell_server.host_config("h")
    one_place = {"max_sessions_per_connection": 1, "max_connections_per_host": 1}
    async with running_scout(config({"h": host}, pool=one_place)) as s:
        for _ in range(3):  # one place: each call needs the one before to have freed it
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await s.execute(host="h", command="sleep 5", timeout=secs(0.3), rpc_timeout=5)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert await eventually(lambda: s.app.pool.reserved == 0)


async def test_a_retired_connection_under_a_long_stream_does_not_block_its_replacement(
    shell_server: ScriptedServer,
) -> None:
    m = marker()
    cfg = config(
        {"h": shell_server.host_config("h")},
        pool={"max_connections_per_host": 1, "max_age": 0.3, "idle_timeout": 60.0},
    )
    async with running_scout(cfg) as s:
        long = asyncio.ensure_future(s.execute(host="h", command=f"sleep 3; echo {m}"))
        await asyncio.sleep(0.8)  # the first connection is past max_age: draining
        r = await s.execute(host="h", command="echo fresh", rpc_timeout=5)
        # answered on a new connection while the long command still runs, not after it
        assert r.stdout == b"fresh\n" and not long.done()
        assert (await long).stdout == f"{m}\n".encode()
        assert shell_server.stats.accepted == 2
        await far_side_clean(shell_server, m, s)


@pytest.mark.sshd
async def test_env_and_working_dir_keep_a_bash_login_shell(
    openssh: OpenSSHServer, tmp_path: Path
) -> None:
    user = login_user("/bin/bash")
    if Path(pwd.getpwnam(user).pw_shell).name != "bash":
        pytest.skip("needs root (to make a bash login user) or a bash login shell")
    host = HostConfig(
        name="b",
        address=openssh.address,
        port=openssh.port,
        user=user,
        identity_file=openssh.identity_file,
        known_hosts=openssh.known_hosts,
    )
    async with running_scout(config({"b": host})) as s:
        r = await s.execute(host="b", command='[[ "$A" == 1 ]] && echo bash', env={"A": "1"})
        assert (r.exit_code, r.stdout, r.stderr) == (0, b"bash\n", b"")
        r = await s.execute(host="b", command="pwd", working_dir="/tmp")
        assert (r.exit_code, r.stdout) == (0, b"/tmp\n")
        r = await s.execute(host="b", command="echo ran", working_dir="/nonexistent-dir")
        assert r.exit_code == 125 and r.stdout == b"" and b"nonexistent-dir" in r.stderr


async def test_stream_default_timeout_is_the_streams_own_and_says_so(
    shell_server: ScriptedServer,
) -> None:
    cfg = config({"h": shell_server.host_config("h")}, exec={"stream_default_timeout": 0.5})
    async with running_scout(cfg) as s:

        async def requests() -> AsyncIterator[exec_pb2.StreamRequest]:
            yield exec_pb2.StreamRequest(
                start=exec_pb2.ExecuteRequest(host="h", command="sleep 5", close_stdin=True)
            )
            await asyncio.sleep(10)

        await s.assert_stream_fails(
            requests(), grpc.StatusCode.DEADLINE_EXCEEDED, "the server's default for Stream"
        )


async def test_a_caller_that_sent_close_stdin_gets_its_status_without_half_closing(
    shell_server: ScriptedServer,
) -> None:
    async with running_scout(config({"h": shell_server.host_config("h")})) as s:

        async def requests() -> AsyncIterator[exec_pb2.StreamRequest]:
            yield exec_pb2.StreamRequest(
                start=exec_pb2.ExecuteRequest(host="h", command="echo hi", close_stdin=True)
            )
            await asyncio.sleep(10)  # like a Node client that never calls end()

        began = time.monotonic()
        messages = [m async for m in s.stub.Stream(requests(), timeout=10)]
        assert messages[-1].exit.exit_code == 0
        assert time.monotonic() - began < 1.8  # not the 2 s linger


async def test_statuses_scout_decides_before_the_host_say_nothing_started(
    shell_server: ScriptedServer,
) -> None:
    async with running_scout(config({"h": shell_server.host_config("h")})) as s:
        for host, command in (("nope", "true"), ("h", "")):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await s.execute(host=host, command=command)
            assert started(info.value) == "false", (host, command)
