"""The rig of one benchmark invocation: targets up, load generators on demand, all torn down.

The fake hosts share one host key and trust one client key, both made here, and one
known_hosts file lists them all; sshd brings its own keys (testkit/sshd.py).

    Rig
    ├── fake     protocol-only SSH server process, `fake_count` hosts on 127.0.0.2..,
    │            `delay_ms` before authentication (bench.fakessh)
    ├── sshd     a real OpenSSH sshd on 127.0.0.1 (testkit/sshd.py, the tests' fixture)
    ├── scout()  a scout-server process for a given inventory and pool settings
    └── load()   one load generator process per measurement (bench.loadgen)

Everything runs in its own process; this one only orchestrates and reads clocks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pwd
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from testkit.sshd import OpenSSHServer

from . import fakessh
from .callers import Host
from .procs import PYTHON, Child, read_json_line, spawn, start_ready
from .scoutproc import Login, ScoutServer, start_scout


@dataclass(frozen=True)
class Keys:
    """Paths of the key material in a run's work directory."""

    host_key: Path
    client_key: Path
    client_pub: Path
    known_hosts: Path

    def host_public(self) -> str:
        """The host key as one OpenSSH public key line."""
        key = asyncssh.read_private_key(self.host_key)
        return key.export_public_key("openssh").decode().strip()

    def trust(self, endpoints: list[tuple[str, int]]) -> None:
        """Add known_hosts lines for these (address, port) endpoints."""
        public = self.host_public()
        with self.known_hosts.open("a", encoding="ascii") as f:
            for address, port in endpoints:
                name = address if port == 22 else f"[{address}]:{port}"
                f.write(f"{name} {public}\n")


