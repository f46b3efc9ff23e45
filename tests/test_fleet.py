"""The fleet: hosts from ssh_config, jump hosts, ssh-agent, labels, ListHosts, ExecuteMany.

Jump hosts are tested with real sshd servers in a network namespace the test makes: the
target listens on the namespace's own loopback, which only a jump host inside it can
reach. Fan-out runs on many in-process SSH servers, and on OpenSSH where the question is
whether remote processes are gone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from subprocess import DEVNULL
from typing import Any

import grpc
import pytest

from scout.v1 import exec_pb2, exec_pb2_grpc
from server.app import FILE_CHECK_PERIOD, start
from server.config import Config, SSHSettings
from server.configfile import load, parse
from server.errors import InvalidRequest
from server.selector import parse as selector
from testkit.netns import Netns, netns
from testkit.ports import free_port
from testkit.processes import eventually, gone, marker, running, sleeps
from testkit.scripted import ScriptedServer
from testkit.sshd import OpenSSHServer, start_openssh

from .scoutd import Scout, config, running_scout, started

FLEET_SIZE = 37  # the servers of `fleet` (conftest)

# ---- inventory from ssh_config ---------------------------------------------------------


def test_hosts_come_from_ssh_config_files_with_include_and_overrides(tmp_path: Path) -> None:
    key = tmp_path / "id_web"
    extra = tmp_path / "extra.conf"
    extra.write_text("Host db1\n  HostName 10.0.0.9\n  User dbadmin\n")
    fleet = tmp_path / "fleet.conf"
    fleet.write_text(
        f"Include {extra}\n"
        "Host web1 web2\n  HostName %h.example.net\n  User deploy\n  Port 2222\n"
        f"  IdentityFile {key}\n"
        "Host web*\n  ServerAliveInterval 7\n  ServerAliveCountMax 2\n"
        "Host *\n  User fallback\n"
    )
    cfg = parse(
        {
            "ssh": {"config_files": [str(fleet)]},
            "labels": {"web*": {"role": "web", "region": "eu"}},
            "hosts": {
                "web2": {"port": 22, "labels": {"region": "us", "canary": "yes"}},
                "extra": {"address": "192.0.2.1"},
            },
        },
        tmp_path,
    )
    assert sorted(cfg.hosts) == ["db1", "extra", "web1", "web2"]
    web1, web2, db1 = cfg.hosts["web1"], cfg.hosts["web2"], cfg.hosts["db1"]
    assert (web1.address, web1.user, web1.port) == ("web1.example.net", "deploy", 2222)
    assert web1.identity_files == (key,)
    assert (web1.keepalive_interval, web1.keepalive_count_max) == (7.0, 2)
    assert web1.labels == {"role": "web", "region": "eu"}
    assert web2.port == 22 and web2.labels == {"role": "web", "region": "us", "canary": "yes"}
    assert (db1.address, db1.user, db1.port) == ("10.0.0.9", "dbadmin", 22)
    assert cfg.hosts["extra"].address == "192.0.2.1"


async def test_a_host_from_ssh_config_runs_commands(
    shell_server: ScriptedServer, tmp_path: Path
) -> None:
    conf = tmp_path / "ssh_config"
    conf.write_text(
        f"Host box\n  HostName {shell_server.address}\n  Port {shell_server.port}\n"
        f"  User {shell_server.user}\n  IdentityFile {shell_server.identity_file}\n"
    )
    cfg = parse(
        {"ssh": {"config_files": [str(conf)], "known_hosts": str(shell_server.known_hosts)}},
        tmp_path,
    )
    async with running_scout(cfg) as s:
        r = await s.execute(host="box", command="echo from ssh_config")
        assert r.stdout == b"from ssh_config\n"


# ---- jump hosts ------------------------------------------------------------------------


@dataclasses.dataclass
class Jumps:
    space: Netns
    target: OpenSSHServer  # on the namespace's loopback: reachable only through jump2
    jump2: OpenSSHServer  # on the namespace's veth address
    jump1: OpenSSHServer  # on our loopback
    config_file: Path
    known_hosts: Path


@pytest.fixture(scope="module")
def jumps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jumps]:
    root = tmp_path_factory.mktemp("jumps")
    with netns("jump") as space:
        servers = [
            start_openssh(root / "target", "127.0.0.1", netns=space.name),
            start_openssh(root / "jump2", space.inside, netns=space.name),
            start_openssh(root / "jump1", "127.0.0.1"),
        ]
        target, jump2, jump1 = servers
        try:
            known = root / "known_hosts"
            known.write_text("".join(s.known_hosts.read_text() for s in servers))

            def block(name: str, server: OpenSSHServer, extra: str = "") -> str:
                return (
                    f"Host {name}\n  HostName {server.address}\n  Port {server.port}\n"
                    f"  User {server.user}\n  IdentityFile {server.identity_file}\n{extra}"
                )

            conf = root / "ssh_config"
            conf.write_text(
                block("jump1", jump1)
                + block("jump2", jump2)
                + block("inner", target, "  ProxyJump jump2\n")
                + block("inner2", target, "  ProxyJump jump1,jump2\n")
            )
            yield Jumps(space, target, jump2, jump1, conf, known)
        finally:
            for server in servers:
                server.stop()


def jump_config(jumps: Jumps, tmp_path: Path) -> Config:
    return parse(
        {"ssh": {"config_files": [str(jumps.config_file)], "known_hosts": str(jumps.known_hosts)}},
        tmp_path,
    )


@pytest.mark.sshd
def test_the_target_is_out_of_reach_without_the_jump_host(jumps: Jumps) -> None:
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", jumps.target.port), 2):
        pass


@pytest.mark.sshd
@pytest.mark.parametrize(("host", "hops"), [("inner", ("jump2",)), ("inner2", ("jump1", "jump2"))])
async def test_proxy_jump_through_pooled_jump_hosts(
    jumps: Jumps, tmp_path: Path, host: str, hops: tuple[str, ...]
) -> None:
    cfg = jump_config(jumps, tmp_path)
    assert cfg.hosts[host].via == hops
    async with running_scout(cfg) as s:
        results = await asyncio.gather(
            *(s.execute(host=host, command="cat /proc/net/dev") for _ in range(3))
        )
        # it ran inside the namespace: there, the only links are lo and the veth end
        links = {line.split(":")[0].strip() for line in results[0].stdout.decode().splitlines()[2:]}
        assert links == {"lo", jumps.space.veth_inside}
        assert all(r.exit_code == 0 for r in results)
        listed = {h.name: h for h in (await s.stub.ListHosts(exec_pb2.ListHostsRequest())).hosts}
        assert tuple(listed[host].via) == hops
        for hop in hops:  # every hop is a pooled connection, counted in the bound
            assert listed[hop].connections_open == 1
        assert s.app.pool.budget.used == 1 + len(hops)


@pytest.mark.sshd
async def test_ssh_agent_keys_are_used(openssh: OpenSSHServer, tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}

    async def run(*argv: str) -> None:
        proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=DEVNULL, stderr=DEVNULL)
        assert await proc.wait() == 0, argv

    agent = await asyncio.create_subprocess_exec(
        "ssh-agent", "-D", "-a", str(sock), stdout=DEVNULL, stderr=DEVNULL
    )
    try:
        assert await eventually(sock.exists, within=5)
        await run("ssh-add", str(openssh.identity_file))
        host = dataclasses.replace(openssh.host_config("a"), identity_file=None)
        cfg = dataclasses.replace(config({"a": host}), ssh=SSHSettings(agent=str(sock)))
        async with running_scout(cfg) as s:
            r = await s.execute(host="a", command="echo agent")
            assert r.stdout == b"agent\n"
        await run("ssh-add", "-D")
        async with running_scout(cfg) as s:  # no key in the agent now: refused
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await s.execute(host="a", command="true")
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        agent.terminate()
        await agent.wait()


# ---- labels and selectors --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "labels", "matches"),
    [
        ("role=web", {"role": "web"}, True),
        ("role==web", {"role": "db"}, False),
        ("role!=web", {}, True),
        ("region in (eu,us)", {"region": "us"}, True),
        ("region in (eu, us)", {"region": "ap"}, False),
        ("region notin (eu)", {"region": "us"}, True),
        ("!canary", {"canary": "yes"}, False),
        ("canary", {"canary": "yes"}, True),
        ("role=web,region in (eu,us),!canary", {"role": "web", "region": "eu"}, True),
        (
            "role=web,region in (eu,us),!canary",
            {"role": "web", "region": "eu", "canary": ""},
            False,
        ),
        ("", {"x": "y"}, True),
    ],
)
def test_label_selectors(text: str, labels: dict[str, str], matches: bool) -> None:
    assert selector(text).matches(labels) is matches


@pytest.mark.parametrize(
    "bad", ["role=", "=web", "region in eu", "region in (eu", "a,,b", "role = w e b", "x in ()"]
)
def test_malformed_selectors_say_what_is_wrong(bad: str) -> None:
    with pytest.raises(InvalidRequest, match="selector"):
        selector(bad)


# ---- ExecuteMany -----------------------------------------------------------------------


def fleet_config(servers: list[ScriptedServer], **sections: Any) -> Config:
    hosts = {
        f"web{i:02d}": dataclasses.replace(
            s.host_config(f"web{i:02d}"), labels={"role": "web", "shard": str(i % 2)}
        )
        for i, s in enumerate(servers)
    }
    for name in ("down1", "down2"):  # nothing listens there
        hosts[name] = dataclasses.replace(
            servers[0].host_config(name), port=free_port(), labels={"role": "web"}
        )
    return config(hosts, **sections)


async def many(s: Scout, **fields: Any) -> list[exec_pb2.ExecuteManyResponse]:
    return [m async for m in s.stub.ExecuteMany(exec_pb2.ExecuteManyRequest(**fields), timeout=60)]


async def test_fan_out_gives_each_host_its_result_or_its_own_status(
    fleet: list[ScriptedServer],
) -> None:
    async with running_scout(fleet_config(fleet)) as s:
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, sum(server.open_sessions() for server in fleet))
                await asyncio.sleep(0.005)

        watcher = asyncio.ensure_future(watch())
        try:
            messages = await many(
                s,
                selector="role=web",
                hosts=["ghost"],
                request=exec_pb2.ExecuteRequest(command="sleep 0.2; echo done"),
                max_parallel=5,
            )
        finally:
            watcher.cancel()
        results = [m for m in messages if m.WhichOneof("event") == "result"]
        errors = {m.host: m for m in messages if m.WhichOneof("event") == "error"}
        assert len(messages) == 40 and len(results) == 37
        assert all(r.result.stdout == b"done\n" for r in results)
        assert {h: (m.error.code, m.started) for h, m in errors.items()} == {
            "down1": (grpc.StatusCode.UNAVAILABLE.value[0], False),
            "down2": (grpc.StatusCode.UNAVAILABLE.value[0], False),
            "ghost": (grpc.StatusCode.NOT_FOUND.value[0], False),
        }
        assert 2 <= peak <= 5  # max_parallel, counted at the servers


async def test_fan_out_streams_output_tagged_by_host(fleet: list[ScriptedServer]) -> None:
    async with running_scout(fleet_config(fleet)) as s:
        messages = await many(
            s,
            hosts=["web0[0-2]"],
            # ends with half a UTF-8 character: its text comes as U+FFFD once stdout ends
            request=exec_pb2.ExecuteRequest(
                command="echo out; echo err >&2; printf '\\303'", text=True
            ),
            stream_output=True,
        )
    by_host: dict[str, list[exec_pb2.ExecuteManyResponse]] = {}
    for m in messages:
        by_host.setdefault(m.host, []).append(m)
    assert sorted(by_host) == ["web00", "web01", "web02"]
    for events in by_host.values():
        assert events[-1].WhichOneof("event") == "result"  # after the host's output
        chunks = [e.output for e in events[:-1]]
        out = [c for c in chunks if c.WhichOneof("data") == "stdout"]
        err = [c for c in chunks if c.WhichOneof("data") == "stderr"]
        assert b"".join(c.stdout for c in out) == b"out\n\xc3"
        assert "".join(c.text for c in out) == "out\n\ufffd"
        assert (b"".join(c.stderr for c in err), "".join(c.text for c in err)) == (
            b"err\n",
            "err\n",
        )
        assert events[-1].result.stdout == b"" and events[-1].result.stdout_bytes == 5


async def test_a_fan_out_as_a_whole_fails_only_when_malformed_or_empty(
    fleet: list[ScriptedServer],
) -> None:
    async with running_scout(fleet_config(fleet)) as s:
        for fields, code in (
            ({"request": exec_pb2.ExecuteRequest(command="true")}, "INVALID_ARGUMENT"),
            (
                {
                    "hosts": ["web00"],
                    "request": exec_pb2.ExecuteRequest(host="web00", command="true"),
                },
                "INVALID_ARGUMENT",
            ),
            (
                {"selector": "role in (", "request": exec_pb2.ExecuteRequest(command="true")},
                "INVALID_ARGUMENT",
            ),
            (
                {"selector": "role=db", "request": exec_pb2.ExecuteRequest(command="true")},
                "NOT_FOUND",
            ),
            # A malformed command fails the call, not each host (the proto says so).
            ({"hosts": ["web0*"], "request": exec_pb2.ExecuteRequest()}, "INVALID_ARGUMENT"),
            (
                {
                    "hosts": ["web00", "ghost"],
                    "request": exec_pb2.ExecuteRequest(command="true", env={"BAD-NAME": "1"}),
                },
                "INVALID_ARGUMENT",
            ),
            (
                {
                    "selector": "role=web",
                    "request": exec_pb2.ExecuteRequest(command="true", timeout={"seconds": -1}),
                },
                "INVALID_ARGUMENT",
            ),
            (
                {
                    "hosts": ["web00"],
                    "request": exec_pb2.ExecuteRequest(command="true", working_dir="/\0"),
                },
                "INVALID_ARGUMENT",
            ),
            (
                {"selector": "  ", "request": exec_pb2.ExecuteRequest(command="true")},
                "INVALID_ARGUMENT",
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await many(s, **fields)
            assert info.value.code().name == code, fields
            assert started(info.value) == "false"
        assert sum(server.stats.sessions_opened for server in fleet) == 0  # nothing ran


async def test_a_fan_out_does_not_starve_a_single_execute(fleet: list[ScriptedServer]) -> None:
    cfg = fleet_config(fleet, pool={"max_connections": 8, "max_connections_per_host": 2})
    async with running_scout(cfg) as s:
        fan = asyncio.ensure_future(
            many(
                s,
                hosts=[f"web{i:02d}" for i in range(30)],
                request=exec_pb2.ExecuteRequest(command="sleep 0.3"),
                max_parallel=8,
            )
        )
        await asyncio.sleep(0.5)  # the fan-out has the whole budget busy now
        began = time.monotonic()
        r = await s.execute(host="web36", command="echo me too")
        waited = time.monotonic() - began
        assert r.stdout == b"me too\n"
        assert not fan.done() and waited < 1.0  # served while the fan-out still runs
        assert len(await fan) == 30


@pytest.mark.sshd
async def test_cancelling_a_fan_out_stops_every_remote_command(openssh: OpenSSHServer) -> None:
    m = marker()
    hosts = {f"o{i}": openssh.host_config(f"o{i}") for i in range(12)}
    async with running_scout(config(hosts)) as s:
        call = s.stub.ExecuteMany(
            exec_pb2.ExecuteManyRequest(
                hosts=["o*"], request=exec_pb2.ExecuteRequest(command=f"sleep {m}"), max_parallel=4
            )
        )
        assert await running(f"sleep {m}", within=5)
        await asyncio.sleep(0.3)
        call.cancel()
        assert await gone(f"sleep {m}", within=5)
        await asyncio.sleep(1.0)  # no new command starts after the cancel
        assert await gone(f"sleep {m}", within=0.1)
        assert await eventually(lambda: not openssh.commands())


async def fan_out_then(
    server: ScriptedServer, tmp_path: Path, end: Callable[[Scout, Any], Awaitable[None]]
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Start a fan-out of sleeps on 6 hosts (4 at once), end it with `end` once they run;
    return its audit lines and the commands counted by outcome."""
    hosts = {f"h{i}": server.host_config(f"h{i}") for i in range(6)}
    audit = tmp_path / "audit.jsonl"
    m = marker()
    async with running_scout(config(hosts, audit={"file": str(audit)})) as s:
        request = exec_pb2.ExecuteRequest(command=f"sleep {m}")
        call = s.stub.ExecuteMany(
            exec_pb2.ExecuteManyRequest(hosts=["h*"], request=request, max_parallel=4),
            timeout=60,
        )
        # once the 4 commands run (an open session may not have sent its exec yet)
        assert await eventually(lambda: len(sleeps(m)) == 4, within=10)
        await end(s, call)
        assert await eventually(lambda: server.open_sessions() == 0)
        assert await eventually(lambda: s.app.service.rpcs.in_flight == 0)  # lines written
        counted = dict(s.app.service.rpcs.commands)
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    return lines, counted


