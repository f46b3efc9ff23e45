"""The SSH test rigs work, checked with a plain asyncssh client (no scout code involved).

Remote commands are processes of this machine, so "the command is gone" is checked in
the process list; each test sleeps for a unique length so it never sees another's.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncssh
import pytest

from server.keyfiles import ShellKeys
from testkit.processes import gone, marker, process_list, running, sleeping
from testkit.scripted import ScriptedServer, close_all, connect, inventory, start_fleet
from testkit.sshd import OpenSSHServer

# ---- the in-process scripted server ------------------------------------------------


async def test_exec_reports_stdout_stderr_and_exit_code(shell_server: ScriptedServer) -> None:
    async with await connect(shell_server.host_config()) as conn:
        result = await conn.run("echo out; echo err >&2; exit 3")
    assert (result.stdout, result.stderr, result.exit_status) == (b"out\n", b"err\n", 3)


async def test_stdin_round_trip_is_binary_and_complete(shell_server: ScriptedServer) -> None:
    data = bytes(range(256)) * 8192  # 2 MiB: more than the stdin pipe and the window hold
    async with await connect(shell_server.host_config()) as conn:
        result = await conn.run("cat", input=data)
    assert result.exit_status == 0
    assert result.stdout == data


@pytest.fixture(params=["shell_server", pytest.param("openssh", marks=pytest.mark.sshd)])
def either_rig(request: pytest.FixtureRequest) -> ScriptedServer | OpenSSHServer:
    """The in-process server, then the real sshd: for behaviour both must share."""
    server: ScriptedServer | OpenSSHServer = request.getfixturevalue(request.param)
    return server


async def test_signal_int_ends_the_command_with_exit_signal(
    either_rig: ScriptedServer | OpenSSHServer,
) -> None:
    """Signals reach the command (the OpenSSH rig logs in as a non-root user: testkit/sshd.py)."""
    server = either_rig
    assert not isinstance(server, OpenSSHServer) or server.user != "root"
    m = marker()
    async with await connect(server.host_config()) as conn:
        proc = await conn.create_process(f"sleep {m}")
        assert await sleeping(m)
        proc.send_signal("INT")
        result = await asyncio.wait_for(proc.wait(), 5)
    assert result.exit_signal is not None
    assert result.exit_signal[0] == "INT"


async def test_channel_close_kills_the_process_group(shell_server: ScriptedServer) -> None:
    m = marker()
    async with await connect(shell_server.host_config()) as conn:
        proc = await conn.create_process(f"sleep {m} & sleep {m}; echo never")
        assert await running(m)
        proc.close()
        assert await gone(m), "the command outlived its channel"


async def test_dropped_connection_kills_the_command(shell_server: ScriptedServer) -> None:
    m = marker()
    conn = await connect(shell_server.host_config())
    await conn.create_process(f"sleep {m}")
    assert await running(m)
    conn.abort()
    assert await gone(m)


async def test_command_ignoring_term_is_killed_after_the_grace(
    shell_server: ScriptedServer,
) -> None:
    m = marker()
    async with await connect(shell_server.host_config()) as conn:
        proc = await conn.create_process(f"trap '' TERM; sleep {m}; true")
        assert await running(m)
        closed_at = time.monotonic()
        proc.close()
        assert await gone(m, within=shell_server.kill_grace + 1.5)
    assert time.monotonic() - closed_at >= shell_server.kill_grace * 0.9


async def test_slow_client_slows_the_command_down(shell_server: ScriptedServer) -> None:
    size = 20_000_000 + uuid.uuid4().int % 1000  # unique, so findable in the process list
    async with await connect(shell_server.host_config()) as conn:
        proc = await conn.create_process(f"head -c {size} /dev/zero")
        await asyncio.sleep(0.5)  # unthrottled, head would be done in well under that
        assert process_list(f"head -c {size}"), "output was not flow-controlled"
        received = len(await proc.stdout.read())
        await proc.wait()
    assert received == size


async def test_pty_has_the_requested_size_and_follows_resizes(
    shell_server: ScriptedServer,
) -> None:
    async with await connect(shell_server.host_config()) as conn:
        proc = await conn.create_process(
            "stty size; read x; stty size; tty", term_type="xterm", term_size=(80, 24)
        )
        first = await proc.stdout.readline()
        proc.change_terminal_size(100, 30)
        proc.stdin.write(b"\n")
        rest = await asyncio.wait_for(proc.stdout.read(), 5)
    assert first == b"24 80\r\n"
    assert rest.startswith(b"\r\n30 100\r\n/dev/pts/")  # the pty echoes the newline


async def test_refuses_sessions_beyond_max_sessions(shell_server: ScriptedServer) -> None:
    shell_server.max_sessions = 2
    async with await connect(shell_server.host_config()) as conn:
        held = [await conn.create_process("cat") for _ in range(2)]
        with pytest.raises(asyncssh.ChannelOpenError) as refused:
            await conn.create_process("true")
        assert (refused.value.code, refused.value.reason) == (2, "open failed")
        assert shell_server.stats.sessions_refused == 1
        assert shell_server.channels_per_connection() == {1: 2}
        held[0].stdin.write_eof()
        await held[0].wait()
        assert (await conn.run("true")).exit_status == 0
        held[1].stdin.write_eof()
        await held[1].wait()


async def test_counts_connections_and_drops_them(shell_server: ScriptedServer) -> None:
    host = shell_server.host_config()
    conns = [await connect(host) for _ in range(3)]
    stats = shell_server.stats
    assert (stats.accepted, stats.open, stats.peak_open) == (3, 3, 3)
    conns[0].close()
    await shell_server.wait_open(2)
    assert shell_server.drop_connections() == 2
    await asyncio.wait_for(asyncio.gather(*(c.wait_closed() for c in conns)), 5)
    await shell_server.wait_open(0)
    assert (stats.accepted, stats.peak_open) == (3, 3)


async def test_handshake_delay_slows_the_connect(shell_server: ScriptedServer) -> None:
    shell_server.handshake_delay = 0.5
    started = time.monotonic()
    async with await connect(shell_server.host_config()):
        assert time.monotonic() - started >= 0.5


async def test_hung_server_starves_keepalives(shell_server: ScriptedServer) -> None:
    conn = await connect(shell_server.host_config(), keepalive_interval=0.2, keepalive_count_max=2)
    shell_server.hang()
    await asyncio.wait_for(conn.wait_closed(), 5)  # the client gave up on keepalives
    shell_server.unhang()
    async with await connect(shell_server.host_config()) as again:
        assert (await again.run("true")).exit_status == 0


async def test_many_servers_share_keys_and_start_together(ssh_keys: ShellKeys) -> None:
    servers = await start_fleet(ssh_keys, 20, spread="addresses")
    try:
        config = inventory(servers)
        assert len({(h.address, h.port) for h in config.hosts.values()}) == 20
        for host in (config.hosts["host0"], config.hosts["host19"]):
            async with await connect(host) as conn:
                assert (await conn.run("echo hi")).stdout == b"hi\n"
    finally:
        await close_all(servers)


# ---- OpenSSH sshd ------------------------------------------------------------------


@pytest.mark.sshd
async def test_openssh_runs_commands(openssh: OpenSSHServer) -> None:
    async with await connect(openssh.host_config()) as conn:
        result = await conn.run("echo out; echo err >&2; exit 3")
        echoed = await conn.run("cat", input=b"\x00\xffdata")
    assert (result.stdout, result.stderr, result.exit_status) == (b"out\n", b"err\n", 3)
    assert echoed.stdout == b"\x00\xffdata"


@pytest.mark.sshd
async def test_openssh_refuses_the_eleventh_session(openssh: OpenSSHServer) -> None:
    async with await connect(openssh.host_config()) as conn:
        held = [await conn.create_process("cat") for _ in range(10)]
        with pytest.raises(asyncssh.ChannelOpenError) as refused:
            await conn.create_process("true")
        assert (refused.value.code, refused.value.reason) == (2, "open failed")
        for proc in held:
            proc.stdin.write_eof()  # cat ends; closing alone would not end it
        await asyncio.gather(*(p.wait() for p in held))
    assert "no more sessions" in openssh.log


@pytest.mark.sshd
async def test_openssh_counts_established_connections(openssh: OpenSSHServer) -> None:
    before = openssh.established_connections()
    conns = [await connect(openssh.host_config()) for _ in range(3)]
    assert openssh.established_connections() == before + 3
    for conn in conns:
        conn.close()
        await conn.wait_closed()
    for _ in range(100):
        if openssh.established_connections() == before:
            break
        await asyncio.sleep(0.02)
    assert openssh.established_connections() == before


@pytest.mark.sshd
async def test_openssh_pause_starves_keepalives(openssh: OpenSSHServer) -> None:
    conn = await connect(openssh.host_config(), keepalive_interval=0.2, keepalive_count_max=2)
    openssh.pause()
    try:
        await asyncio.wait_for(conn.wait_closed(), 5)
    finally:
        openssh.resume()
    async with await connect(openssh.host_config()) as again:
        assert (await again.run("true")).exit_status == 0


@pytest.mark.sshd
async def test_openssh_channel_close_does_not_stop_a_command(openssh: OpenSSHServer) -> None:
    """Without a pty, sshd confirms the close only when the command ends; a pty hangs up."""
    m = f"1.{uuid.uuid4().int % 10**6:06d}"  # between one and two seconds
    async with await connect(openssh.host_config()) as conn:
        proc = await conn.create_process(f"sleep {m}")
        assert await running(m)
        proc.close()
        await asyncio.sleep(0.2)
        assert process_list(m), "sshd stopped the command on channel close"
        await asyncio.wait_for(proc.wait_closed(), 5)
        assert not process_list(m)
        p = marker()
        tty = await conn.create_process(f"sleep {p}", term_type="xterm")
        assert await running(p)
        tty.close()
        assert await gone(p)
