"""The asyncio client: Execute as one awaitable, Stream as an async context manager,
ListHosts as one awaitable, ExecuteMany as an async iterator of host events.

Every call for one host carries the metadata `x-scout-host: HOST`, because
proxies in front of several scout replicas route by it (docs/architecture.md,
"Beyond one process"), and `authorization: Bearer <token>` when the client has a token.
Calls for many hosts carry the header only when their first `hosts` entry is a
name (see `_fan_out_metadata`); `split_fan_out=True` makes a fan-out one call per
host instead (client/splitfanout.py). The call objects it returns live in
client/calls.py. Every gRPC error leaves this module as a `ScoutError` made by
`from_rpc_error`. No request is sent before the channel has a
connection (client/reach.py): one that cannot be sent raises `Unreachable`, and
nothing ran.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from typing import Any, Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scout.v1 import exec_pb2

from . import files
from .calls import ExecuteManyCall, StreamCall, _exec_stub
from .credentials import TLS, bearer_metadata
from .errors import InvalidRequest, from_rpc_error, is_replayed
from .fleet import Host, host_from_message, is_pattern
from .options import ExecOptions, command_or_argv, exec_options
from .reach import ensure_ready
from .results import (
    Result,
    result_from_response,
)
from .retry import RetryPolicy, make_key, with_retries
from .splitfanout import SplitExecuteManyCall

__all__ = ["DEFAULT_TARGET", "Client", "ExecuteManyCall", "StreamCall"]

DEFAULT_TARGET = "127.0.0.1:50051"
HOST_HEADER = "x-scout-host"
# Time past the command's timeout for the server to stop the command and say
# DEADLINE_EXCEEDED itself, instead of the client's deadline cutting it short.
DEFAULT_DEADLINE_MARGIN = 5.0
# How long a call waits for a connection in progress before Unreachable (grpc's own
# connect attempt gives up after 20 s); a shorter call deadline bounds it too.
DEFAULT_CONNECT_TIMEOUT = 20.0
# The server caps output; gRPC's default 4 MiB receive limit would fail a
# legitimate Execute response with both streams near the server's cap.
_DEFAULT_CHANNEL_OPTIONS: dict[str, Any] = {"grpc.max_receive_message_length": -1}


def _host_list(hosts: Sequence[str]) -> list[str]:
    """Copy `hosts`, refusing one string, which would otherwise be read letter by letter."""
    if isinstance(hosts, str):
        raise TypeError(f"hosts is a sequence of names or patterns, not one string: [{hosts!r}]")
    return list(hosts)


class Client:
    """A connection to one scout server (or a proxy in front of several)."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        token: str | None = None,
        tls: TLS | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        deadline_margin: float = DEFAULT_DEADLINE_MARGIN,
        split_fan_out: bool = False,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        retry: RetryPolicy | None = None,
    ) -> None:
        """Check the token and read the TLS files now; the channel opens on first use.

        token: sent on every call as `authorization: Bearer <token>` (plaintext too).
        tls: TLS to the server (None: plaintext, for loopback); its files are read here,
        so a missing one raises OSError at once.
        split_fan_out: run execute_many as one call per host, for a target that is a
        proxy routing by host in front of several replicas (client/splitfanout.py).
        connect_timeout: seconds a call waits for a connection in progress; then it
        raises Unreachable without having sent anything.
        retry: retry execute, stream and execute_many when their fate is unknown (a
        dropped connection, UNAVAILABLE), always with an idempotency key so that nothing
        runs twice: the client makes one for a call that has none. A stream re-attaches
        where it was. See client/retry.py for what is retried and what is final.
        """
        self.target = target
        self._auth = bearer_metadata(token)
        self._credentials = tls.channel_credentials() if tls is not None else None
        self._channel_options = list({**_DEFAULT_CHANNEL_OPTIONS, **dict(channel_options)}.items())
        self._margin = deadline_margin
        self._split_fan_out = split_fan_out
        self._connect_timeout = connect_timeout
        self._retry = retry
        self._channel: grpc.aio.Channel | None = None
        self._closed = False

    def __repr__(self) -> str:
        """Show the target, transport and state for logs; never the token."""
        state = "closed" if self._closed else "open" if self._channel else "idle"
        transport = "tls" if self._credentials is not None else "plaintext"
        auth = " token" if self._auth else ""
        split = " split-fan-out" if self._split_fan_out else ""
        retry = " retry" if self._retry is not None else ""
        return f"<Client target={self.target!r} {transport}{auth}{split}{retry} {state}>"

    @property
    def retry(self) -> RetryPolicy | None:
        """The retry policy calls follow (None: no call is retried)."""
        return self._retry

    def _keyed(self, opts: ExecOptions) -> ExecOptions:
        """The options with the policy's key and detach_grace filled in where the call
        gave none; detach_grace needs a key."""
        policy = self._retry
        changes: dict[str, Any] = {}
        if policy is not None:
            if not opts.idempotency_key:
                changes["idempotency_key"] = make_key()
            if opts.detach_grace is None and policy.detach_grace is not None:
                changes["detach_grace"] = policy.detach_grace
        elif opts.detach_grace is not None and not opts.idempotency_key:
            raise ValueError("detach_grace needs an idempotency_key (or a RetryPolicy)")
        return dataclasses.replace(opts, **changes) if changes else opts

    def _stopped(self) -> bool:
        """Whether close() was called, after which nothing is retried."""
        return self._closed

    @property
    def has_token(self) -> bool:
        """Whether calls carry a bearer token (never the token itself)."""
        return bool(self._auth)

    def _metadata(self, host: str) -> tuple[tuple[str, str], ...]:
        """Build one call's metadata: the routing header, then the credentials."""
        if not all(" " <= ch <= "~" for ch in host):
            # gRPC itself fails obscurely on non-ASCII values; nothing was sent.
            raise InvalidRequest(
                f"host name {host!r} is not printable ASCII", code="INVALID_ARGUMENT", host=host
            )
        return ((HOST_HEADER, host), *self._auth)

    def _fan_out_metadata(self, hosts: Sequence[str]) -> tuple[tuple[str, str], ...]:
        """Metadata for a call about many hosts: route by the first entry if it is a name.

        A glob or a selector names no one host, so the header is left out and a
        routing proxy picks any replica. One ExecuteMany runs on one replica, which
        connects to every target; behind such a proxy, `split_fan_out=True` sends one
        call per host instead (README, "Replicas behind a proxy").
        """
        if hosts and not is_pattern(hosts[0]):
            return self._metadata(hosts[0])
        return self._auth

    async def __aenter__(self) -> Self:
        """Use the client as `async with Client() as c:` so the channel always closes."""
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the channel on the way out."""
        await self.close()

    async def close(self) -> None:
        """Close the channel, cancelling calls still running; the client is unusable after."""
        self._closed = True
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    def _open(self) -> grpc.aio.Channel:
        """Create the channel lazily, so it binds to the loop that uses it."""
        if self._closed:
            raise RuntimeError("this scout client is closed")
        if self._channel is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(
                    self.target, options=self._channel_options
                )
            else:
                self._channel = grpc.aio.secure_channel(
                    self.target, self._credentials, options=self._channel_options
                )
        return self._channel

    async def _connected(self, deadline: float | None = None, host: str = "") -> grpc.aio.Channel:
        """The channel once it has a connection, so that a request that cannot be sent is
        not, and fails as Unreachable (client/reach.py); deadline also bounds the wait."""
        channel = self._open()
        within = self._connect_timeout if deadline is None else min(deadline, self._connect_timeout)
        tls = self._credentials is not None
        await ensure_ready(channel, self.target, within, tls=tls, host=host)
        return channel

    async def execute(
        self,
        /,
        host: str,
        command: str = "",
        options: ExecOptions | None = None,
        *,
        argv: Sequence[str] | None = None,
        **fields: Any,
    ) -> Result:
        """Run a command, wait for it to end, and return its exit status and capped output.

        The command is a shell line, or `argv=[program, arg, ...]` (exactly one of them;
        a caller whose policy lists commands must send argv).
        `fields` are ExecOptions fields by name (`timeout=10`), over `options` if given.
        With `idempotency_key` (or the client's RetryPolicy, which makes one), the
        command runs at most once under the key; `result.replayed` says the outcome was
        recorded by an earlier call with it. With a RetryPolicy, a call whose fate is
        unknown is sent again with the same key (client/retry.py).
        """
        words = command_or_argv(command, argv)
        metadata = self._metadata(host)
        opts = self._keyed(exec_options(options, fields))
        deadline = opts.deadline(self._margin)
        request = opts.request(host, command, words)

        async def attempt() -> Result:
            stub = _exec_stub(await self._connected(deadline, host))
            call = stub.Execute(request, timeout=deadline, metadata=metadata)
            try:
                response = await call
                trailers = await call.trailing_metadata()
            except grpc.RpcError as err:
                raise from_rpc_error(err, host) from err
            return result_from_response(response, host, replayed=is_replayed(trailers))

        if self._retry is None or not request.idempotency_key:  # never twice without a key
            return await attempt()
        return await with_retries(self._retry, attempt, stop=self._stopped)

    def stream(
        self,
        host: str,
        command: str = "",
        options: ExecOptions | None = None,
        *,
        argv: Sequence[str] | None = None,
        **fields: Any,
    ) -> StreamCall:
        """Prepare a streamed command; it starts when entered with `async with`.

        The command is a shell line or `argv=[...]`, as for execute. `fields` are
        ExecOptions fields by name, over `options` if given. close_stdin=True
        sends EOF right after `stdin`, in the start message: use it when there is no more
        input, so that nothing is written after the start.
        """
        words = command_or_argv(command, argv)
        metadata = self._metadata(host)
        opts = self._keyed(exec_options(options, fields))
        return StreamCall(
            self,
            host,
            opts.request(host, command, words),
            opts.deadline(self._margin),
            metadata,
            retry=self._retry,
        )

    def attach(
        self,
        host: str,
        idempotency_key: str,
        *,
        stdout_offset: int = 0,
        stderr_offset: int = 0,
        rpc_timeout: float | None = None,
    ) -> StreamCall:
        """Join the command this caller started on host with that key, running or
        finished: its output from the offsets (the bytes of each stream the caller
        already has; 0: all that the server still keeps), then live, then its Exit.
        Use it as a stream (`async with`, iterate, write, signal). Output the server
        no longer keeps arrives as a `Lost` event, never as a silent gap. KeyNotFound
        when this caller started no command with that key on that host. With a
        RetryPolicy, a dropped connection re-attaches.
        """
        if not idempotency_key:
            raise ValueError("attach needs the idempotency_key the command was started with")
        if stdout_offset < 0 or stderr_offset < 0:
            raise ValueError("offsets are byte counts, >= 0")
        metadata = self._metadata(host)
        attach = exec_pb2.Attach(
            idempotency_key=idempotency_key,
            host=host,
            stdout_offset=stdout_offset,
            stderr_offset=stderr_offset,
        )
        request = exec_pb2.ExecuteRequest(host=host, idempotency_key=idempotency_key)
        return StreamCall(
            self, host, request, rpc_timeout, metadata, retry=self._retry, attach=attach
        )

    async def list_hosts(
        self, selector: str = "", hosts: Sequence[str] = (), *, rpc_timeout: float | None = 10.0
    ) -> list[Host]:
        """List the inventory hosts the selector and host names or globs pick, sorted by name.

        Both empty: every host. A leading `!` excludes (`!web3`, `!web-eu-*`; alone,
        from every host). Each Host carries the pool's view of it now
        (connections open, channels in use). Nothing runs, so errors never may_have_run.
        """
        names = _host_list(hosts)
        metadata = self._fan_out_metadata(names)
        stub = _exec_stub(await self._connected(rpc_timeout))
        request = exec_pb2.ListHostsRequest(selector=selector, hosts=names)
        try:
            response = await stub.ListHosts(request, timeout=rpc_timeout, metadata=metadata)
        except grpc.RpcError as err:
            raise from_rpc_error(err, "", started=False) from err
        return [host_from_message(host) for host in response.hosts]

    def execute_many(
        self,
        /,
        hosts: Sequence[str],
        command: str = "",
        options: ExecOptions | None = None,
        *,
        argv: Sequence[str] | None = None,
        selector: str = "",
        max_parallel: int = 0,
        max_failures: int = 0,
        stream_output: bool = False,
        **fields: Any,
    ) -> ExecuteManyCall:
        """Run one command on many hosts; iterate the call for each host's events as they come.

        Targets are the union of `hosts` (names or globs) and the label `selector`.
        A leading `!` excludes (`!web3`, `!web-eu-*`; alone, from every host).
        `max_parallel` bounds the hosts running at once (0: the server's default);
        after `max_failures` hosts failed (non-zero exit, signal, or an error), no new
        host starts and the rest end with ABORTED, nothing run (0: no limit).
        `fields` are ExecOptions fields by name, over `options` if given; `timeout`
        bounds each host's command, and only `rpc_timeout` bounds the whole call
        (no deadline by default, since hosts may wait their turn). Events: see
        client/fleet.py; with stream_output, HostOutput chunks precede each Result.
        With split_fan_out, one Execute (or Stream) per host, each routed by its host.
        `idempotency_key` K makes each host's key K/HOST (split fan-out: K:HOST, since
        a single call's key has no "/"); with a RetryPolicy a dropped call is sent again
        with it, and hosts already reported are not reported twice.
        The command is a shell line or `argv=[...]`, as for execute.
        """
        words = command_or_argv(command, argv)
        names = _host_list(hosts)
        if max_parallel < 0:
            raise ValueError(f"max_parallel must be >= 0, got {max_parallel!r}")
        if max_failures < 0:
            raise ValueError(f"max_failures must be >= 0, got {max_failures!r}")
        metadata = self._fan_out_metadata(names)
        opts = self._keyed(exec_options(options, fields))
        request = exec_pb2.ExecuteManyRequest(
            hosts=names,
            selector=selector,
            request=opts.request("", command, words),
            max_parallel=max_parallel,
            max_failures=max_failures,
            stream_output=stream_output,
        )
        if self._split_fan_out:
            return SplitExecuteManyCall(self, request, opts.rpc_timeout, self._auth)
        return ExecuteManyCall(self, request, opts.rpc_timeout, metadata, retry=self._retry)

    def _stub(self) -> Any:
        """The ExecService stub on this client's channel."""
        return _exec_stub(self._open())

    async def upload(
        self,
        host: str,
        path: str,
        source: files.Source,
        *,
        mode: int = 0,
        create_only: bool = False,
        size: int | None = None,
        sha256: str | None = None,
        idempotency_key: str = "",
        rpc_timeout: float | None = None,
        progress: files.Progress | None = None,
    ) -> files.Uploaded:
        """Write a file on host: bytes, a local path, a binary file or (async) iterable of
        bytes, sent a chunk at a time. The server writes a temporary file and renames it
        over `path` only when every byte arrived (and matched `size` and `sha256`, which
        bytes sources fill in). `mode` 0 keeps the replaced file's mode (new: 0644);
        `create_only` refuses to replace (AlreadyExists). See client/files.py."""
        start = files.start_message(
            host,
            path,
            source,
            mode=mode,
            create_only=create_only,
            size=size,
            sha256=sha256,
            idempotency_key=idempotency_key,
        )
        return await files.upload(self, start, source, rpc_timeout=rpc_timeout, progress=progress)

    def download(
        self,
        host: str,
        path: str,
        *,
        offset: int = 0,
        length: int = 0,
        rpc_timeout: float | None = None,
        progress: files.Progress | None = None,
    ) -> files.DownloadCall:
        """Read a file (or `length` bytes from `offset`: a resume) from host; iterate the
        call for the chunks, or `await call.to_file(local)`. See client/files.py."""
        self._metadata(host)
        request = exec_pb2.DownloadRequest(host=host, path=path, offset=offset, length=length)
        return files.DownloadCall(self, request, rpc_timeout, progress)

    def upload_many(
        self,
        hosts: Sequence[str],
        path: str,
        source: files.Source,
        *,
        selector: str = "",
        max_parallel: int = 0,
        mode: int = 0,
        create_only: bool = False,
        rpc_timeout: float | None = None,
        progress: files.Progress | None = None,
    ) -> AsyncIterator[files.HostUpload]:
        """Write one file to many hosts (`hosts` names or globs, and `selector`), sent
        once; iterate for each host's outcome as it finishes."""
        start = files.start_message("", path, source, mode=mode, create_only=create_only)
        return files.upload_many(
            self,
            _host_list(hosts),
            start,
            source,
            selector=selector,
            max_parallel=max_parallel,
            rpc_timeout=rpc_timeout,
            progress=progress,
        )

    async def health(self, service: str = "", *, rpc_timeout: float | None = 10.0) -> str:
        """Ask the server's standard health service for a service ("": the server itself).

        Returns the status name, e.g. "SERVING"; a service the server does not know
        is "SERVICE_UNKNOWN" (the health protocol's name for it) rather than an error.
        """
        stub = health_pb2_grpc.HealthStub(await self._connected(rpc_timeout))
        request = health_pb2.HealthCheckRequest(service=service)
        try:
            response = await stub.Check(request, timeout=rpc_timeout, metadata=self._auth)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise from_rpc_error(err, "", started=False) from err
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
