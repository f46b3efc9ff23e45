"""The things a load generator calls: scout over gRPC, and the SSH baselines.

Each caller runs one request per `call(worker, host)` and answers with an outcome name
("OK", a gRPC status code name, an exception class name, or EXIT_NONZERO) and the number
of output bytes. The baselines run in the load generator's own process: the raw client
is the floor of what SSH costs, with no pool logic and no gRPC hop at all.

    scout       Execute or Stream on a scout server (the system under test)
    raw         asyncssh on connections opened before the measurement, K per host;
                worker w always uses connection w % K (hand-tuned for MaxSessions)
    raw_cold    asyncssh connect, run, close, for every request (the cold floor)
    naive       the seed's global-lock pool (bench.naive), one connection per host
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import asyncssh
import grpc

from scout.v1 import exec_pb2, exec_pb2_grpc

from .naive import GlobalLockPool

OK = "OK"
EXIT_NONZERO = "EXIT_NONZERO"
_CONNECT_PARALLEL = 16  # the raw client opens its connections this many at a time
_GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


@dataclass(frozen=True)
class Host:
    """One SSH endpoint, known to scout by name."""

    name: str
    address: str
    port: int


@dataclass(frozen=True)
class Auth:
    """How the baselines log in: the same user, key and known_hosts as scout."""

    user: str
    client_key: str
    known_hosts: str
    ciphers: tuple[str, ...] = ()  # empty: asyncssh's default preference, as scout's

    def options(self) -> asyncssh.SSHClientConnectionOptions:
        """Client options, built once (key and known_hosts read once)."""
        extra: dict[str, Any] = {"encryption_algs": list(self.ciphers)} if self.ciphers else {}
        return asyncssh.SSHClientConnectionOptions(
            **extra,
            username=self.user,
            client_keys=[asyncssh.read_private_key(self.client_key)],
            known_hosts=asyncssh.read_known_hosts(self.known_hosts),
            agent_path=None,
            password=None,
            kbdint_auth=False,
            config=None,
        )


class Caller(Protocol):
    """One backend, driven by a load generator."""

    async def setup(self) -> None:
        """Everything before the clock starts (channels, connections)."""

    async def call(self, worker: int, host: int) -> tuple[str, int]:
        """Run one request on hosts[host]; return (outcome, output bytes)."""

    async def close(self) -> None:
        """Release everything."""


def error_name(exc: BaseException) -> str:
    """A short, stable name for a failed request."""
    if isinstance(exc, grpc.aio.AioRpcError):
        name: str = exc.code().name
        return name
    if isinstance(exc, TimeoutError):
        return "TIMEOUT"
    return type(exc).__name__


def error_detail(exc: BaseException) -> str:
    """What the failure said, for the first failure of each kind in a run's result."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return str(exc.details() or "")[:300]
    return str(exc)[:300]


class _Sink(asyncssh.SSHClientSession[bytes]):
    """A client session that only counts what it receives: the fastest possible reader."""

    def __init__(self) -> None:
        self.nbytes = 0

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.nbytes += len(data)


async def run_raw(conn: asyncssh.SSHClientConnection, command: str) -> tuple[str, int]:
    """One command on a channel of conn, as cheaply as asyncssh allows."""
    chan, session = await conn.create_session(_Sink, command, encoding=None)
    assert isinstance(session, _Sink)
    await chan.wait_closed()
    status = chan.get_exit_status()
    return (OK if status == 0 else EXIT_NONZERO), session.nbytes


class ScoutCaller:
    """Execute (or Stream) through a scout server."""

    def __init__(
        self, target: str, hosts: list[Host], command: str, timeout: float, op: str
    ) -> None:
        self._target = target
        self._hosts = hosts
        self._command = command
        self._timeout = timeout
        self._op = op
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None

    async def setup(self) -> None:
        self._channel = grpc.aio.insecure_channel(self._target, options=_GRPC_OPTIONS)
        await asyncio.wait_for(self._channel.channel_ready(), 30)
        self._stub = exec_pb2_grpc.ExecServiceStub(self._channel)

    async def call(self, worker: int, host: int) -> tuple[str, int]:
        request = exec_pb2.ExecuteRequest(host=self._hosts[host].name, command=self._command)
        if self._op == "stream":
            return await self._stream(request)
        response = await self._stub.Execute(request, timeout=self._timeout)
        code = OK if response.exit_code == 0 else EXIT_NONZERO
        return code, len(response.stdout)

    async def _stream(self, request: exec_pb2.ExecuteRequest) -> tuple[str, int]:
        def requests() -> Iterator[exec_pb2.StreamRequest]:
            yield exec_pb2.StreamRequest(start=request)

        nbytes, code = 0, EXIT_NONZERO
        async for msg in self._stub.Stream(requests(), timeout=self._timeout):
            event = msg.WhichOneof("event")
            if event == "stdout":
                nbytes += len(msg.stdout)
            elif event == "exit":
                code = OK if msg.exit.exit_code == 0 else EXIT_NONZERO
        return code, nbytes

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()


