"""Reloads that reload: what SIGHUP puts in force, what it keeps, and that it never stalls.

In-process servers (the config file re-read by `app.reload()`, what SIGHUP runs) for the
pool's and the files' side; a real scout-server process and real signals for callers, the
audit file and the event loop during a reload of thousands of aliases.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncssh
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scout.v1 import exec_pb2, exec_pb2_grpc
from server.app import start
from server.callers import hash_token
from server.config import ConfigError
from server.configfile import load, parse
from server.keyfiles import ShellKeys
from server.reload import keep_restart_only
from testkit.processes import eventually
from testkit.scripted import ScriptedServer, scripted_fleet

from .scoutd import Scout
from .serverproc import ROOT, host_toml, start_server


@asynccontextmanager
async def from_file(path: Path, text: str) -> AsyncIterator[Scout]:
    """scout serving text, written to the config file at path; `await s.app.reload()`
    re-reads the file."""
    path.write_text(text)  # noqa: ASYNC240 - a small file, before the server starts
    app = await start(load(path), "127.0.0.1:0", lambda: load(path))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    try:
        yield Scout(app, f"127.0.0.1:{app.port}", channel, exec_pb2_grpc.ExecServiceStub(channel))
    finally:
        await channel.close()
        await app.stop(grace=1.0)


@pytest.fixture
async def trio(ssh_keys: ShellKeys) -> AsyncIterator[list[ScriptedServer]]:
    """Three scripted SSH servers (one known_hosts file lists them all)."""
    async with scripted_fleet(ssh_keys, 3) as servers:
        yield servers


def known_line(server: ScriptedServer) -> str:
    """server's line in the shared known_hosts file."""
    lines = server.keys.known_hosts.read_text().splitlines()
    return next(x for x in lines if x.startswith(f"[{server.address}]:{server.port} "))


def impostor(line: str) -> str:
    """The same known_hosts entry with another key: the host's real key is revoked."""
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key("openssh")
    return line.split(" ", 1)[0] + " " + other.decode().strip()


def table(name: str, server: ScriptedServer, known: Path | None = None) -> str:
    """A [hosts.NAME] table reaching server (known: another known_hosts file)."""
    text = host_toml(name, server.host_config(name))
    if known is not None:
        text = text.replace(f"known_hosts = '{server.known_hosts}'", f"known_hosts = '{known}'")
    return text


