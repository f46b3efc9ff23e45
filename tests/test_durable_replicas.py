"""Keyed commands across replicas: three scout-server processes sharing a real
redis-server, behind deploy/nginx/scout.conf (nginx hashes `x-scout-host`).

Replicas are separate processes, each its own owner group: none forwards to another.
The proxy brings every call for a host to the replica that owns it; when that replica
dies, the retry lands on another one, which finds the key's record in redis and answers
from it: the recorded outcome, a wait while the owner's heartbeat lives, or ABORTED
"outcome unknown" once it has stopped. The host is the in-process scripted SSH server,
whose count of exec requests says how many times a command really ran.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from scout.v1 import exec_pb2, exec_pb2_grpc
from server.durablestore import HEARTBEAT_TTL
from testkit.processes import eventually, stop
from testkit.proxies import Proxy, serving, start_nginx
from testkit.redis import RedisServer, start_redis
from testkit.scripted import ScriptedServer

from .serverproc import Replica as ServerReplica
from .serverproc import host_toml, start_server

REPLICAS = 3
Replica = ServerReplica[subprocess.Popen[bytes]]
HOST = (("x-scout-host", "h"),)  # what every scout client sends: nginx hashes on it
DEADLINE = HEARTBEAT_TTL + 20  # a retry may wait out a dead owner's heartbeat


@dataclass
class Rig:
    """The replicas, nginx in front of them, and the redis-server behind them."""

    replicas: list[Replica]
    nginx: Proxy
    redis: RedisServer
    channels: dict[str, grpc.aio.Channel]

    def stub(self, target: str) -> exec_pb2_grpc.ExecServiceStub:
        channel = self.channels.get(target)
        if channel is None:
            channel = self.channels[target] = grpc.aio.insecure_channel(target)
        return exec_pb2_grpc.ExecServiceStub(channel)

    @property
    def proxy(self) -> exec_pb2_grpc.ExecServiceStub:
        return self.stub(self.nginx.target)

    async def owner(self) -> int:
        """The replica holding the connection to host "h" (the one nginx sends it to)."""
        held = []
        for index, replica in enumerate(self.replicas):
            if replica.proc.poll() is not None:
                continue
            hosts = await self.stub(replica.target).ListHosts(
                exec_pb2.ListHostsRequest(), timeout=10
            )
            if any(h.name == "h" and h.connections_open for h in hosts.hosts):
                held.append(index)
        assert len(held) == 1, held
        return held[0]


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own (one test stops it)."""
    server = start_redis(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def rig(
    shell_server: ScriptedServer, redis: RedisServer, tmp_path: Path
) -> AsyncIterator[Rig]:
    """REPLICAS scout servers on one redis store, behind nginx; host "h" is shell_server."""
    config = tmp_path / "scout.toml"
    config.write_text(
        "shutdown_grace = 1.0\n"
        + host_toml("h", shell_server.host_config("h"))
        + f'[durable]\nstore = "{redis.url}"\n'
    )
    started = await asyncio.gather(
        *(
            asyncio.to_thread(start_server, ["--config", str(config)], tmp_path / f"r{i}.log")
            for i in range(REPLICAS)
        )
    )
    replicas = [
        Replica(proc, target, tmp_path / f"r{i}.log") for i, (proc, target) in enumerate(started)
    ]
    try:
        with serving(start_nginx(tmp_path / "nginx", [r.port for r in replicas])) as nginx:
            rig = Rig(replicas, nginx, redis, {})
            yield rig
            for channel in rig.channels.values():
                await channel.close()
    finally:
        for replica in replicas:
            stop(replica.proc, timeout=20)


def gated(gate: Path) -> str:
    """A command that prints a line and a nonce, then waits for the gate file."""
    return f"echo started $$; while [ ! -e {gate} ]; do sleep 0.05; done; echo done"


def request(key: str, command: str) -> exec_pb2.ExecuteRequest:
    return exec_pb2.ExecuteRequest(host="h", command=command, idempotency_key=key)


def trailers(metadata: Any) -> dict[str, str]:
    return {k: v for k, v in metadata or ()}


async def test_a_key_is_answered_by_any_replica_from_the_shared_store(
    rig: Rig, shell_server: ScriptedServer, tmp_path: Path
) -> None:
    before = shell_server.stats.exec_requests
    # Finished through nginx (on the owner): another replica gives the recorded outcome.
    done_key = f"done-{uuid.uuid4().hex[:8]}"
    first = await rig.proxy.Execute(
        request(done_key, "echo once $$"), metadata=HOST, timeout=DEADLINE
    )
    owner = await rig.owner()
    other = rig.replicas[(owner + 1) % REPLICAS]
    retry = rig.stub(other.target).Execute(request(done_key, "echo once $$"), timeout=DEADLINE)
    assert await retry == first and first.stdout.startswith(b"once ")
    assert trailers(await retry.trailing_metadata()).get("x-scout-replayed") == "true"
    assert shell_server.stats.exec_requests == before + 1

    # Running on the owner: Execute on another replica waits for the outcome to appear
    # in the store; Stream attach there is told to retry (the proxy brings it home).
    gate = tmp_path / "gate"
    key = f"running-{uuid.uuid4().hex[:8]}"
    running = rig.proxy.Execute(request(key, gated(gate)), metadata=HOST, timeout=DEADLINE)
    assert await eventually(lambda: shell_server.stats.exec_requests == before + 2, 10)
    attach = exec_pb2.Attach(idempotency_key=key, host="h")
    elsewhere = rig.stub(other.target).Stream(
        iter([exec_pb2.StreamRequest(attach=attach)]), timeout=DEADLINE
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in elsewhere:
            pass
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "running on another replica; retry" in (refused.value.details() or "")
    assert trailers(refused.value.trailing_metadata()).get("x-scout-started") == "true"
    waiting = rig.stub(other.target).Execute(request(key, gated(gate)), timeout=DEADLINE)
    await asyncio.sleep(1.0)
    assert not waiting.done()  # it watches the store
    gate.touch()
    answer = await running
    assert answer.stdout.startswith(b"started ") and answer.stdout.endswith(b"done\n")
    assert await waiting == answer
    assert trailers(await waiting.trailing_metadata()).get("x-scout-replayed") == "true"
    assert shell_server.stats.exec_requests == before + 2  # each key ran once


async def test_the_owner_killed_a_retry_through_nginx_is_outcome_unknown_and_never_reruns(
    rig: Rig, shell_server: ScriptedServer, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    key = f"killed-{uuid.uuid4().hex[:8]}"
    before = shell_server.stats.exec_requests
    first = rig.proxy.Execute(request(key, gated(gate)), metadata=HOST, timeout=DEADLINE)
    assert await eventually(lambda: shell_server.stats.exec_requests == before + 1, 10)
    owner = await rig.owner()
    rig.replicas[owner].proc.send_signal(signal.SIGKILL)
    rig.replicas[owner].proc.wait(10)
    with pytest.raises(grpc.aio.AioRpcError):
        await first
    began = time.monotonic()
    request_id = f"retry-{uuid.uuid4().hex}"
    retry = rig.proxy.Execute(
        request(key, gated(gate)),
        metadata=(*HOST, ("x-request-id", request_id)),
        timeout=DEADLINE,
    )
    with pytest.raises(grpc.aio.AioRpcError) as lost:
        await retry
    waited = time.monotonic() - began
    error = lost.value
    assert error.code() == grpc.StatusCode.ABORTED, error.details()
    assert "outcome is unknown" in (error.details() or "")
    assert trailers(error.trailing_metadata()).get("x-scout-started") == "true"
    assert shell_server.stats.exec_requests == before + 1  # never a second exec
    answered = [i for i, r in enumerate(rig.replicas) if request_id in r.log.read_text()]
    assert len(answered) == 1 and answered[0] != owner  # the retry landed on another replica
    # Again, now that the owner is known dead: at once, the same answer.
    with pytest.raises(grpc.aio.AioRpcError) as again:
        await rig.proxy.Execute(request(key, gated(gate)), metadata=HOST, timeout=DEADLINE)
    assert again.value.code() == grpc.StatusCode.ABORTED
    assert shell_server.stats.exec_requests == before + 1
    gate.touch()
    print(f"retry after SIGKILL answered in {waited:.1f}s (heartbeat TTL {HEARTBEAT_TTL:g}s)")


async def test_redis_down_refuses_keyed_requests_before_anything_runs_unkeyed_ones_run(
    rig: Rig, shell_server: ScriptedServer
) -> None:
    assert (
        await rig.proxy.Execute(request("warm", "true"), metadata=HOST, timeout=30)
    ).exit_code == 0
    rig.redis.stop()
    before = shell_server.stats.exec_requests
    began = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await rig.proxy.Execute(request("down", "echo never"), metadata=HOST, timeout=30)
    took = time.monotonic() - began
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()
    assert trailers(refused.value.trailing_metadata()).get("x-scout-started") == "false"
    assert shell_server.stats.exec_requests == before  # nothing ran
    plain = exec_pb2.ExecuteRequest(host="h", command="echo unkeyed")
    assert (await rig.proxy.Execute(plain, metadata=HOST, timeout=30)).stdout == b"unkeyed\n"
    assert shell_server.stats.exec_requests == before + 1
    rig.redis.start()  # back (empty): keyed requests run again
    again = await rig.proxy.Execute(request("down", "echo now"), metadata=HOST, timeout=30)
    assert again.stdout == b"now\n"
    print(f"store down: UNAVAILABLE in {took:.2f}s")
