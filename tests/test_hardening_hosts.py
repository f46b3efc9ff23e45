"""Faulty hosts and networks cost one bounded wait, never the host or the server.

A frozen connection (sshd stopped with SIGSTOP), a host that never speaks, a host key
added and revoked while scout runs.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import grpc
import pytest

from server.config import HostConfig
from server.keyfiles import ShellKeys
from testkit.processes import gone, marker, sleeping, sleeps
from testkit.scripted import ScriptedServer
from testkit.sshd import OpenSSHServer

from .scoutd import Scout, config, running_scout, secs, started

# ---- a frozen connection ---------------------------------------------------------------


@pytest.mark.sshd
async def test_a_frozen_connection_costs_one_channel_open_timeout_not_the_host(
    openssh: OpenSSHServer, openssh_scout: Scout
) -> None:
    m = marker()
    hostage = asyncio.ensure_future(openssh_scout.execute(host="o", command=f"sleep {m}"))
    assert await sleeping(m)  # the sleep itself, not only the shell that starts it
    (command,) = sleeps(m)
    frozen = openssh.connection_processes(command)
    assert frozen
    for p in frozen:
        p.send_signal(signal.SIGSTOP)
    try:
        began = time.monotonic()
        r = await openssh_scout.execute(
            host="o", command="echo alive", timeout=secs(10), rpc_timeout=30
        )
        assert r.stdout == b"alive\n"
        # one channel-open timeout (2 s) and a fresh connect, not the command's 10 s
        assert time.monotonic() - began < 8.0
        began = time.monotonic()  # the frozen connection is no longer chosen
        r = await openssh_scout.execute(
            host="o", command="echo again", timeout=secs(5), rpc_timeout=30
        )
        # a fresh connection, not the frozen one's 5 s command timeout
        assert r.stdout == b"again\n" and time.monotonic() - began < 3.0
        assert openssh_scout.app.pool.stats.evictions.get("stalled") == 1
    finally:
        for p in frozen:
            p.send_signal(signal.SIGCONT)
        hostage.cancel()
        await asyncio.gather(hostage, return_exceptions=True)
    assert await gone(f"sleep {m}", within=5)


# ---- unreachable hosts -----------------------------------------------------------------


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


# ---- known_hosts while the server runs -------------------------------------------------


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