async def fails(call: Awaitable[object], code: grpc.StatusCode) -> str:
    """Await an RPC expected to fail with code; its details."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value
    return info.value.details() or ""


# ---- the pool takes a host's new settings --------------------------------------------


async def test_a_host_whose_address_changed_connects_to_the_new_one_from_the_next_call(
    trio: list[ScriptedServer], tmp_path: Path
) -> None:
    old, new = trio[0], trio[1]
    path = tmp_path / "scout.toml"
    async with from_file(path, table("h", old)) as s:
        await s.execute(host="h", command="true")  # a warm connection to the old address
        busy = asyncio.ensure_future(s.execute(host="h", command="sleep 1; echo finished"))
        assert await eventually(lambda: old.stats.sessions_opened == 2)
        path.write_text(table("h", new))
        await s.app.reload()  # what SIGHUP does
        r = await s.execute(host="h", command="echo moved")
        assert r.stdout == b"moved\n"
        assert new.stats.exec_requests == 1  # the next call went to the new address
        assert old.stats.exec_requests == 2  # ... and none more to the old one
        assert (await busy).stdout == b"finished\n"  # the busy one finished there
        assert await eventually(lambda: old.stats.open == 0)  # then its connection closed
        assert s.app.config.hosts["h"].port == new.port == s.app.service.config.hosts["h"].port


async def test_a_connect_in_flight_when_the_host_moves_is_not_used(
    trio: list[ScriptedServer], tmp_path: Path
) -> None:
    old, new = trio[0], trio[1]
    old.handshake_delay = 1.0
    path = tmp_path / "scout.toml"
    async with from_file(path, table("h", old)) as s:
        call = asyncio.ensure_future(s.execute(host="h", command="echo here"))
        assert await eventually(lambda: old.stats.accepted == 1)  # connecting to the old one
        path.write_text(table("h", new))
        await s.app.reload()
        assert (await call).stdout == b"here\n"
        assert (new.stats.exec_requests, old.stats.exec_requests) == (1, 0)


# ---- file changes reach every host that uses the file --------------------------------


async def test_a_revoked_key_retires_a_host_that_a_reload_added(
    trio: list[ScriptedServer], tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(known_line(trio[1]) + "\n")
    path = tmp_path / "scout.toml"
    async with from_file(path, table("a", trio[0])) as s:
        assert s.app._watcher is not None
        s.app._watcher.cancel()  # the test runs the periodic check itself
        path.write_text(table("a", trio[0]) + table("b", trio[1], known))
        await s.app.reload()
        assert (await s.execute(host="b", command="echo in")).stdout == b"in\n"
        known.write_text(impostor(known_line(trio[1])) + "\n")  # b's key is revoked
        s.app.reload_files()  # what the file check every 2 s (or SIGHUP) does
        details = await fails(
            s.execute(host="b", command="true"), grpc.StatusCode.FAILED_PRECONDITION
        )
        assert "HOST KEY CHANGED" in details


async def test_a_connect_that_reads_a_changed_file_does_not_keep_the_news_from_other_hosts(
    trio: list[ScriptedServer], tmp_path: Path
) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("".join(known_line(x) + "\n" for x in trio))
    text = "".join(table(n, x, known) for n, x in zip("abc", trio, strict=True))
    async with from_file(tmp_path / "scout.toml", text) as s:
        assert s.app._watcher is not None
        s.app._watcher.cancel()  # the test runs the periodic check itself
        await s.execute(host="b", command="true")  # b has a warm connection
        lines = [known_line(trio[0]), impostor(known_line(trio[1])), known_line(trio[2])]
        known.write_text("\n".join(lines) + "\n")  # b's key is revoked
        await s.execute(host="c", command="true")  # c's connect reads the file first
        s.app.reload_files()
        details = await fails(
            s.execute(host="b", command="true"), grpc.StatusCode.FAILED_PRECONDITION
        )
        assert "HOST KEY CHANGED" in details


# ---- limits: live where they can be, kept (WARNING) where they cannot -----------------


async def test_limits_reload_and_what_takes_a_restart_is_kept_with_a_warning(
    trio: list[ScriptedServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "scout.toml"
    async with from_file(path, "[pool]\nmax_connections = 50\n" + table("h", trio[0])) as s:
        assert (await s.execute(host="h", command="echo 12345")).stdout == b"12345\n"
        path.write_text(
            "max_concurrent_rpcs = 77\n[pool]\nmax_connections = 60\n"
            "[exec]\nmax_command_bytes = 8\nmax_output_bytes = 2000000\n"
            "[fanout]\nmax_targets = 3\n" + table("h", trio[0])
        )
        with caplog.at_level(logging.WARNING, logger="server.reload"):
            await s.app.reload()
        details = await fails(
            s.execute(host="h", command="echo 12345"), grpc.StatusCode.INVALID_ARGUMENT
        )
        assert "8" in details  # the new, lower command limit applies from the next call
        config = s.app.service.config
        assert config is s.app.config  # one config in force, whoever asks
        assert (config.fanout.max_targets, config.max_concurrent_rpcs) == (3, 77)
        assert s.app.service.rpcs.max_in_flight == 77
        assert config.pool.max_connections == 50 == s.app.pool.budget.limit
        # more output per call than the gRPC send limit the server started with allows
        assert config.exec.max_output_bytes == 1_000_000
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        for key in ("pool.max_connections", "exec.max_output_bytes"):
            assert any(key in m and "restart" in m for m in warned), (key, warned)


async def test_audit_settings_reload_to_another_file_and_another_form(
    trio: list[ScriptedServer], tmp_path: Path
) -> None:
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    path = tmp_path / "scout.toml"
    async with from_file(path, f"[audit]\nfile = '{first}'\n" + table("h", trio[0])) as s:
        await s.execute(host="h", command="echo one")
        path.write_text(f"[audit]\nfile = '{second}'\nlog_commands = false\n" + table("h", trio[0]))
        await s.app.reload()
        await s.execute(host="h", command="echo two")
    assert '"command": "echo one"' in first.read_text() and "two" not in first.read_text()
    line = json.loads(second.read_text().splitlines()[-1])
    assert "command" not in line
    assert line["command_sha256"] == hashlib.sha256(b"echo two").hexdigest()


async def test_a_reload_that_cannot_be_used_changes_nothing(
    trio: list[ScriptedServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "scout.toml"
    async with from_file(path, "max_concurrent_rpcs = 10\n" + table("h", trio[0])) as s:
        before = s.app.config
        missing = table("new", trio[1]).replace(
            str(trio[1].identity_file), str(tmp_path / "no-such-key")
        )
        path.write_text("max_concurrent_rpcs = 20\n" + table("h", trio[1]) + missing)
        with caplog.at_level(logging.ERROR, logger="server.reload"):
            await s.app.reload()
        path.write_text("max_concurrent_rpcs = [\n")  # not TOML
        with caplog.at_level(logging.ERROR, logger="server.reload"):
            await s.app.reload()
        assert s.app.config is before  # neither reload changed anything
        assert (await s.execute(host="h", command="echo same")).stdout == b"same\n"
        assert trio[0].stats.exec_requests == 1 and trio[1].stats.exec_requests == 0
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any("no-such-key" in m for m in errors) and any("TOML" in m for m in errors)


def test_the_durable_store_takes_a_restart_and_its_password_never_reaches_the_warning(
    tmp_path: Path,
) -> None:
    old = parse({"durable": {"store": "redis://:old-secret@a:6379/0"}}, tmp_path)
    fresh = parse(
        {"durable": {"store": "redis://:new-secret@b:6379/1", "max_records": 7}}, tmp_path
    )
    merged, warnings = keep_restart_only(old, fresh)
    assert merged.durable.store == old.durable.store  # the records given out live there
    assert merged.durable.max_records == 7  # the bounds are live
    (warning,) = warnings
    assert "durable.store" in warning and "restart" in warning
    assert "redis://***@a:6379/0" in warning and "redis://***@b:6379/1" in warning
    assert "secret" not in warning
    again = parse(
        {"durable": {"store": "redis://:old-secret@a:6379/0", "retention": 7200}}, tmp_path
    )
    assert keep_restart_only(old, again)[1] == []  # the same store: nothing to say


# ---- ssh_config: nothing runs on the gateway, and thousands of aliases are fast --------


def test_match_exec_is_refused_naming_the_file_and_line_unless_allowed(tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    conf = tmp_path / "ssh_config"
    conf.write_text(f'Host a\n  HostName 192.0.2.1\n\nMatch exec "touch {ran}"\n  User x\n')
    with pytest.raises(ConfigError) as info:
        parse({"ssh": {"config_files": [str(conf)]}}, tmp_path)
    assert f"{conf} line 4" in str(info.value) and "allow_match_exec" in str(info.value)
    assert not ran.exists()  # nothing ran on the gateway
    allowed = parse({"ssh": {"config_files": [str(conf)], "allow_match_exec": True}}, tmp_path)
    assert allowed.hosts["a"].user == "x" and ran.exists()


def test_proxycommand_is_refused_naming_the_file_and_line(tmp_path: Path) -> None:
    conf = tmp_path / "ssh_config"
    conf.write_text("Host a\n  HostName 192.0.2.1\nHost b\n  ProxyCommand nc %h %p\n")
    with pytest.raises(ConfigError) as info:
        parse({"ssh": {"config_files": [str(conf)]}}, tmp_path)
    assert f"{conf} line 4" in str(info.value) and "ProxyJump" in str(info.value)
    conf.write_text("Host a\n  HostName 192.0.2.1\n  ProxyCommand none\n")
    assert parse({"ssh": {"config_files": [str(conf)]}}, tmp_path).hosts["a"].address


async def test_allow_match_exec_is_loud_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "scout.toml"
    path.write_text("[ssh]\nallow_match_exec = true\n")
    with caplog.at_level(logging.WARNING):
        app = await start(load(path), "127.0.0.1:0")
        await app.stop(grace=0)
    assert any(
        "allow_match_exec" in r.getMessage() and r.levelno == logging.WARNING
        for r in caplog.records
    )


def fleet_file(path: Path, count: int, port: int = 22) -> None:
    """An ssh_config of count aliases, each its own Host block, and a Host * block."""
    blocks = (
        f"Host n{i}\n  HostName 10.{i // 65536}.{i // 256 % 256}.{i % 256}\n  Port {port}\n"
        for i in range(count)
    )
    path.write_text("".join(blocks) + "Host *\n  User fleet\n  ServerAliveInterval 9\n")


def test_ten_thousand_aliases_load_in_seconds(tmp_path: Path) -> None:
    fleet_file(tmp_path / "ssh_config", 10_000)
    (tmp_path / "scout.toml").write_text("[ssh]\nconfig_files = ['ssh_config']\n")
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from server.configfile import load
        began = time.perf_counter()
        config = load(Path({str(tmp_path / "scout.toml")!r}))
        print(len(config.hosts), config.hosts["n9999"].user, time.perf_counter() - began)
        """
    )
    try:  # in a child: before, this took most of an hour, which a timeout must cut short
        done = subprocess.run(
            [sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=30, check=True
        )
    except subprocess.TimeoutExpired:
        pytest.fail("10,000 aliases did not load within 30 s")
    count, user, seconds = done.stdout.split()
    assert (int(count), user) == (10_000, b"fleet")
    assert float(seconds) < 6.0  # 2 s on an idle machine; room for a loaded CI one


# ---- a real scout-server and real signals --------------------------------------------


Served = tuple[subprocess.Popen[bytes], str, Path]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Callable[[], Served]]:
    """Starts scout-server --config scout.toml (written by the test first): the process,
    its target and its log."""
    procs: list[subprocess.Popen[bytes]] = []

    def begin() -> Served:
        proc, target = start_server(
            ["--config", str(tmp_path / "scout.toml"), "--log-format", "text"],
            tmp_path / "server.log",
        )
        procs.append(proc)
        return proc, target, tmp_path / "server.log"

    yield begin
    for proc in procs:
        if proc.poll() is None:
            proc.kill()  # a stalled loop may not answer SIGTERM
            proc.wait(timeout=10)


