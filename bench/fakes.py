"""Servers that answer without doing the work, so a benchmark measures the caller's side.

`python -m bench.fakes ssh KEYS_DIR COUNT DELAY_MS`: real SSH (kex, keys, channels) on
COUNT loopback addresses from 127.0.0.2 (one "host" each), whose `exec` spawns nothing and
answers REPLY (`sleep N`: after N seconds), after DELAY_MS before authentication (network
and server latency); a line `stats` (or `reset`: and zero them) on its stdin answers its
Counters. `python -m bench.fakes grpc [LIMIT]`: the gRPC floor, scout's ExecService on
the same grpc.aio server and stubs, answering REPLY at once (`sleep N`: after N seconds);
with LIMIT, grpc's own `maximum_concurrent_rpcs` refuses the calls beyond it
(RESOURCE_EXHAUSTED, no handler runs). Each prints a JSON line with its endpoints when ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import grpc

from scout.allocator import keep_freed_memory
from scout.v1 import exec_pb2, exec_pb2_grpc
from server.keyfiles import load_or_create_keys

from .procs import print_json
from .specs import GRPC_OPTIONS

REPLY = b"ok\n"


def sleeps(command: str) -> float:
    """How long a fake takes to answer command: N for `sleep N`, else 0."""
    word, _, rest = command.partition(" ")
    try:
        return float(rest) if word == "sleep" else 0.0
    except ValueError:
        return 0.0


@dataclass
class Counters:
    """What the SSH server saw: connections (that reached authentication) and channels
    open now and at most at once, and handshakes."""

    connections: int = 0
    peak: int = 0
    handshakes: int = 0
    channels: int = 0
    peak_channels: int = 0


class _Server(asyncssh.SSHServer):
    """One SSH connection: counted, authenticated after the delay."""

    def __init__(self, counters: Counters, delay: float) -> None:
        self.counters, self.delay, self.counted = counters, delay, False

    async def begin_auth(self, username: str) -> bool:
        c, self.counted = self.counters, True
        c.connections += 1
        c.handshakes += 1
        c.peak = max(c.peak, c.connections)
        await asyncio.sleep(self.delay)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.counters.connections -= self.counted
        self.counted = False

    def session_requested(self) -> asyncssh.SSHServerSession[bytes]:
        return _Session(self.counters)


class _Session(asyncssh.SSHServerSession[bytes]):
    """One channel: REPLY and exit status 0 (after N seconds for `sleep N`)."""

    def __init__(self, counters: Counters) -> None:
        self.counters, self.delay = counters, 0.0
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self.chan, c = chan, self.counters
        c.channels += 1
        c.peak_channels = max(c.peak_channels, c.channels)

    def connection_lost(self, exc: Exception | None) -> None:
        self.counters.channels -= 1
        if self.timer is not None:
            self.timer.cancel()

    def exec_requested(self, command: str) -> bool:
        self.delay = sleeps(command)
        return True

    def eof_received(self) -> bool:
        return True  # the caller's EOF on stdin: keep the channel open for a late answer

    def session_started(self) -> None:
        if self.delay:
            self.timer = asyncio.get_running_loop().call_later(self.delay, self.answer)
        else:
            self.answer()

    def answer(self) -> None:
        self.timer = None
        self.chan.write(REPLY)
        self.chan.exit(0)


async def serve_ssh(keys_dir: Path, count: int, delay: float) -> None:
    """Listen on count loopback addresses from 127.0.0.2; answer stats on stdin."""
    addresses = [ipaddress.IPv4Address("127.0.0.2") + i for i in range(count)]
    if not all(a.is_loopback for a in addresses):
        raise ValueError("the fake SSH server listens on loopback addresses only")
    keys, counters = load_or_create_keys(keys_dir), Counters()
    client = keys.client_key.export_public_key("openssh").decode()
    options = asyncssh.SSHServerConnectionOptions(
        server_host_keys=[keys.host_key],
        authorized_client_keys=asyncssh.import_authorized_keys(client),
        allow_pty=False,
        encoding=None,
        keepalive_interval=0,
    )
    acceptors = [
        await asyncssh.listen(str(a), 0, server_factory=lambda: _Server(counters, delay),
                              options=options, backlog=1024)
        for a in addresses
    ]  # fmt: skip
    endpoints = [(str(a), acc.get_port()) for a, acc in zip(addresses, acceptors, strict=True)]
    print_json({"endpoints": endpoints})
    loop = asyncio.get_running_loop()
    requests = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(requests), sys.stdin)
    while line := await requests.readline():
        print_json(dataclasses.asdict(counters))
        if line.strip() == b"reset":  # zero the counts; the peaks restart from what is open
            c = counters
            c.peak, c.handshakes, c.peak_channels = c.connections, 0, c.channels


class _Echo(exec_pb2_grpc.ExecServiceServicer):
    """Execute answers what the protocol-only SSH host would, without SSH."""

    async def Execute(self, request: exec_pb2.ExecuteRequest, context: Any) -> Any:
        if delay := sleeps(request.command):
            await asyncio.sleep(delay)
        return exec_pb2.ExecuteResponse(stdout=REPLY, exit_code=0, stdout_bytes=len(REPLY))


async def serve_grpc(limit: int = 0) -> None:
    """Serve on 127.0.0.1:0 until SIGTERM; at most `limit` calls at once (0: no limit)."""
    options = [*GRPC_OPTIONS, ("grpc.so_reuseport", 0)]
    server = grpc.aio.server(options=options, maximum_concurrent_rpcs=limit or None)
    exec_pb2_grpc.add_ExecServiceServicer_to_server(_Echo(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print_json({"endpoints": [("127.0.0.1", port)]})
    try:
        await asyncio.Event().wait()
    finally:
        await server.stop(1.0)


async def main(kind: str, *args: str) -> None:
    """Run one fake until SIGTERM."""
    fake = asyncio.ensure_future(
        serve_ssh(Path(args[0]), int(args[1]), float(args[2]) / 1000)
        if kind == "ssh"
        else serve_grpc(int(args[0]) if args else 0)
    )
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, fake.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await fake


if __name__ == "__main__":
    keep_freed_memory()  # the gRPC floor runs as scout's server does
    asyncio.run(main(*sys.argv[1:]))
