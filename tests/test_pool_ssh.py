"""The pool against real SSH servers: OpenSSH's session limit, many hosts, bounds, keepalive."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from scout.v1 import exec_pb2
from server.config import Config, PoolSettings
from server.keyfiles import load_or_create_keys
from server.localshell import LocalShellServer
from testkit.processes import eventually, marker, sleeping, sleeps
from testkit.scripted import ScriptedServer, close_all, inventory, scripted_server, start_fleet
from testkit.sshd import OpenSSHServer

from .scoutd import running_scout


def with_pool(config: Config, **settings: Any) -> Config:
    return dataclasses.replace(config, pool=dataclasses.replace(PoolSettings(), **settings))


async def test_fifty_concurrent_commands_on_one_openssh_host(openssh: OpenSSHServer) -> None:
    """sshd allows 10 sessions per connection: the pool spreads 50 commands over several."""
    config = Config(hosts={"o": openssh.host_config("o")})
    peak_sshd = 0
    async with running_scout(config) as s:

        async def one(i: int) -> exec_pb2.ExecuteResponse:
            return await s.execute(host="o", command=f"sleep 0.3; echo {i}")

        async def watch() -> None:
            nonlocal peak_sshd
            while True:
                peak_sshd = max(peak_sshd, openssh.established_connections())
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        started = time.monotonic()
        results = await asyncio.gather(*(one(i) for i in range(50)), return_exceptions=True)
        elapsed = time.monotonic() - started
        watcher.cancel()
        errors = [r for r in results if not isinstance(r, exec_pb2.ExecuteResponse)]
        assert not errors, errors[:3]
        assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(50)]  # type: ignore[union-attr]
        conns = s.app.pool.connections()
        cap = s.app.pool.settings.max_sessions_per_connection
        assert len(conns) > 1 and s.app.pool.stats.connects == {"ok": len(conns)}
        assert all(pc.peak_channels <= cap for pc in conns)
        assert 1 < peak_sshd <= s.app.pool.settings.max_connections_per_host
        print(
            f"\n50 concurrent on OpenSSH: 0 errors, {len(conns)} connections, "
            f"peak {max(pc.peak_channels for pc in conns)} channels/connection, "
            f"{s.app.pool.stats.refusals} refusals, {elapsed:.2f}s"
        )


async def test_a_closed_session_goes_to_a_waiter_only_once_sshd_has_freed_it(
    openssh: OpenSSHServer,
) -> None:
    """scout told sshd's MaxSessions exactly (10, one connection): ten commands hold
    every session while two hundred more wait; then each close hands its place to a
    waiter. sshd frees a session only once it has handled every packet it read with the
    close, so a waiter's open sent right behind the close meets a full table (refused in
    5 runs of 6 before the pool settled each handed-on place with a round trip)."""
    config = with_pool(
        Config(hosts={"o": openssh.host_config("o")}),
        max_connections_per_host=1,
        max_sessions_per_connection=10,
    )
    m = marker()
    async with running_scout(config) as s:
        held = [
            asyncio.create_task(s.execute(host="o", command=f"sleep {m}; echo held"))
            for _ in range(10)
        ]
        assert await eventually(lambda: len(sleeps(m)) == 10, 10.0)
        quick = [asyncio.create_task(s.execute(host="o", command=f"echo {i}")) for i in range(200)]
        assert await eventually(lambda: s.app.pool.stats.waits >= 200, 10.0)
        for proc in sleeps(m):
            proc.kill()
        answers = await asyncio.gather(*held, *quick)
        stats = s.app.pool.stats
    assert [a.stdout for a in answers[10:]] == [f"{i}\n".encode() for i in range(200)]
    assert all(a.stdout == b"held\n" for a in answers[:10])
    assert stats.refusals == 0 and stats.retries == 0
    assert stats.settles >= 190  # every place handed to a waiter went through a round trip


async def test_two_hundred_hosts_never_exceed_the_connection_bound(tmp_path: Path) -> None:
    keys = load_or_create_keys(tmp_path / "keys")
    fleet = await start_fleet(keys, 200)
    live = peak = 0

    def counted(server: ScriptedServer) -> None:
        """Count this server's connections into the fleet-wide live/peak numbers."""
        made, lost = server.connection_made, server.connection_lost

        def on_made(conn: LocalShellServer) -> None:
            nonlocal live, peak
            live += 1
            peak = max(peak, live)
            made(conn)

        def on_lost(conn: LocalShellServer) -> None:
            nonlocal live
            live -= 1
            lost(conn)

        server.connection_made = on_made  # type: ignore[method-assign,assignment]
        server.connection_lost = on_lost  # type: ignore[method-assign,assignment]

    for server in fleet:  # counted where connections are accepted
        counted(server)
    config = with_pool(inventory(fleet), max_connections=50)
    try:
        async with running_scout(config) as s:
            started = time.monotonic()
            results = await asyncio.gather(
                *(s.execute(host=f"host{i % 200}", command=f"echo {i}") for i in range(400)),
                return_exceptions=True,
            )
            elapsed = time.monotonic() - started
            errors = [r for r in results if not isinstance(r, exec_pb2.ExecuteResponse)]
            assert not errors, errors[:3]
            assert [r.stdout for r in results] == [f"{i}\n".encode() for i in range(400)]  # type: ignore[union-attr]
            assert peak <= 50
            assert s.app.pool.stats.connects["ok"] >= 200  # every host was reached
            print(f"\n200 hosts, 400 requests, max_connections=50: peak {peak}, {elapsed:.2f}s")
    finally:
        await close_all(fleet)