async def test_a_cancelled_fan_out_audits_and_counts_each_stopped_host_as_cancelled(
    shell_server: ScriptedServer, tmp_path: Path
) -> None:
    async def cancel(s: Scout, call: Any) -> None:
        call.cancel()

    lines, counted = await fan_out_then(shell_server, tmp_path, cancel)
    assert sorted(x["host"] for x in lines) == ["h0", "h1", "h2", "h3"]  # h4, h5 never ran
    assert {(x["method"], x["code"], x["started"]) for x in lines} == {
        ("ExecuteMany", "CANCELLED", True)
    }
    assert counted == {"aborted": 4}


async def test_a_fan_out_stopped_by_shutdown_audits_each_stopped_host_as_aborted(
    shell_server: ScriptedServer, tmp_path: Path
) -> None:
    async def shut_down(s: Scout, call: Any) -> None:
        await s.app.stop(grace=0.2)
        with pytest.raises(grpc.aio.AioRpcError):
            async for _ in call:
                pass

    lines, counted = await fan_out_then(shell_server, tmp_path, shut_down)
    assert len(lines) == 4
    assert {(x["code"], x["started"]) for x in lines} == {("ABORTED", True)}
    assert counted == {"aborted": 4}


async def test_an_execute_stopped_by_shutdown_is_audited_and_counted_as_aborted(
    shell_server: ScriptedServer, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    cfg = config({"h": shell_server.host_config("h")}, audit={"file": str(audit)})
    async with running_scout(cfg) as s:
        call = asyncio.ensure_future(s.execute(host="h", command="sleep 30"))
        assert await eventually(lambda: shell_server.open_sessions() == 1)
        await s.app.stop(grace=0.2)
        with pytest.raises(grpc.aio.AioRpcError):
            await call
        assert s.app.service.rpcs.finished == {("Execute", "ABORTED"): 1}
        assert dict(s.app.service.rpcs.commands) == {"aborted": 1}
    (line,) = [json.loads(x) for x in audit.read_text().splitlines()]
    assert (line["method"], line["code"], line["started"]) == ("Execute", "ABORTED", True)


# ---- ListHosts and reloading -----------------------------------------------------------


async def test_list_hosts_with_selector_patterns_and_the_pools_view(
    fleet: list[ScriptedServer],
) -> None:
    async with running_scout(fleet_config(fleet)) as s:
        await s.execute(host="web03", command="true")
        listed = await s.stub.ListHosts(
            exec_pb2.ListHostsRequest(selector="shard=1", hosts=["down1"])
        )
        names = [h.name for h in listed.hosts]
        assert names == sorted(names) and "down1" in names and "web03" in names
        assert all(h.labels["shard"] == "1" for h in listed.hosts if h.name.startswith("web"))
        web03 = next(h for h in listed.hosts if h.name == "web03")
        assert (web03.connections_open, web03.channels_in_use) == (1, 0)
        assert web03.port == fleet[3].port and dict(web03.labels) == {"role": "web", "shard": "1"}
        everything = await s.stub.ListHosts(exec_pb2.ListHostsRequest())
        assert len(everything.hosts) == 39


async def test_sighup_reloads_the_inventory_and_retires_removed_hosts(
    fleet: list[ScriptedServer], tmp_path: Path
) -> None:
    def write(names: list[str]) -> None:
        tables = "".join(
            f"[hosts.{n}]\naddress = '127.0.0.1'\nport = {fleet[i].port}\n"
            f"user = '{fleet[i].user}'\nidentity_file = '{fleet[i].identity_file}'\n"
            f"known_hosts = '{fleet[i].known_hosts}'\n"
            for i, n in enumerate(names)
        )
        path.write_text(tables)

    path = tmp_path / "scout.toml"
    write(["a", "b"])
    app = await start(load(path), "127.0.0.1:0", lambda: load(path))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    s = Scout(app, "", channel, exec_pb2_grpc.ExecServiceStub(channel))
    try:
        await s.execute(host="a", command="true")
        in_flight = asyncio.ensure_future(s.execute(host="a", command="sleep 3; echo finished"))
        await asyncio.sleep(0.2)
        write(["b", "c"])
        await asyncio.sleep(FILE_CHECK_PERIOD + 0.5)  # the periodic check leaves it be
        assert sorted(app.service.config.hosts) == ["a", "b"]
        await app.reload()  # what SIGHUP does
        assert (await in_flight).stdout == b"finished\n"  # a call in flight finishes
        assert await eventually(lambda: fleet[0].stats.open == 0)  # a's connection closes
        r = await s.execute(host="c", command="echo new")
        assert r.stdout == b"new\n"
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.execute(host="a", command="true")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await channel.close()
        await app.stop(grace=0.5)


async def test_a_host_not_found_suggests_the_closest_names(fleet: list[ScriptedServer]) -> None:
    async with running_scout(fleet_config(fleet)) as s:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await s.execute(host="web_03", command="true")
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "closest: web03" in (info.value.details() or "")
