"""The rig of one benchmark invocation: targets up, servers and load generators on demand.

    Rig
    ├── fake      protocol-only SSH server process, 200 hosts on 127.0.0.2..,
    │             a connect delay before authentication (bench.fakessh)
    ├── sshd      a real OpenSSH sshd on 127.0.0.1 (testkit.sshd, the tests' fixture)
    ├── scout()   a scout-server process for a given inventory and pool settings
    └── load()    one load generator process per measurement (bench.loadgen)

Everything runs in its own process; this one only orchestrates and reads clocks. The fake
hosts share the keys server.keyfiles makes in the work directory; sshd brings its own.
scout-server is started by its console script from a TOML inventory written the way an
operator would, on 127.0.0.1:0: the port is read from its start-up log line, and it is
ready when the gRPC health service says SERVING.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.keyfiles import ShellKeys, load_or_create_keys
from testkit.sshd import OpenSSHServer

from .fakessh import Counters, query
from .procs import BIN, PYTHON, Child, spawn, start_ready
from .results import Runs, Section
from .specs import Auth, Host, LoadResult, LoadSpec

FAKE_HOSTS = 200
DELAY_MS = 10.0
_LISTENING = re.compile(r"listening on \S+ \(port (\d+)\)")


def say(message: str) -> None:
    """Progress, on stderr (stdout stays clean)."""
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Mode:
    """How long and how often: --quick, --full or --smoke."""

    name: str
    runs: int  # runs per configuration; tables show medians
    warmup: float  # seconds before a measured window
    duration: float  # seconds of a measured window
    ladder_step: float  # seconds per load-ladder rate
    ladder_runs: int
    stream_bytes: int
    rss_runs: int


QUICK = Mode("quick", runs=3, warmup=1.0, duration=3.0, ladder_step=3.0, ladder_runs=1,
             stream_bytes=256 * 2**20, rss_runs=1)  # fmt: skip
SMOKE = Mode("smoke", runs=1, warmup=0.3, duration=1.0, ladder_step=1.0, ladder_runs=1,
             stream_bytes=32 * 2**20, rss_runs=1)  # fmt: skip
FULL = Mode("full", runs=5, warmup=2.0, duration=8.0, ladder_step=8.0, ladder_runs=3,
            stream_bytes=2**30, rss_runs=3)  # fmt: skip


@dataclass
class Server:
    """A running gRPC server process (scout, or the gRPC floor) that load can be aimed at."""

    child: Child
    port: int

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.child.pid

    def aim(self, spec: LoadSpec) -> LoadSpec:
        """spec, sent through this server, with its CPU measured."""
        target = f"127.0.0.1:{self.port}"
        return replace(spec, backend="scout", target=target, server_pid=self.pid)

    async def stop(self) -> None:
        """SIGTERM: the server drains and exits."""
        await self.child.stop(grace=30.0)


def config_text(hosts: list[Host], login: Auth, pool: dict[str, int]) -> str:
    """The TOML inventory for these hosts (strings quoted as JSON, which TOML accepts)."""
    lines = ["[ssh]", f"known_hosts = {json.dumps(login.known_hosts)}", "", "[pool]"]
    lines += [f"{key} = {value}" for key, value in pool.items()]
    for h in hosts:
        lines += [
            "",
            f"[hosts.{h.name}]",
            f"address = {json.dumps(h.address)}",
            f"port = {h.port}",
            f"user = {json.dumps(login.user)}",
            f"identity_file = {json.dumps(login.client_key)}",
        ]
    return "\n".join(lines) + "\n"


async def start_scout(workdir: Path, tag: str, config: str) -> Server:
    """Write the config, start scout-server on port 0, wait until it serves."""
    path = workdir / f"scout-{tag}.toml"
    path.write_text(config, encoding="utf-8")
    log = workdir / f"scout-{tag}.log"
    argv = [str(BIN / "scout-server"), "--config", str(path), "--listen", "127.0.0.1:0"]
    child = await spawn(f"scout-server ({tag})", argv, log)
    try:
        server = Server(child, await _serving(child))
    except BaseException:
        await child.stop()
        raise
    return server


async def _serving(child: Child) -> int:
    """The port scout-server logs once started, after its health service says SERVING."""
    async with asyncio.timeout(60):
        while not (found := _LISTENING.findall(child.log.read_text(errors="replace"))):
            if child.proc.returncode is not None:
                raise child.failure("exited at start")
            await asyncio.sleep(0.05)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{found[-1]}") as channel:
            request = health_pb2.HealthCheckRequest(service="scout.v1.ExecService")
            reply = await health_pb2_grpc.HealthStub(channel).Check(request)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise child.failure(f"is not SERVING: {reply}")
    return int(found[-1])


@dataclass
class Rig:
    """Targets and helpers shared by every scenario, and the sections done so far."""

    mode: Mode
    workdir: Path
    keys: ShellKeys
    fake: Child
    fake_hosts: list[Host]
    sshd: OpenSSHServer
    sshd_host: Host
    sshd_pid: int  # the listener; its process tree does the SSH server's work
    caption: str = ""  # the machine and the command, for plots
    servers: list[Server] = field(default_factory=list)
    scout_cipher: str = ""  # what scout negotiates; the baselines then use the same
    sections: dict[int, Section] = field(default_factory=dict)

    def closed(self, spec: LoadSpec, callers: int) -> LoadSpec:
        """spec as a closed loop of callers, over the mode's warm-up and measured window."""
        mode = self.mode
        return replace(
            spec, mode="closed", concurrency=callers, warmup=mode.warmup, duration=mode.duration
        )

    def fake_auth(self, *ciphers: str) -> Auth:
        """How to log in to the fake hosts; by default with scout's cipher."""
        ciphers = ciphers or self.ciphers
        return Auth("bench", str(self.keys.identity_file), str(self.keys.known_hosts), ciphers)

    def sshd_auth(self) -> Auth:
        """How to log in to sshd, with scout's cipher."""
        s = self.sshd
        return Auth(s.user, str(s.identity_file), str(s.known_hosts), self.ciphers)

    @property
    def ciphers(self) -> tuple[str, ...]:
        """What the baselines offer: scout's cipher once known, else asyncssh's defaults."""
        return (self.scout_cipher,) if self.scout_cipher else ()

    async def scout(self, hosts: list[Host], login: Auth, **pool: int) -> Server:
        """Start a scout server whose inventory is hosts, with these pool settings."""
        config = config_text(hosts, login, pool)
        server = await start_scout(self.workdir, str(len(self.servers) + 1), config)
        self.servers.append(server)
        return server

    async def grpc_floor(self) -> Server:
        """Start the gRPC-only ExecService (bench.grpcfloor)."""
        argv = [PYTHON, "-m", "bench.grpcfloor"]
        child = await start_ready("grpcfloor", argv, self.workdir / "grpcfloor.log")
        self.servers.append(server := Server(child, child.endpoints[0][1]))
        return server

    async def load(self, spec: LoadSpec) -> LoadResult:
        """Run one load generator process to completion; its result."""
        name = f"loadgen ({spec.backend}, {spec.mode})"
        stdin = json.dumps(dataclasses.asdict(spec)).encode()
        argv = [PYTHON, "-m", "bench.loadgen"]
        child = await spawn(name, argv, self.workdir / "loadgen.log", stdin)
        try:
            return LoadResult.from_dict(await child.read_json(900.0))
        finally:
            await child.stop()

    async def repeat(self, tag: str, runs: int, specs: dict[str, LoadSpec]) -> dict[str, Runs]:
        """Each spec `runs` times, interleaved (A B C A B C ...) so drift hits all alike."""
        out = {label: Runs() for label in specs}
        for run in range(runs):
            for label, spec in specs.items():
                out[label].append(result := await self.load(spec))
                say(f"[{tag}] {label} run {run + 1}/{runs}: {result.brief()}")
        return out

    async def stats(self, *, reset: bool = False) -> Counters:
        """The fake server's counters (connections, peak, handshakes, ciphers)."""
        address, port = self.fake.endpoints[0]
        return await query(address, port, self.keys.known_hosts, reset=reset)

    async def counted(self, spec: LoadSpec) -> tuple[LoadResult, Counters]:
        """One load generator run, and what the fake server counted meanwhile."""
        await self.stats(reset=True)
        result = await self.load(spec)
        return result, await self.stats()

    async def quiet(self) -> None:
        """Wait until the fake server has no connection left, then zero its counters."""
        for _ in range(100):
            if (await self.stats()).connections == 0:
                break
            await asyncio.sleep(0.05)
        await self.stats(reset=True)

    async def learn_scout_cipher(self) -> None:
        """Which cipher scout negotiates (seen by the fake server), so baselines match it.

        Comparing scout on AES-GCM with a raw client on chacha20-poly1305 would measure
        the cipher, not scout: asyncssh spends twice the CPU per command on the latter.
        """
        hosts = self.fake_hosts[:1]
        server = await self.scout(hosts, self.fake_auth())
        try:
            await self.stats(reset=True)
            await self.load(server.aim(LoadSpec("scout", "burst", tuple(hosts))))
            ciphers = (await self.stats()).ciphers
        finally:
            await server.stop()
        self.scout_cipher = max(ciphers, key=lambda c: ciphers[c]) if ciphers else ""
        say(f"bench: scout negotiates {self.scout_cipher or 'an unknown cipher'}")

    async def close(self) -> None:
        """Stop every server, then the targets."""
        for server in self.servers:
            await server.stop()
        await self.fake.stop()
        await asyncio.to_thread(self.sshd.stop)


async def start_rig(mode: Mode) -> Rig:
    """Make a work directory and keys, start the fake server and sshd."""
    workdir = Path(tempfile.mkdtemp(prefix="scout-bench-"))
    keys = load_or_create_keys(workdir / "keys", "scout-bench")
    argv = [PYTHON, "-m", "bench.fakessh", str(workdir / "keys"), str(FAKE_HOSTS), str(DELAY_MS)]
    fake = await start_ready("fakessh", argv, workdir / "fakessh.log")
    for address, port in fake.endpoints:
        keys.trust(address, port)
    hosts = [Host(f"fake{i:03d}", a, p) for i, (a, p) in enumerate(fake.endpoints)]
    sshd = OpenSSHServer(workdir / "openssh")
    try:
        await asyncio.to_thread(sshd.start)
    except BaseException:
        await fake.stop()
        raise
    assert sshd.process is not None
    sshd_host = Host("openssh", sshd.address, sshd.port)
    return Rig(mode, workdir, keys, fake, hosts, sshd, sshd_host, sshd.process.pid)
