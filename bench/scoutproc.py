"""The server under test: `scout-server` in its own process, with a generated inventory.

The config is written as TOML, the way an operator would (`[hosts.NAME]`, `[ssh]`,
`[pool]`), and the server is started by its console script on 127.0.0.1:0. The port is
read from its start-up log line; readiness is the official gRPC health check saying
SERVING. CPU time and RSS come from psutil on the server's pid. With `profile` or
`gc_log`, the server runs under bench.profiled: cProfile switched on and off by
signals, and a log of its garbage collections.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .callers import Host
from .procs import BIN, PYTHON, Child, spawn

SERVICE = "scout.v1.ExecService"
_LISTENING = re.compile(r"listening on \S+ \(port (\d+)\)")


@dataclass(frozen=True)
class Login:
    """How scout logs in to a set of hosts."""

    user: str
    identity_file: Path
    known_hosts: Path


def _toml(value: Any) -> str:
    """A TOML scalar (strings through JSON quoting, which TOML basic strings accept)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def config_text(hosts: list[tuple[Host, Login]], pool: dict[str, Any], known_hosts: Path) -> str:
    """The TOML inventory for these hosts and pool settings."""
    lines = ["[ssh]", f"known_hosts = {_toml(known_hosts)}", "", "[pool]"]
    lines += [f"{key} = {_toml(value)}" for key, value in pool.items()]
    for host, login in hosts:
        lines += [
            "",
            f"[hosts.{host.name}]",
            f"address = {_toml(host.address)}",
            f"port = {host.port}",
            f"user = {_toml(login.user)}",
            f"identity_file = {_toml(login.identity_file)}",
            f"known_hosts = {_toml(login.known_hosts)}",
        ]
    return "\n".join(lines) + "\n"


@dataclass
class ScoutServer:
    """A running scout-server process."""

    child: Child
    port: int

    @property
    def target(self) -> str:
        """The gRPC target to call."""
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.child.pid

    def rss(self) -> int:
        """Resident memory of the server process, bytes."""
        return int(psutil.Process(self.pid).memory_info().rss)

    def cpu(self) -> float:
        """CPU seconds (user + system) the server has used so far."""
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def signal(self, signum: int) -> None:
        """Send the server a signal (bench.profiled: SIGUSR1 starts, SIGUSR2 writes)."""
        self.child.proc.send_signal(signum)

    async def stop(self) -> int:
        """SIGTERM: the server drains and exits (and writes its profile, if profiled)."""
        return await self.child.stop(grace=30.0)


async def _port_from_log(child: Child, within: float) -> int:
    """Wait for the start-up line that names the bound port."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if not child.alive():
            raise child.failure("exited at start")
        text = child.log.read_text(encoding="utf-8", errors="replace")
        found = _LISTENING.findall(text)
        if found:
            return int(found[-1])
        await asyncio.sleep(0.05)
    raise child.failure(f"did not log its port within {within:.0f}s")


async def wait_serving(target: str, within: float = 30.0) -> None:
    """Poll the gRPC health service until ExecService is SERVING."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    request = health_pb2.HealthCheckRequest(service=SERVICE)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                reply = await stub.Check(request, timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                if loop.time() > deadline:
                    raise
            if loop.time() > deadline:
                raise TimeoutError(f"scout at {target} not SERVING after {within:.0f}s")
            await asyncio.sleep(0.05)


async def start_scout(
    workdir: Path,
    tag: str,
    *,
    hosts: list[tuple[Host, Login]],
    pool: dict[str, Any],
    known_hosts: Path,
    profile: Path | None = None,
    gc_log: Path | None = None,
) -> ScoutServer:
    """Write the config, start scout-server on port 0, wait until it serves."""
    config = workdir / f"scout-{tag}.toml"
    config.write_text(config_text(hosts, pool, known_hosts), encoding="utf-8")
    args = ["--config", str(config), "--listen", "127.0.0.1:0"]
    if profile is None and gc_log is None:
        argv = [str(BIN / "scout-server"), *args]
    else:
        argv = [PYTHON, "-m", "bench.profiled"]
        argv += ["--profile", str(profile)] if profile else []
        argv += ["--gc-log", str(gc_log)] if gc_log else []
        argv += ["--", *args]
    log = workdir / f"scout-{tag}.log"
    log.write_bytes(b"")
    child = await spawn(f"scout-server ({tag})", argv, log)
    try:
        port = await _port_from_log(child, 60.0)
        server = ScoutServer(child, port)
        await wait_serving(server.target)
    except BaseException:
        await child.stop()
        raise
    return server