def _write_private(path: Path, key: asyncssh.SSHKey) -> None:
    """Write a private key readable by its owner only (sshd refuses others)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key("openssh"))


def make_keys(workdir: Path) -> Keys:
    """Generate fresh ed25519 keys and an empty known_hosts in workdir."""
    keys = Keys(
        host_key=workdir / "host_ed25519",
        client_key=workdir / "client_ed25519",
        client_pub=workdir / "client_ed25519.pub",
        known_hosts=workdir / "known_hosts",
    )
    host = asyncssh.generate_private_key("ssh-ed25519", comment="scout-bench-host")
    client = asyncssh.generate_private_key("ssh-ed25519", comment="scout-bench-client")
    _write_private(keys.host_key, host)
    _write_private(keys.client_key, client)
    keys.client_pub.write_bytes(client.export_public_key("openssh"))
    keys.known_hosts.write_text("", encoding="ascii")
    return keys


_LOAD_TIMEOUT = 900.0


def say(message: str) -> None:
    """Progress, on stderr (stdout stays clean)."""
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} {message}\n")
    sys.stderr.flush()


def brief(result: dict[str, Any]) -> str:
    """One line about a load generator result."""
    lat = result.get("latency", {})
    parts = [f"{result.get('throughput', 0):,.0f}/s", f"p95 {lat.get('p95', float('nan')):.1f} ms"]
    if "makespan" in result:
        parts.insert(0, f"makespan {result['makespan'] * 1000:.0f} ms")
    if "mib_s" in result:
        parts.insert(0, f"{result['mib_s']:.0f} MiB/s")
    if result.get("errors"):
        parts.append(f"errors {result['errors']}")
    return ", ".join(parts)


def login_note(user: str) -> str:
    """Who logs in to sshd and with which shell (testkit/sshd.py picks the user)."""
    shell = pwd.getpwnam(user).pw_shell
    return f"`{user}` (shell {shell}; testkit/sshd.py's login user)"


@dataclass(frozen=True)
class Mode:
    """How long and how often: --quick or --full."""

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
class Rig:
    """Targets and helpers shared by every scenario."""

    workdir: Path
    keys: Keys
    fake: Child
    fake_hosts: list[Host]
    sshd: OpenSSHServer
    sshd_host: Host
    delay_ms: float
    sshd_note: str
    servers: list[ScoutServer] = field(default_factory=list)
    scout_cipher: str = ""  # what scout negotiates; the baselines then use the same

    @property
    def sshd_pid(self) -> int:
        """The sshd listener's pid (its process tree does the SSH server's work)."""
        assert self.sshd.process is not None
        return self.sshd.process.pid

    @property
    def fake_login(self) -> Login:
        """How scout and the baselines log in to the fake hosts."""
        return Login("bench", self.keys.client_key, self.keys.known_hosts)

    @property
    def sshd_login(self) -> Login:
        """How scout and the baselines log in to sshd."""
        return Login(self.sshd.user, self.sshd.identity_file, self.sshd.known_hosts)

    def auth(self, login: Login, ciphers: list[str] | None = None) -> dict[str, Any]:
        """A login as a load generator spec's `auth`; by default scout's cipher."""
        if ciphers is None:
            ciphers = [self.scout_cipher] if self.scout_cipher else []
        return {
            "user": login.user,
            "client_key": str(login.identity_file),
            "known_hosts": str(login.known_hosts),
            "ciphers": ciphers,
        }

    async def grpc_floor(self) -> Child:
        """Start the gRPC-only ExecService (bench.grpcfloor); its ready line has the port."""
        log = self.workdir / "grpcfloor.log"
        return await start_ready("grpcfloor", [PYTHON, "-m", "bench.grpcfloor"], log)

    async def learn_scout_cipher(self) -> str:
        """Which cipher scout negotiates (seen by the fake server), so baselines match it.

        Comparing scout on AES-GCM with a raw client on chacha20-poly1305 would measure
        the cipher, not scout: asyncssh spends twice the CPU per command on the latter.
        """
        host = self.fake_hosts[0]
        server = await self.scout([host], self.fake_login)
        try:
            await self.fake_stats(reset=True)
            spec = {"hosts": [host], "command": "true", "mode": "sequence", "count": 1}
            await self.load({**spec, "backend": "scout", "target": server.target})
            ciphers = (await self.fake_stats())["ciphers"]
        finally:
            await server.stop()
        self.scout_cipher = max(ciphers, key=ciphers.get) if ciphers else ""
        say(f"bench: scout negotiates {self.scout_cipher or 'an unknown cipher'}")
        return self.scout_cipher

    async def scout(
        self,
        hosts: list[Host],
        login: Login,
        pool: dict[str, Any] | None = None,
        profile: Path | None = None,
        gc_log: Path | None = None,
    ) -> ScoutServer:
        """Start a scout server whose inventory is hosts."""
        server = await start_scout(
            self.workdir,
            str(len(self.servers) + 1),
            hosts=[(h, login) for h in hosts],
            pool=pool or {},
            known_hosts=self.keys.known_hosts,
            profile=profile,
            gc_log=gc_log,
        )
        self.servers.append(server)
        return server

    async def load(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Run one load generator process to completion; its result."""
        spec = {"timeout": 30.0, **spec}
        spec["hosts"] = [dataclasses.asdict(h) for h in spec["hosts"]]
        child = await spawn(
            f"loadgen ({spec['backend']}, {spec['mode']})",
            [PYTHON, "-m", "bench.loadgen"],
            self.workdir / "loadgen.log",
            stdin=True,
        )
        assert child.proc.stdin is not None
        child.proc.stdin.write(json.dumps(spec).encode())
        child.proc.stdin.close()
        try:
            result = await read_json_line(child, _LOAD_TIMEOUT)
        finally:
            await child.stop()
        return result

    async def repeat(
        self, tag: str, runs: int, specs: dict[str, dict[str, Any]]
    ) -> dict[str, list[dict[str, Any]]]:
        """Each spec `runs` times, interleaved (A B C A B C ...) so drift hits all alike."""
        out: dict[str, list[dict[str, Any]]] = {label: [] for label in specs}
        for run in range(runs):
            for label, spec in specs.items():
                result = await self.load(spec)
                out[label].append(result)
                say(f"[{tag}] {label} run {run + 1}/{runs}: {brief(result)}")
        return out

    async def fake_stats(self, *, reset: bool = False) -> dict[str, Any]:
        """The fake server's counters (connections, peak, handshakes, execs)."""
        first = self.fake_hosts[0]
        return await fakessh.query((first.address, first.port), self.keys.known_hosts, reset=reset)

    async def close(self) -> None:
        """Stop every target and every scout server still running."""
        for server in self.servers:
            await server.stop()
        await self.fake.stop()
        await asyncio.to_thread(self.sshd.stop)


async def start_rig(fake_count: int, delay_ms: float) -> Rig:
    """Make a work directory and keys, start the fake server and sshd."""
    workdir = Path(tempfile.mkdtemp(prefix="scout-bench-"))
    keys = make_keys(workdir)
    fake = await start_ready(
        "fakessh",
        [
            PYTHON,
            "-m",
            "bench.fakessh",
            "--count",
            str(fake_count),
            "--delay-ms",
            str(delay_ms),
            "--host-key",
            str(keys.host_key),
            "--authorized-keys",
            str(keys.client_pub),
        ],
        workdir / "fakessh.log",
    )
    endpoints = [(str(a), int(p)) for a, p in fake.ready["endpoints"]]
    keys.trust(endpoints)
    hosts = [Host(f"fake{i:03d}", a, p) for i, (a, p) in enumerate(endpoints)]
    sshd = OpenSSHServer(workdir / "openssh")
    try:
        await asyncio.to_thread(sshd.start)
    except BaseException:
        await fake.stop()
        raise
    sshd_host = Host("openssh", sshd.address, sshd.port)
    return Rig(workdir, keys, fake, hosts, sshd, sshd_host, delay_ms, login_note(sshd.user))


def remove_workdir(rig: Rig) -> None:
    """Delete the work directory (logs included)."""
    shutil.rmtree(rig.workdir, ignore_errors=True)
