"""The things a load generator calls: scout over gRPC, and the SSH baselines.

Each caller runs one request per `call(worker, host)` and answers with an outcome name
("OK", a gRPC status code name, an exception class name, or EXIT_NONZERO) and the number
of output bytes. The baselines run in the load generator's own process: the raw client
is the floor of what SSH costs, with no pool logic and no gRPC hop at all.

    scout       Execute or Stream on a scout server (the system under test), or one
                ExecuteMany over every host whose messages answer the requests, one each
    raw         asyncssh on connections opened before the measurement, K per host;
                worker w always uses connection w % K (hand-tuned for MaxSessions)
    raw_cold    asyncssh: a host's first request connects, then runs (the cold floor);
                like scout's, the connections stay open until the clock has stopped
    naive       the seed's global-lock pool (bench.naive), one connection per host

The raw clients can run at most `parallel` requests at once (an asyncio.Semaphore).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncssh
import grpc
from google.rpc import code_pb2

from scout.v1 import exec_pb2, exec_pb2_grpc

from .naive import GlobalLockPool
from .specs import GRPC_OPTIONS, Auth, Host, LoadSpec

OK = "OK"
EXIT_NONZERO = "EXIT_NONZERO"
_CONNECT_PARALLEL = 16  # the raw client opens its connections this many at a time


def failure(exc: BaseException) -> tuple[str, str]:
    """A short, stable name for a failed request, and what the failure said."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return str(exc.code().name), str(exc.details() or "")[:300]
    return "TIMEOUT" if isinstance(exc, TimeoutError) else type(exc).__name__, str(exc)[:300]


def options(auth: Auth) -> asyncssh.SSHClientConnectionOptions:
    """Client options, built once (key and known_hosts read once)."""
    extra: dict[str, Any] = {"encryption_algs": list(auth.ciphers)} if auth.ciphers else {}
    return asyncssh.SSHClientConnectionOptions(
        **extra,
        username=auth.user,
        client_keys=[asyncssh.read_private_key(auth.client_key)],
        known_hosts=asyncssh.read_known_hosts(auth.known_hosts),
        agent_path=None,
        password=None,
        kbdint_auth=False,
        config=None,
    )


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
    return (OK if chan.get_exit_status() == 0 else EXIT_NONZERO), session.nbytes


class Caller:
    """One backend, driven by a load generator."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.hosts = spec.hosts

    async def setup(self) -> None:
        """Everything before the clock starts (channels, connections)."""

    async def call(self, worker: int, host: int) -> tuple[str, int]:
        """Run one request on hosts[host]; return (outcome, output bytes)."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release everything."""


class ScoutCaller(Caller):
    """Execute (or Stream) through a scout server."""

    async def setup(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.spec.target, options=GRPC_OPTIONS)
        await asyncio.wait_for(self._channel.channel_ready(), 30)
        self._stub = exec_pb2_grpc.ExecServiceStub(self._channel)
        self._many: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        self._answers = {h.name: loop.create_future() for h in self.hosts}

    async def call(self, worker: int, host: int) -> tuple[str, int]:
        request = exec_pb2.ExecuteRequest(host=self.hosts[host].name, command=self.spec.command)
        if self.spec.op == "many":
            self._many = self._many or asyncio.create_task(self._execute_many())
            news: exec_pb2.ExecuteManyResponse = await self._answers[request.host]
            if news.HasField("error"):
                return code_pb2.Code.Name(news.error.code), 0
            return (OK if news.result.exit_code == 0 else EXIT_NONZERO), len(news.result.stdout)
        if self.spec.op != "stream":
            response = await self._stub.Execute(request, timeout=self.spec.timeout)
            return (OK if response.exit_code == 0 else EXIT_NONZERO), len(response.stdout)
        nbytes, code = 0, EXIT_NONZERO
        start = [exec_pb2.StreamRequest(start=request)]
        async for msg in self._stub.Stream(iter(start), timeout=self.spec.timeout):
            nbytes += len(msg.stdout)
            if msg.HasField("exit"):
                code = OK if msg.exit.exit_code == 0 else EXIT_NONZERO
        return code, nbytes

    async def _execute_many(self) -> None:
        """One ExecuteMany over every host; each message answers that host's request."""
        command = exec_pb2.ExecuteRequest(command=self.spec.command)
        hosts = [h.name for h in self.hosts]
        request = exec_pb2.ExecuteManyRequest(
            hosts=hosts, request=command, max_parallel=self.spec.parallel
        )
        try:
            async for msg in self._stub.ExecuteMany(request, timeout=self.spec.timeout):
                self._answers[msg.host].set_result(msg)
        except Exception as exc:  # the requests not answered yet fail with it
            for answer in self._answers.values():
                if not answer.done():
                    answer.set_exception(exc)

    async def close(self) -> None:
        if self._many:
            self._many.cancel()
        await self._channel.close()


class RawCaller(Caller):
    """asyncssh with no pool: K connections per host opened in setup, or (raw_cold) one
    opened by the host's first request."""

    async def setup(self) -> None:
        assert self.spec.auth is not None
        self._options = options(self.spec.auth)
        gate = asyncio.Semaphore(_CONNECT_PARALLEL)

        async def one(h: Host) -> asyncssh.SSHClientConnection:
            async with gate:
                return await asyncssh.connect(h.address, h.port, options=self._options)

        k = 0 if self.spec.backend == "raw_cold" else self.spec.per_host
        flat = await asyncio.gather(*(one(h) for h in self.hosts for _ in range(k)))
        self._conns = [flat[i * k : (i + 1) * k] for i in range(len(self.hosts))]
        p = self.spec.parallel
        self._gate: contextlib.AbstractAsyncContextManager[None] = (
            asyncio.Semaphore(p) if p else contextlib.nullcontext()
        )

    async def call(self, worker: int, host: int) -> tuple[str, int]:
        async with self._gate:
            if not (conns := self._conns[host]):
                h = self.hosts[host]
                conns.append(await asyncssh.connect(h.address, h.port, options=self._options))
            return await run_raw(conns[worker % len(conns)], self.spec.command)

    async def close(self) -> None:
        await close_all([c for conns in self._conns for c in conns])


class NaiveCaller(Caller):
    """The seed's global-lock pool; with prewarm, every host connected before the clock."""

    async def setup(self) -> None:
        assert self.spec.auth is not None
        opts = options(self.spec.auth)
        by_name = {h.name: h for h in self.hosts}

        async def connect(name: str) -> asyncssh.SSHClientConnection:
            h = by_name[name]
            return await asyncssh.connect(h.address, h.port, options=opts)

        self.pool = GlobalLockPool(connect)
        for h in self.hosts if self.spec.prewarm else ():
            await self.pool.get_connection(h.name)

    async def call(self, worker: int, host: int) -> tuple[str, int]:
        conn = await self.pool.get_connection(self.hosts[host].name)
        return await run_raw(conn, self.spec.command)

    async def close(self) -> None:
        await close_all(self.pool.connections())


async def close_all(conns: list[asyncssh.SSHClientConnection]) -> None:
    """Close connections and wait for all of them at once."""
    for conn in conns:
        conn.close()
    await asyncio.gather(*(c.wait_closed() for c in conns), return_exceptions=True)


def make_caller(spec: LoadSpec) -> Caller:
    """The caller a load generator spec asks for."""
    kinds = {"scout": ScoutCaller, "raw": RawCaller, "raw_cold": RawCaller, "naive": NaiveCaller}
    return kinds[spec.backend](spec)
