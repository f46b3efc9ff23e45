"""The things a load generator calls: scout over gRPC, and the SSH baselines.

    scout       Execute or Stream on a scout server (Stream's messages decoded, or with
                op stream_raw only counted), or one ExecuteMany over every host whose
                messages answer the requests, one each
    raw         asyncssh on connections opened before the clock, K per host; worker w
                always on connection w % K (hand-tuned for MaxSessions): the SSH floor
    raw_cold    asyncssh: a host's first request connects, then runs (the cold floor)
    naive       the seed's "current" pool: one connection per host, one global
                asyncio.Lock held across asyncssh.connect(); no bounds
    pssh        parallel-ssh's ParallelSSHClient (libssh2, gevent; the optional bench
                extra), connected before the clock: one run_command over every host, then
                join (PsshCaller; a burst only, synchronous)
    pssh_cold   the same with a new client: the run connects

A call answers an outcome (OK, a gRPC status code, an exception class, EXIT_NONZERO) and
the output bytes; the raw clients run at most `parallel` requests at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import asyncssh
import grpc
from google.rpc import code_pb2

from scout.v1 import exec_pb2, exec_pb2_grpc

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
    return asyncssh.SSHClientConnectionOptions(
        encryption_algs=list(auth.ciphers),
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


class _Caller:
    """One backend: setup() before the clock, call(worker, host) per request (the outcome
    and output bytes of one request on hosts[host]), close() after."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec, self.hosts = spec, spec.hosts

    def cipher(self) -> str:
        """The SSH cipher this client negotiated ("" when it does no SSH)."""
        return ""


class ScoutCaller(_Caller):
    """Execute (or Stream) through a scout server, worker w on channel w % channels (each
    its own TCP connection: SO_REUSEPORT spreads connections, not calls, over processes)."""

    async def setup(self) -> None:
        options = [*GRPC_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
        self._channels = [grpc.aio.insecure_channel(self.spec.target, options=options)
                          for _ in range(self.spec.channels)]  # fmt: skip
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in self._channels)), 30)
        self._stubs = [exec_pb2_grpc.ExecServiceStub(c) for c in self._channels]
        self._stub, loop = self._stubs[0], asyncio.get_running_loop()
        self._many: asyncio.Task[None] | None = None
        self._answers = {h.name: loop.create_future() for h in self.hosts}
        self._keys, self._prefix = 0, uuid.uuid4().hex  # keyed: a new key per request

    async def call(self, worker: int, host: int) -> tuple[str, int]:
        request = exec_pb2.ExecuteRequest(host=self.hosts[host].name, command=self.spec.command)
        if self.spec.keyed:
            self._keys += 1
            request.idempotency_key = f"{self._prefix}-{self._keys}"
        if self.spec.op == "many":
            self._many = self._many or asyncio.create_task(self._execute_many())
            news: exec_pb2.ExecuteManyResponse = await self._answers[request.host]
            if news.HasField("error"):
                return code_pb2.Code.Name(news.error.code), 0
            return (OK if news.result.exit_code == 0 else EXIT_NONZERO), len(news.result.stdout)
        if self.spec.op not in ("stream", "stream_raw"):
            stub = self._stubs[worker % len(self._stubs)]
            response = await stub.Execute(request, timeout=self.spec.timeout)
            return (OK if response.exit_code == 0 else EXIT_NONZERO), len(response.stdout)
        nbytes, code = 0, EXIT_NONZERO
        start = [exec_pb2.StreamRequest(start=request)]
        if self.spec.op == "stream_raw":
            return await self._stream_raw(start)
        async for msg in self._stub.Stream(iter(start), timeout=self.spec.timeout):
            nbytes += len(msg.stdout)
            if msg.HasField("exit"):
                code = OK if msg.exit.exit_code == 0 else EXIT_NONZERO
        return code, nbytes

    async def _stream_raw(self, start: list[exec_pb2.StreamRequest]) -> tuple[str, int]:
        """Stream, read as a byte-counting reader would (raw asyncssh's reader only counts):
        each message's bytes are received but not decoded; a stdout chunk's size is read
        from its header (field 1, a length), any other message is decoded."""
        call = self._channels[0].stream_stream(
            "/scout.v1.ExecService/Stream",
            request_serializer=exec_pb2.StreamRequest.SerializeToString,
            response_deserializer=None,
        )
        nbytes, code = 0, EXIT_NONZERO
        async for raw in call(iter(start), timeout=self.spec.timeout):
            if raw[:1] == b"\x0a":  # stdout = 1, length-delimited: a varint length follows
                size = shift = 0
                for at in range(1, 11):
                    size |= (raw[at] & 0x7F) << shift
                    shift += 7
                    if raw[at] < 0x80:
                        break
                nbytes += size
                continue
            msg = exec_pb2.StreamResponse.FromString(raw)
            nbytes += len(msg.stdout)
            if msg.HasField("exit"):
                code = OK if msg.exit.exit_code == 0 else EXIT_NONZERO
        return code, nbytes

    async def _execute_many(self) -> None:
        """One ExecuteMany over every host; each message answers that host's request."""
        command, hosts = (
            exec_pb2.ExecuteRequest(command=self.spec.command),
            [h.name for h in self.hosts],
        )
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
        await asyncio.gather(*(c.close() for c in self._channels))