def callers_toml(*names: str, hosts: str = "*") -> str:
    return "".join(
        f"[[callers]]\nname = '{n}'\ntoken_sha256 = '{hash_token('t-' + n)}'\nhosts = ['{hosts}']\n"
        for n in names
    )


def as_caller(name: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer t-{name}"),)


async def test_sighup_revokes_a_removed_caller_and_lets_its_call_in_flight_finish(
    served: Callable[[], Served], shell_server: ScriptedServer, tmp_path: Path
) -> None:
    path = tmp_path / "scout.toml"
    hosts = host_toml("h", shell_server.host_config("h"))
    path.write_text(callers_toml("alice", "bob") + hosts)
    proc, target, _ = served()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = exec_pb2_grpc.ExecServiceStub(channel)

        def run(who: str, command: str) -> Awaitable[exec_pb2.ExecuteResponse]:
            request = exec_pb2.ExecuteRequest(host="h", command=command)
            call: Awaitable[exec_pb2.ExecuteResponse]
            call = stub.Execute(request, metadata=as_caller(who), timeout=30)
            return call

        in_flight = run("alice", "sleep 2; echo finished")
        await asyncio.sleep(0.5)
        path.write_text(callers_toml("bob", hosts="nothing-*") + hosts)
        proc.send_signal(signal.SIGHUP)

        async def refused() -> bool:
            try:
                await run("alice", "true")
            except grpc.aio.AioRpcError as exc:
                return bool(exc.code() == grpc.StatusCode.UNAUTHENTICATED)
            return False

        end = time.monotonic() + 10
        while not await refused():
            assert time.monotonic() < end, "alice is still let in 10 s after the SIGHUP"
            await asyncio.sleep(0.1)
        # bob's changed policy applies from his next call
        await fails(run("bob", "true"), grpc.StatusCode.PERMISSION_DENIED)
        assert (await in_flight).stdout == b"finished\n"


async def test_sighup_reopens_the_audit_file_after_logrotate_renamed_it(
    served: Callable[[], Served], shell_server: ScriptedServer, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.log"
    path = tmp_path / "scout.toml"
    path.write_text(f"[audit]\nfile = '{audit}'\n" + host_toml("h", shell_server.host_config("h")))
    proc, target, _ = served()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = exec_pb2_grpc.ExecServiceStub(channel)
        await stub.Execute(exec_pb2.ExecuteRequest(host="h", command="echo one"), timeout=30)
        audit.rename(tmp_path / "audit.log.1")  # logrotate, `create` mode
        proc.send_signal(signal.SIGHUP)
        assert await eventually(audit.exists, within=10)
        await stub.Execute(exec_pb2.ExecuteRequest(host="h", command="echo two"), timeout=30)
    assert "echo one" in (tmp_path / "audit.log.1").read_text()
    assert (
        "echo two" in audit.read_text() and "echo two" not in (tmp_path / "audit.log.1").read_text()
    )


async def test_health_answers_during_a_sighup_reload_of_two_thousand_aliases(
    served: Callable[[], Served], tmp_path: Path
) -> None:
    (tmp_path / "known_hosts").write_text("")
    (tmp_path / "scout.toml").write_text(
        "[ssh]\nconfig_files = ['ssh_config']\nknown_hosts = 'known_hosts'\n"
    )
    fleet_file(tmp_path / "ssh_config", 1)
    proc, target, log = served()
    async with grpc.aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        await health.Check(health_pb2.HealthCheckRequest(), timeout=10)  # connected
        fleet_file(tmp_path / "ssh_config", 2000)
        proc.send_signal(signal.SIGHUP)
        slowest, checks = 0.0, 0
        end = time.monotonic() + 60
        while "2000 hosts" not in log.read_text():
            assert time.monotonic() < end, "the reload did not finish within 60 s"
            began = time.monotonic()
            try:
                await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            except grpc.aio.AioRpcError:
                pytest.fail("a health check got no answer within 2 s during the reload")
            slowest, checks = max(slowest, time.monotonic() - began), checks + 1
            await asyncio.sleep(0.01)
        stub = exec_pb2_grpc.ExecServiceStub(channel)
        listed = await stub.ListHosts(exec_pb2.ListHostsRequest(), timeout=10)
    assert len(listed.hosts) == 2000
    assert slowest < 0.5, f"slowest health check during the reload: {slowest:.3f}s ({checks})"


async def test_sighup_keeps_the_demo_host_and_the_command_lines_overrides(
    tmp_path: Path,
) -> None:
    (tmp_path / "scout.toml").write_text("shutdown_grace = 5.0\n")
    proc, target = start_server(
        ["--demo", "--config", str(tmp_path / "scout.toml")], tmp_path / "demo.log"
    )
    try:
        (tmp_path / "scout.toml").write_text("shutdown_grace = 6.0\n")
        proc.send_signal(signal.SIGHUP)
        assert await eventually(lambda: "config reloaded" in log_text(tmp_path), within=10)
        async with grpc.aio.insecure_channel(target) as channel:
            stub = exec_pb2_grpc.ExecServiceStub(channel)
            request = exec_pb2.ExecuteRequest(host="local", command="echo still")
            assert (await stub.Execute(request, timeout=30)).stdout == b"still\n"
        assert "takes a restart" not in log_text(tmp_path)  # --listen is not a change
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def log_text(folder: Path) -> str:
    return (folder / "demo.log").read_text()


async def test_a_reload_reaches_the_hosts_of_a_fan_out_that_have_not_started(
    shell_server: ScriptedServer, tmp_path: Path
) -> None:
    # A fan-out over many hosts, one at a time, can outlive a reload by hours: a caller
    # removed (or narrowed) by it starts no new command there, the one running finishes.
    runs = tmp_path / "runs"
    runs.mkdir()
    audit = tmp_path / "audit.jsonl"
    hosts = "".join(host_toml(n, shell_server.host_config(n)) for n in ("h1", "h2", "h3"))
    hosts = f"[audit]\nfile = '{audit}'\n" + hosts
    path = tmp_path / "scout.toml"
    async with from_file(path, callers_toml("alice", "bob") + hosts) as s:

        async def fan_out(who: str, change: str) -> dict[str, tuple[int, bool]]:
            request = exec_pb2.ExecuteManyRequest(
                hosts=["h1", "h2", "h3"],
                max_parallel=1,
                request=exec_pb2.ExecuteRequest(command=f"mktemp -p {runs}; sleep 1"),
            )
            call = s.stub.ExecuteMany(request, metadata=as_caller(who), timeout=30)
            assert await eventually(lambda: any(runs.iterdir()), within=10)  # the first runs
            path.write_text(change + hosts)
            await s.app.reload()
            answers = {m.host: (m.error.code, m.started) async for m in call}
            return answers

        answers = await fan_out("alice", callers_toml("bob"))  # alice removed
        assert sorted(answers.values()) == [
            (0, False),  # the host in flight finished
            (grpc.StatusCode.UNAUTHENTICATED.value[0], False),
            (grpc.StatusCode.UNAUTHENTICATED.value[0], False),
        ]
        assert len(list(runs.iterdir())) == 1
        lines = [json.loads(x) for x in audit.read_text().splitlines()]
        assert sorted((x["host"], x["code"], x["started"]) for x in lines) == [
            ("h1", "OK", True),
            ("h2", "UNAUTHENTICATED", False),
            ("h3", "UNAUTHENTICATED", False),
        ]  # each host refused by the reload has its line
        for made in runs.iterdir():
            made.unlink()
        answers = await fan_out("bob", callers_toml("bob", hosts="h1"))  # bob narrowed
        assert answers == {
            "h1": (0, False),
            "h2": (grpc.StatusCode.PERMISSION_DENIED.value[0], False),
            "h3": (grpc.StatusCode.PERMISSION_DENIED.value[0], False),
        }
        assert len(list(runs.iterdir())) == 1
