"""The rig of one benchmark invocation: targets up, servers and load generators on demand.

    Rig
    ├── fake      protocol-only SSH server, 200 hosts on 127.0.0.2.. (bench.fakes)
    ├── sshd      a real OpenSSH sshd on 127.0.0.1 (testkit.sshd, the tests' fixture)
    ├── scout()   a scout-server process for an inventory, pool settings and flags
    └── load()    one load generator process per measurement (bench.loadgen)

scout-server is started by its console script from a TOML inventory, on 127.0.0.1:0
(/metrics, if asked, on METRICS_HOST:0); its ports are read from the sockets its process
tree listens on, whatever it logs, and it is ready when its health service says SERVING.
Inside `pinned()`, servers and SSH clients run on the first CPU (the gateway's), load
generators and the fake SSH server on the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.connector import CIPHERS
from server.keyfiles import ShellKeys, load_or_create_keys
from testkit.sshd import OpenSSHServer

from .fakes import Counters
from .procs import BIN, METRICS_HOST, PYTHON, Child, pin, spawn
from .results import Runs, Section
from .specs import Auth, Host, LoadResult, LoadSpec

FAKE_HOSTS, DELAY_MS = 200, 10.0  # the fake SSH server's hosts, and its connect delay
# load generators that do a gateway's SSH work
SSH_CLIENTS = ("raw", "raw_cold", "naive", "pssh", "pssh_cold")
PINNED = " Pinned: the gateway on the first core, the rest on the second (see Method)."
Plan = LoadSpec | Callable[[dict[str, "Runs"]], LoadSpec]  # a spec, or one from this round's


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


def config_text(
    hosts: list[Host], login: Auth, pool: dict[str, int], durable: str = "",
    top: Mapping[str, int] | None = None,
) -> str:  # fmt: skip
    """The TOML inventory for these hosts (strings quoted as JSON, which TOML accepts);
    `durable`: the keyed commands' store URL; `top`: top-level settings."""
    lines = [f"{key} = {value}" for key, value in (top or {}).items()]
    lines += ["[ssh]", f"known_hosts = {json.dumps(login.known_hosts)}", ""]
    if durable:
        lines += ["[durable]", f"store = {json.dumps(durable)}", ""]
    lines += ["[pool]"]
    lines += [f"{key} = {value}" for key, value in pool.items()]
    for h in hosts:
        lines += ["", f"[hosts.{h.name}]", f"address = {json.dumps(h.address)}",
                  f"port = {h.port}", f"user = {json.dumps(login.user)}",
                  f"identity_file = {json.dumps(login.client_key)}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def listening(pid: int) -> dict[str, int]:
    """The TCP ports a process and its descendants listen on, by IPv4 address."""
    try:
        root = psutil.Process(pid)
        conns = [c for p in (root, *root.children(recursive=True)) for c in p.net_connections()]
    except psutil.NoSuchProcess:
        return {}
    listen = [c.laddr for c in conns if c.status == psutil.CONN_LISTEN]
    return {a.ip.removeprefix("::ffff:"): a.port for a in listen}  # grpc binds dual-stack


async def serving(child: Child, metrics: bool) -> Child:
    """The server, its endpoints (gRPC, then /metrics if asked) found, once SERVING."""
    request = health_pb2.HealthCheckRequest(service="scout.v1.ExecService")
    async with asyncio.timeout(60):
        while child.proc.returncode is None:
            ports = listening(child.pid)
            child.endpoints = [(a, ports[a]) for a in ("127.0.0.1", METRICS_HOST) if a in ports]
            if "127.0.0.1" in ports and (METRICS_HOST in ports or not metrics):
                async with grpc.aio.insecure_channel(f"127.0.0.1:{ports['127.0.0.1']}") as ch:
                    with contextlib.suppress(grpc.aio.AioRpcError):
                        reply = await health_pb2_grpc.HealthStub(ch).Check(request)
                        if reply.status == health_pb2.HealthCheckResponse.SERVING:
                            return child
            await asyncio.sleep(0.05)
    raise child.failure("exited at start")


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
    servers: list[Child] = field(default_factory=list)
    sections: dict[int, Section] = field(default_factory=dict)
    gateway: set[int] = field(default_factory=set)  # pinned(): the gateway's CPU
    others: set[int] = field(default_factory=set)  # pinned(): everything else's

    def closed(self, spec: LoadSpec, callers: int) -> LoadSpec:
        """spec as a closed loop of callers, over the mode's warm-up and measured window."""
        m = self.mode
        return replace(
            spec, mode="closed", concurrency=callers, warmup=m.warmup, duration=m.duration
        )

    def fake_auth(self, *ciphers: str) -> Auth:
        """How to log in to the fake hosts; by default with scout's ciphers."""
        keys = self.keys
        return Auth("bench", str(keys.identity_file), str(keys.known_hosts), ciphers or CIPHERS)

    def sshd_auth(self) -> Auth:
        """How to log in to sshd, with scout's ciphers."""
        s = self.sshd
        return Auth(s.user, str(s.identity_file), str(s.known_hosts), CIPHERS)

    async def scout(
        self, hosts: list[Host], login: Auth, *, args: Sequence[str] = (), count: bool = False,
        durable: str = "", top: Mapping[str, int] | None = None, tree: Path | None = None,
        **pool: int,
    ) -> Child:  # fmt: skip
        """Start a scout server for hosts with these pool settings, top-level settings
        (`max_concurrent_rpcs`...) and extra flags; with `tree`, another checkout's
        `server` and `scout` packages, imported before this one's (an A/B of two versions)."""
        path = self.workdir / f"scout-{len(self.servers) + 1}.toml"
        path.write_text(config_text(hosts, login, pool, durable, top), encoding="utf-8")
        argv = [str(BIN / "scout-server"), "--config", str(path), "--listen", "127.0.0.1:0"]
        name, log = f"scout-server ({path.stem})", path.with_suffix(".log")
        env = None if tree is None else {**os.environ, "PYTHONPATH": str(tree)}
        child = await spawn(name, [*argv, *args], log, cpus=self.gateway, count=count, env=env)
        try:
            self.servers.append(server := await serving(child, "--metrics" in args))
        except BaseException:
            await child.stop()
            raise
        return server

    async def grpc_floor(self, count: bool = False, limit: int = 0) -> Child:
        """Start the gRPC-only ExecService (bench.fakes); with limit, grpc's own
        maximum_concurrent_rpcs."""
        argv = [PYTHON, "-m", "bench.fakes", "grpc", *([str(limit)] if limit else [])]
        log = self.workdir / "grpc.log"
        child = await spawn("gRPC floor", argv, log, ready=True, cpus=self.gateway, count=count)
        self.servers.append(child)
        return child

    async def load(self, spec: LoadSpec, count: bool = False) -> LoadResult:
        """Run one load generator process to completion; its result."""
        cpus = self.gateway if spec.backend in SSH_CLIENTS else self.others
        stdin = json.dumps(dataclasses.asdict(spec)).encode()
        argv, log = [PYTHON, "-m", "bench.loadgen"], self.workdir / "loadgen.log"
        name = f"loadgen ({spec.backend}, {spec.mode})"
        child = await spawn(name, argv, log, stdin=stdin, cpus=cpus, count=count)
        try:
            return LoadResult.from_dict(await child.read_json(900.0))
        finally:
            await child.stop()

    async def at_once(self, *specs: LoadSpec) -> list[LoadResult]:
        """The loads run at the same time, each by its own generator: their servers'
        CPU compared over the same seconds, whatever the machine does meanwhile."""
        return list(await asyncio.gather(*(self.load(spec) for spec in specs)))

    async def repeat(self, tag: str, runs: int, specs: Mapping[str, Plan]) -> dict[str, Runs]:
        """Each spec `runs` times, interleaved (A B C A B C ...) so drift hits all alike."""
        out = {label: Runs() for label in specs}
        for run in range(runs):
            for label, plan in specs.items():
                out[label].append(
                    r := await self.load(plan if isinstance(plan, LoadSpec) else plan(out))
                )
                say(f"[{tag}] {label} run {run + 1}/{runs}: {r.brief()}")
        return out

    @contextlib.asynccontextmanager
    async def pinned(self) -> AsyncIterator[None]:
        """The gateway's processes on the first CPU, the others on the rest, for what
        starts inside the block (and the fake SSH server; sshd is not used)."""
        first, *rest = cpus = sorted(os.sched_getaffinity(0))
        if not rest:
            raise RuntimeError("pinned runs need at least 2 CPUs")
        self.gateway, self.others = {first}, set(rest)
        pin(self.fake.pid, self.others)
        try:
            yield
        finally:
            self.gateway, self.others = set(), set()
            pin(self.fake.pid, cpus)

    async def stats(self, *, reset: bool = False) -> Counters:
        """The fake SSH server's counters (and zero them)."""
        assert self.fake.proc.stdin is not None
        self.fake.proc.stdin.write(b"reset\n" if reset else b"stats\n")
        return Counters(**await self.fake.read_json(30.0))

    async def counted(self, spec: LoadSpec) -> LoadResult:
        """One run once the fake SSH server has no connection left, with what it counted."""
        for _ in range(100):
            if (await self.stats(reset=True)).connections == 0:
                break
            await asyncio.sleep(0.05)
        result = await self.load(spec)
        return replace(result, seen=dataclasses.asdict(await self.stats()))

    async def close(self) -> None:
        """Stop every server (a scenario stops its own, unless it failed), then the targets."""
        for server in self.servers:
            await server.stop()
        await self.fake.stop()
        await asyncio.to_thread(self.sshd.stop)


async def start_rig(mode: Mode) -> Rig:
    """Make a work directory and keys, start the fake server and sshd."""
    workdir = Path(tempfile.mkdtemp(prefix="scout-bench-"))
    keys = load_or_create_keys(workdir / "keys", "scout-bench")
    argv = [PYTHON, "-m", "bench.fakes", "ssh", str(workdir / "keys"), str(FAKE_HOSTS)]
    fake = await spawn(
        "fake SSH", [*argv, str(DELAY_MS)], workdir / "fake.log", stdin=None, ready=True
    )
    for address, port in fake.endpoints:
        keys.trust(address, port)
    sshd = OpenSSHServer(workdir / "openssh")
    try:
        await asyncio.to_thread(sshd.start)
    except BaseException:
        await fake.stop()
        raise
    hosts = [Host(f"fake{i:03d}", a, p) for i, (a, p) in enumerate(fake.endpoints)]
    pid = sshd.process.pid if sshd.process else 0
    return Rig(
        mode, workdir, keys, fake, hosts, sshd, Host("openssh", sshd.address, sshd.port), pid
    )
