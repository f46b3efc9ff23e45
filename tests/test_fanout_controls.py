"""ExecuteMany's controls for people used to Ansible and SSM: `max_failures` (SSM's
MaxErrors) and exclusions in host patterns (`!web3`, `!web-eu-*`), in ListHosts too.

Real grpc, the in-process SSH server behind every host name (server/fanout.py,
server/targets.py).
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from scout.v1 import exec_pb2
from testkit.scripted import ScriptedServer

from .scoutd import Scout, config, running_scout

NAMES = ("h1", "h2", "h3", "h4", "h5", "h6")
ABORTED = grpc.StatusCode.ABORTED.value[0]


def _refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: connections to it are refused


@pytest.fixture
async def scout(shell_server: ScriptedServer) -> AsyncIterator[Scout]:
    hosts = {name: shell_server.host_config(name) for name in NAMES}
    down = shell_server.host_config("a0")  # sorts first; nothing listens
    hosts["a0"] = dataclasses.replace(down, port=_refused_port())
    async with running_scout(config(hosts)) as s:
        yield s


async def many(s: Scout, command: str, **fields: Any) -> list[exec_pb2.ExecuteManyResponse]:
    request = exec_pb2.ExecuteManyRequest(request=exec_pb2.ExecuteRequest(command=command))
    for key, value in fields.items():
        if key == "hosts":
            request.hosts.extend(value)
        else:
            setattr(request, key, value)
    return [m async for m in s.stub.ExecuteMany(request, timeout=30)]


def not_started(messages: list[exec_pb2.ExecuteManyResponse]) -> list[str]:
    return sorted(
        m.host
        for m in messages
        if m.WhichOneof("event") == "error" and m.error.code == ABORTED and not m.started
    )


async def test_after_max_failures_no_new_host_starts(scout: Scout) -> None:
    messages = await many(scout, "exit 3", hosts=["h*"], max_parallel=1, max_failures=2)
    ran = sorted(m.host for m in messages if m.WhichOneof("event") == "result")
    assert ran == ["h1", "h2"]  # started in target order, one at a time
    assert all(m.result.exit_code == 3 for m in messages if m.host in ran)
    assert not_started(messages) == ["h3", "h4", "h5", "h6"]
    stopped = next(m for m in messages if m.host == "h3")
    assert stopped.error.message.startswith("not started: 2 failures")


async def test_running_hosts_finish_when_the_limit_is_reached(scout: Scout) -> None:
    messages = await many(
        scout, "sleep 0.3; kill -TERM $$", hosts=["h*"], max_parallel=3, max_failures=1
    )
    killed = [m for m in messages if m.WhichOneof("event") == "result"]
    assert len(killed) == 3 and all(m.result.signal == "TERM" for m in killed)  # a signal fails
    assert len(not_started(messages)) == 3


async def test_a_host_that_could_not_run_counts_as_failed(scout: Scout) -> None:
    messages = await many(scout, "true", hosts=["a0", "h1", "h2"], max_parallel=1, max_failures=1)
    (down,) = [m for m in messages if m.host == "a0"]
    assert down.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert not_started(messages) == ["h1", "h2"]


async def test_hosts_that_succeed_do_not_count(scout: Scout) -> None:
    messages = await many(scout, "true", hosts=["h*"], max_parallel=2, max_failures=1)
    assert sorted(m.host for m in messages if m.result.exit_code == 0) == list(NAMES)
    unlimited = await many(scout, "exit 1", hosts=["h*"], max_parallel=2)  # 0: no limit
    assert sorted(m.host for m in unlimited if m.result.exit_code == 1) == list(NAMES)


async def listed(s: Scout, *hosts: str, selector: str = "") -> list[str]:
    response = await s.stub.ListHosts(
        exec_pb2.ListHostsRequest(hosts=hosts, selector=selector), timeout=10
    )
    return [h.name for h in response.hosts]


async def test_exclusions_remove_hosts_from_the_union(scout: Scout) -> None:
    assert await listed(scout, "h*", "!h2", "!h[45]") == ["h1", "h3", "h6"]
    assert await listed(scout, "!h*") == ["a0"]  # alone: from every host, as in Ansible
    assert await listed(scout, "h1", "h2", "!h1") == ["h2"]
    messages = await many(scout, "echo hi", hosts=["h*", "!h[2-6]", "nohost", "!nohost"])
    assert [(m.host, m.result.stdout) for m in messages] == [("h1", b"hi\n")]


@pytest.mark.parametrize("bad", ["!", "! ", "!!h1"])
async def test_an_exclusion_of_nothing_is_invalid(scout: Scout, bad: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await listed(scout, "h*", bad)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "excludes nothing" in (info.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await many(scout, "true", hosts=["h*", bad])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
