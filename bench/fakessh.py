"""A protocol-only SSH server: real SSH (kex, keys, channels), but `exec` spawns nothing.

It answers every command with a fixed reply and exit status 0, so a benchmark against it
measures what the SSH client side costs (scout, or a baseline), not fork and exec. It
listens on many loopback addresses (127.0.0.2, 127.0.0.3, ...), one per "host", each on
its own port, all in this one process. A configurable delay before authentication stands
in for network and server latency on connect, as the seed document models it.

Commands it understands:

    stream N      write N bytes of zeros (flow-controlled), then exit 0
    __stats__     (as user __control__) JSON counters; `__stats__ reset` also zeroes them
    anything else write REPLY, exit 0

The control user skips the delay and is not counted, so asking for the counters does not
change them. Run it as `python -m bench.fakessh ...`; it prints one JSON line when ready.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from .procs import print_ready

REPLY = b"ok\n"
CONTROL_USER = "__control__"
_CHUNK = bytes(256 * 1024)
_HIGH_WATER = 1024 * 1024


@dataclass
class Counters:
    """What the server saw; `peak` is the most connections open at once."""

    connections: int = 0
    peak: int = 0
    handshakes: int = 0
    execs: int = 0
    ciphers: dict[str, int] = field(default_factory=dict)  # handshakes by negotiated cipher

    def reset(self) -> None:
        """Zero the counts; the peak restarts from what is open now."""
        self.peak = self.connections
        self.handshakes = 0
        self.execs = 0
        self.ciphers = {}


class _Session(asyncssh.SSHServerSession[bytes]):
    """One channel: answer the command from memory."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._command = ""
        self._resumed = asyncio.Event()
        self._resumed.set()

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan

    def exec_requested(self, command: str) -> bool:
        self._command = command
        return True

    def session_started(self) -> None:
        chan = self._chan
        assert chan is not None
        words = self._command.split()
        counters = self._server.counters
        if self._server.control and words[:1] == ["__stats__"]:
            chan.write(json.dumps(asdict(counters)).encode() + b"\n")
            if words[1:] == ["reset"]:
                counters.reset()
            chan.exit(0)
            return
        counters.execs += 1
        if len(words) == 2 and words[0] == "stream" and words[1].isdigit():
            chan.set_write_buffer_limits(_HIGH_WATER, 0)
            task = asyncio.get_running_loop().create_task(self._stream(chan, int(words[1])))
            self._server.tasks.add(task)
            task.add_done_callback(self._server.tasks.discard)
            return
        chan.write(REPLY)
        chan.exit(0)

    async def _stream(self, chan: asyncssh.SSHServerChannel[bytes], size: int) -> None:
        """Write size bytes as fast as the client's window allows; exit once all is sent."""
        with contextlib.suppress(OSError, asyncssh.Error):
            left = size
            while left > 0:
                await self._resumed.wait()
                n = min(left, len(_CHUNK))
                chan.write(_CHUNK if n == len(_CHUNK) else _CHUNK[:n])
                left -= n
            if chan.get_write_buffer_size() > 0:  # exit-status must follow the data:
                chan.set_write_buffer_limits(0, 0)  # pause now, resume once all is sent
                await self._resumed.wait()
            chan.exit(0)

    def eof_received(self) -> bool:
        """Keep sending after the client's EOF on stdin, as a real command does."""
        return True

    def pause_writing(self) -> None:
        self._resumed.clear()

    def resume_writing(self) -> None:
        self._resumed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._resumed.set()


class _Server(asyncssh.SSHServer):
    """One SSH connection: delayed auth, counted unless it is the control user."""

    def __init__(self, counters: Counters, delay: float, tasks: set[asyncio.Task[None]]) -> None:
        self.counters = counters
        self.tasks = tasks
        self._delay = delay
        self.control = False
        self._counted = False
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn

    async def begin_auth(self, username: str) -> bool:
        """Count the connection, wait the injected delay, then ask for the key."""
        if username == CONTROL_USER:
            self.control = True
            return False
        self._counted = True
        c = self.counters
        c.connections += 1
        c.handshakes += 1
        c.peak = max(c.peak, c.connections)
        if self._conn is not None:
            cipher = str(self._conn.get_extra_info("recv_cipher"))
            c.ciphers[cipher] = c.ciphers.get(cipher, 0) + 1
        if self._delay > 0:
            await asyncio.sleep(self._delay)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self._counted = False
            self.counters.connections -= 1

    def session_requested(self) -> asyncssh.SSHServerSession[bytes]:
        return _Session(self)


def addresses(base: str, count: int) -> list[str]:
    """count consecutive loopback addresses from base (127.0.0.2, 127.0.0.3, ...)."""
    first = ipaddress.IPv4Address(base)
    out = [str(first + i) for i in range(count)]
    if not all(ipaddress.IPv4Address(a).is_loopback for a in out):
        raise ValueError("the fake SSH server listens on loopback addresses only")
    return out


async def serve(base: str, count: int, delay: float, host_key: Path, authorized: Path) -> None:
    """Listen on count addresses; print the endpoints; run until SIGTERM."""
    counters = Counters()
    tasks: set[asyncio.Task[None]] = set()
    options = asyncssh.SSHServerConnectionOptions(
        server_host_keys=[str(host_key)],
        authorized_client_keys=str(authorized),
        allow_pty=False,
        line_editor=False,
        encoding=None,
        agent_forwarding=False,
        x11_forwarding=False,
        keepalive_interval=0,
    )
    acceptors = []
    endpoints: list[tuple[str, int]] = []
    for address in addresses(base, count):
        acceptor = await asyncssh.listen(
            address,
            0,
            server_factory=lambda: _Server(counters, delay, tasks),
            options=options,
            backlog=1024,
        )
        acceptors.append(acceptor)
        endpoints.append((address, acceptor.get_port()))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print_ready(endpoints=endpoints, delay=delay)
    await stop.wait()
    for acceptor in acceptors:
        acceptor.close()


async def query(
    endpoint: tuple[str, int], known_hosts: Path, *, reset: bool = False
) -> dict[str, Any]:
    """Ask a running fake server for its counters (and optionally zero them)."""
    async with asyncssh.connect(
        endpoint[0],
        endpoint[1],
        username=CONTROL_USER,
        known_hosts=str(known_hosts),
        client_keys=None,
        agent_path=None,
        config=None,
    ) as conn:
        result = await conn.run("__stats__ reset" if reset else "__stats__", check=True)
    stdout = result.stdout
    text = stdout.decode() if isinstance(stdout, bytes) else str(stdout)
    value: dict[str, Any] = json.loads(text)
    return value


def main() -> None:
    """`python -m bench.fakessh`: the protocol-only server process."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default="127.0.0.2", help="first loopback address")
    parser.add_argument("--count", type=int, default=1, help="how many addresses (hosts)")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="delay before auth")
    parser.add_argument("--host-key", type=Path, required=True)
    parser.add_argument("--authorized-keys", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(
        serve(args.base, args.count, args.delay_ms / 1000, args.host_key, args.authorized_keys)
    )


if __name__ == "__main__":
    main()