class RawCaller:
    """asyncssh on connections opened in setup: K per host."""

    def __init__(self, hosts: list[Host], auth: Auth, command: str, per_host: int) -> None:
        self._hosts = hosts
        self._auth = auth
        self._command = command
        self._per_host = per_host
        self._conns: list[list[asyncssh.SSHClientConnection]] = []

    async def setup(self) -> None:
        options = self._auth.options()
        gate = asyncio.Semaphore(_CONNECT_PARALLEL)

        async def one(h: Host) -> asyncssh.SSHClientConnection:
            async with gate:
                return await asyncssh.connect(h.address, h.port, options=options)

        self._conns = [[] for _ in self._hosts]
        tasks = [(i, one(h)) for i, h in enumerate(self._hosts) for _ in range(self._per_host)]
        conns = await asyncio.gather(*(t for _, t in tasks))
        for (i, _), conn in zip(tasks, conns, strict=True):
            self._conns[i].append(conn)

    async def call(self, worker: int, host: int) -> tuple[str, int]:
        conns = self._conns[host]
        return await run_raw(conns[worker % len(conns)], self._command)

    async def close(self) -> None:
        await _close_all([c for per in self._conns for c in per])


class RawColdCaller:
    """A new connection for every request: connect, run, close."""

    def __init__(self, hosts: list[Host], auth: Auth, command: str) -> None:
        self._hosts = hosts
        self._command = command
        self._options = auth.options()

    async def setup(self) -> None:
        return None

    async def call(self, worker: int, host: int) -> tuple[str, int]:
        h = self._hosts[host]
        async with asyncssh.connect(h.address, h.port, options=self._options) as conn:
            return await run_raw(conn, self._command)

    async def close(self) -> None:
        return None


class NaiveCaller:
    """The seed's global-lock pool; with prewarm, every host connected before the clock."""

    def __init__(self, hosts: list[Host], auth: Auth, command: str, prewarm: bool) -> None:
        self._prewarm = prewarm
        self._hosts = hosts
        self._by_name = {h.name: h for h in hosts}
        self._command = command
        self._options = auth.options()
        self.pool = GlobalLockPool(self._connect)

    async def _connect(self, name: str) -> asyncssh.SSHClientConnection:
        h = self._by_name[name]
        return await asyncssh.connect(h.address, h.port, options=self._options)

    async def setup(self) -> None:
        if self._prewarm:
            for h in self._hosts:
                await self.pool.get_connection(h.name)

    async def call(self, worker: int, host: int) -> tuple[str, int]:
        conn = await self.pool.get_connection(self._hosts[host].name)
        return await run_raw(conn, self._command)

    async def close(self) -> None:
        await self.pool.close()


async def _close_all(conns: list[asyncssh.SSHClientConnection]) -> None:
    for conn in conns:
        conn.close()
    await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)


def make_caller(spec: dict[str, Any]) -> Caller:
    """The caller a load generator spec asks for."""
    hosts = [Host(**h) for h in spec["hosts"]]
    backend = spec["backend"]
    command = spec["command"]
    if backend == "scout":
        return ScoutCaller(spec["target"], hosts, command, spec["timeout"], spec.get("op", "exec"))
    auth = Auth(**spec["auth"])
    if backend == "raw":
        return RawCaller(hosts, auth, command, spec.get("per_host", 1))
    if backend == "raw_cold":
        return RawColdCaller(hosts, auth, command)
    if backend == "naive":
        return NaiveCaller(hosts, auth, command, bool(spec.get("prewarm")))
    raise ValueError(f"unknown backend {backend!r}")