@pytest.fixture
async def scripted(tmp_path: Path) -> AsyncIterator[ScriptedServer]:
    async with scripted_server(load_or_create_keys(tmp_path / "keys")) as server:
        yield server


async def test_deadline_while_waiting_for_a_slot_leaves_the_pool_clean(tmp_path: Path) -> None:
    keys = load_or_create_keys(tmp_path / "keys")
    fleet = await start_fleet(keys, 2)
    config = with_pool(inventory(fleet), max_connections=1)
    try:
        async with running_scout(config) as s:
            busy = asyncio.create_task(s.execute(host="host0", command="sleep 1"))
            await asyncio.sleep(0.3)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await s.execute(rpc_timeout=0.4, host="host1", command="true")
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "host1: no SSH channel became free" in (info.value.details() or "")
            assert "waiters=0" in repr(s.app.pool) and "budget_queue=0" in repr(s.app.pool)
            waiting = asyncio.create_task(s.execute(host="host1", command="true"))
            await asyncio.sleep(0.2)
            assert "waiters=1" in repr(s.app.pool)
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
            await asyncio.sleep(0.2)
            assert "waiters=0" in repr(s.app.pool)
            assert (await busy).exit_code == 0
            r = await s.execute(host="host1", command="echo next")  # LRU makes room now
            assert r.stdout == b"next\n"
            assert s.app.pool.stats.evictions.get("lru") == 1
            assert "channels=0" in repr(s.app.pool)
    finally:
        await close_all(fleet)


async def test_refused_channels_never_reach_the_caller(scripted: ScriptedServer) -> None:
    scripted.max_sessions = 3  # the server allows fewer sessions than the pool assumes
    config = with_pool(inventory([scripted]), max_connections_per_host=4)
    async with running_scout(config) as s:
        results = await asyncio.gather(
            *(s.execute(host="host0", command="sleep 0.2; echo ok") for _ in range(20))
        )
        assert all(r.stdout == b"ok\n" for r in results)
        assert scripted.stats.sessions_refused > 0
        assert s.app.pool.stats.refusals == scripted.stats.sessions_refused
        assert min(pc.cap for pc in s.app.pool.connections()) <= 3


async def test_keepalive_detects_a_peer_that_stopped_answering(scripted: ScriptedServer) -> None:
    config = with_pool(inventory([scripted]), keepalive_interval=0.2, keepalive_count_max=2)
    async with running_scout(config) as s:
        assert (await s.execute(host="host0", command="true")).exit_code == 0
        scripted.hang()
        started = time.monotonic()
        while s.app.pool.connections():
            assert time.monotonic() - started < 2.0, repr(s.app.pool)
            await asyncio.sleep(0.05)
        assert s.app.pool.stats.evictions.get("lost") == 1
        scripted.unhang()
        assert (await s.execute(host="host0", command="echo back")).stdout == b"back\n"


async def test_keepalive_aborts_a_command_on_a_stopped_sshd(openssh: OpenSSHServer) -> None:
    config = with_pool(
        Config(hosts={"o": openssh.host_config("o")}), keepalive_interval=0.3, keepalive_count_max=2
    )
    async with running_scout(config) as s:
        m = marker()
        call = asyncio.create_task(s.execute(host="o", command=f"sleep {m}"))
        assert await sleeping(m, within=10)  # the command runs (a busy machine connects late)
        openssh.pause()
        try:
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
            assert info.value.code() == grpc.StatusCode.ABORTED
            assert time.monotonic() - started < 2.5
        finally:
            openssh.resume()
        assert (await s.execute(host="o", command="echo back")).stdout == b"back\n"
