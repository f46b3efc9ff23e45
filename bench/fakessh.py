"""A protocol-only SSH server: real SSH (kex, keys, channels), but `exec` spawns nothing.

It answers every command with REPLY and exit status 0, so a benchmark against it measures
what the SSH client side costs (scout, or a baseline), not fork and exec. It listens on
many loopback addresses (127.0.0.2, 127.0.0.3, ...), one per "host", each on its own
port, all in this one process. A delay before authentication stands in for network and
server latency on connect, as the seed document models it.

The control user (`query()`) skips the delay and is not counted; its command `__stats__`
answers the counters as JSON, and `__stats__ reset` also zeroes them. Run it as
`python -m bench.fakessh KEYS_DIR COUNT DELAY_MS` (KEYS_DIR as server.keyfiles lays it
out); it prints one JSON line with its endpoints when ready.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from server.keyfiles import load_or_create_keys

from .procs import print_json

REPLY = b"ok\n"
CONTROL_USER = "__control__"


@dataclass
class Counters:
    """What the server saw; `peak` is the most connections open at once, `peak_channels`
    the most channels (commands) open at once."""

    connections: int = 0
    peak: int = 0
    handshakes: int = 0
    ciphers: dict[str, int] = field(default_factory=dict)  # handshakes by negotiated cipher
    channels: int = 0
    peak_channels: int = 0

    def reset(self) -> None:
        """Zero the counts; the peaks restart from what is open now."""
        self.peak, self.handshakes, self.ciphers = self.connections, 0, {}
        self.peak_channels = self.channels


class _Server(asyncssh.SSHServer):
    """One SSH connection: delayed auth, counted unless it is the control user."""

    def __init__(self, counters: Counters, delay: float) -> None:
        self.counters = counters
        self.delay = delay
        self.counted = False
        self.control = False  # the control user: asks for the counters, is not counted
        self.conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn

    async def begin_auth(self, username: str) -> bool:
        """Count the connection, wait the injected delay, then ask for the key."""
        if username == CONTROL_USER:
            self.control = True
            return False
        c = self.counters
        self.counted = True
        c.connections += 1
        c.handshakes += 1
        c.peak = max(c.peak, c.connections)
        cipher = str(self.conn.get_extra_info("recv_cipher")) if self.conn else "?"
        c.ciphers[cipher] = c.ciphers.get(cipher, 0) + 1
        await asyncio.sleep(self.delay)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.counted:
            self.counted = False
            self.counters.connections -= 1

    def session_requested(self) -> asyncssh.SSHServerSession[bytes]:
        return _Session(self)


class _Session(asyncssh.SSHServerSession[bytes]):
    """One channel: answer the command from memory."""

    def __init__(self, server: _Server) -> None:
        self.server = server
        self.command = ""
        self.counted = server.counted  # the control user's channels are not

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self.chan = chan
        c = self.server.counters
        c.channels += self.counted
        c.peak_channels = max(c.peak_channels, c.channels)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.counters.channels -= self.counted

    def exec_requested(self, command: str) -> bool:
        self.command = command
        return True

    def session_started(self) -> None:
        counters = self.server.counters
        if self.server.control and self.command.startswith("__stats__"):
            self.chan.write(json.dumps(dataclasses.asdict(counters)).encode() + b"\n")
            if self.command == "__stats__ reset":
                counters.reset()
        else:
            self.chan.write(REPLY)
        self.chan.exit(0)


async def serve(keys_dir: Path, count: int, delay: float) -> None:
    """Listen on count loopback addresses from 127.0.0.2; print them; run until SIGTERM."""
    addresses = [ipaddress.IPv4Address("127.0.0.2") + i for i in range(count)]
    if not all(a.is_loopback for a in addresses):
        raise ValueError("the fake SSH server listens on loopback addresses only")
    keys = load_or_create_keys(keys_dir)
    client = keys.client_key.export_public_key("openssh").decode()
    counters = Counters()
    options = asyncssh.SSHServerConnectionOptions(
        server_host_keys=[keys.host_key],
        authorized_client_keys=asyncssh.import_authorized_keys(client),
        allow_pty=False,
        encoding=None,
        keepalive_interval=0,
    )
    acceptors = [
        await asyncssh.listen(
            str(a),
            0,
            server_factory=lambda: _Server(counters, delay),
            options=options,
            backlog=1024,
        )
        for a in addresses
    ]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    endpoints = [(str(a), acc.get_port()) for a, acc in zip(addresses, acceptors, strict=True)]
    print_json({"endpoints": endpoints})
    await stop.wait()
    for acceptor in acceptors:
        acceptor.close()


async def query(host: str, port: int, known_hosts: Path, *, reset: bool = False) -> Counters:
    """Ask a running fake server for its counters (and optionally zero them)."""
    async with asyncssh.connect(
        host,
        port,
        username=CONTROL_USER,
        known_hosts=str(known_hosts),
        client_keys=None,
        agent_path=None,
        config=None,
    ) as conn:
        result = await conn.run("__stats__ reset" if reset else "__stats__", check=True)
    return Counters(**json.loads(str(result.stdout)))


if __name__ == "__main__":
    keys_dir, count, delay_ms = sys.argv[1:]
    asyncio.run(serve(Path(keys_dir), int(count), float(delay_ms) / 1000))