class RawCaller(_Caller):
    """asyncssh with no pool: K connections per host opened in setup (raw), or one opened
    by the host's first request (raw_cold; naive: under the global lock, held across the
    connect, and taken for every lookup; with prewarm, every host connected in setup)."""

    async def setup(self) -> None:
        assert self.spec.auth is not None
        self._options, spec = options(self.spec.auth), self.spec
        gate = asyncio.Semaphore(_CONNECT_PARALLEL)

        async def one(h: Host) -> asyncssh.SSHClientConnection:
            async with gate:
                return await asyncssh.connect(h.address, h.port, options=self._options)

        k = spec.per_host if spec.backend == "raw" else int(spec.prewarm)
        flat = await asyncio.gather(*(one(h) for h in self.hosts for _ in range(k)))
        self._conns = [flat[i * k : (i + 1) * k] for i in range(len(self.hosts))]
        free: contextlib.AbstractAsyncContextManager[None] = contextlib.nullcontext()
        self._gate = asyncio.Semaphore(spec.parallel) if spec.parallel else free
        self._lock = asyncio.Lock() if spec.backend == "naive" else free

    async def call(self, worker: int, host: int) -> tuple[str, int]:
        async with self._gate:
            async with self._lock:
                if not (conns := self._conns[host]):
                    h = self.hosts[host]
                    conns.append(await asyncssh.connect(h.address, h.port, options=self._options))
            return await run_raw(conns[worker % len(conns)], self.spec.command)

    def cipher(self) -> str:
        conns = [c for per_host in self._conns for c in per_host]
        return str(conns[0].get_extra_info("send_cipher")) if conns else ""

    async def close(self) -> None:
        for conn in (flat := [c for per_host in self._conns for c in per_host]):
            conn.close()
        await asyncio.gather(*(c.wait_closed() for c in flat), return_exceptions=True)


class PsshCaller:
    """parallel-ssh as its users run it: `ParallelSSHClient(hosts, pool_size=parallel)`,
    `run_command`, `join`, then each host's output and exit code. Its pool bounds the
    hosts connecting or starting their command at once (not the commands running).
    It offers the spec's ciphers that libssh2 has, in their order (scout's by default:
    libssh2 alone would pick chacha20-poly1305), through each session's method_pref:
    parallel-ssh has no option for it. It checks no host key (no known_hosts lookup)."""

    def __init__(self, spec: LoadSpec) -> None:
        from pssh.clients import ParallelSSHClient  # the bench extra; imports gevent
        from pssh.clients.native import single
        from pssh.config import HostConfig
        from ssh2.session import LIBSSH2_METHOD_CRYPT_CS, LIBSSH2_METHOD_CRYPT_SC, Session

        assert spec.auth is not None
        self.spec, auth = spec, spec.auth
        offered = ",".join(c for c in auth.ciphers if c in Session().supported_algs(
            LIBSSH2_METHOD_CRYPT_CS))  # fmt: skip

        def session() -> Session:
            made = Session()
            for way in (LIBSSH2_METHOD_CRYPT_CS, LIBSSH2_METHOD_CRYPT_SC):
                made.method_pref(way, offered)
            return made

        single.Session = session  # what SSHClient._init_session calls
        self.client = ParallelSSHClient(
            [h.address for h in spec.hosts], user=auth.user, pkey=auth.client_key,
            host_config=[HostConfig(port=h.port) for h in spec.hosts],
            pool_size=spec.parallel or len(spec.hosts), allow_agent=False,
            identity_auth=False, num_retries=1, timeout=spec.timeout,
        )  # fmt: skip

    def setup(self) -> None:
        """Warm (pssh): every host connected and authenticated, before the clock."""
        if self.spec.backend == "pssh":
            import gevent

            gevent.joinall(self.client.connect_auth(), raise_error=True)

    def burst(self) -> list[tuple[str, int]]:
        """The command on every host; each host's outcome and output bytes, in order."""
        output = self.client.run_command(self.spec.command, stop_on_errors=False)
        self.client.join(output)
        outcomes = []
        for host in output:
            if host.exception is not None:
                outcomes.append((type(host.exception).__name__, 0))
                continue
            nbytes = sum(len(line) + 1 for line in host.stdout)
            outcomes.append((OK if host.exit_code == 0 else EXIT_NONZERO, nbytes))
        return outcomes

    def cipher(self) -> str:
        """The cipher the first connected host's session negotiated."""
        from ssh2.session import LIBSSH2_METHOD_CRYPT_CS

        clients = [c for c in self.client._host_clients.values() if c and c.session]
        return str(clients[0].session.methods(LIBSSH2_METHOD_CRYPT_CS)) if clients else ""

    def close(self) -> None:
        """Disconnect every host (the fake SSH server counts what is still connected):
        what the clients' own __del__ does (their disconnect() is a deprecated no-op)."""
        for client in self.client._host_clients.values():
            if client is not None:
                client._disconnect()


Caller = ScoutCaller | RawCaller


def make_caller(spec: LoadSpec) -> Caller:
    """The caller a load generator spec asks for."""
    return (ScoutCaller if spec.backend == "scout" else RawCaller)(spec)
