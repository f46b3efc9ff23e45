"""A fan-out split by host, for clients behind a routing proxy: `Client(split_fan_out=True)`.

A proxy in front of several scout replicas routes each call by its `x-scout-host`
header (deploy/nginx, deploy/envoy), so each host's warm SSH connection lives on one
replica. One ExecuteMany is one call: it lands on one replica (the first literal host's,
or any for a glob or a selector), which then connects to every target, a handshake each
for hosts whose connections live elsewhere, held there until `idle_timeout`. Split, the
fan-out is one call per host with that host's header, so every command runs where its
host's connection already is:

    targets     the literal names as given, then the names ListHosts gives for the
                globs and the selector (one call to any replica: they share one
                inventory), each once, less the exclusions' hosts (`!web3`)
    each host   Execute; with stream_output, Stream with EOF in its start message;
                at most max_parallel at once (0: DEFAULT_PARALLEL, the server's
                default), started in target order; after max_failures failed hosts,
                the rest end ABORTED, not started (the server's words)
    events      those of ExecuteManyCall: a Result, a ScoutError value (the class
                Execute raised for that host), HostOutput chunks before a Result
    the call    raises only as a whole: no target asked for, targets matching
                nothing, ListHosts failing, or its own deadline (rpc_timeout)

What differs from one ExecuteMany (README, "Replicas behind a proxy"): N calls, not one
(a fraction of a millisecond of gRPC each, against an SSH handshake saved per host that
lives elsewhere); the server's fan-out bounds (`[fanout] max_parallel`, `max_targets`)
are replaced by this client's; a caller's policy is checked per call, so stream_output
needs `stream = true`; a Stream without `timeout` gets the server's
`stream_default_timeout`. (Globs and selectors pick among the hosts the caller may use
either way: ExecuteMany expands them as ListHosts does.)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterator

import grpc

from scout.v1 import exec_pb2

from .calls import ExecuteManyCall, StreamCall, _exec_stub
from .errors import (
    HostNotFound,
    InvalidRequest,
    ScoutError,
    from_host_status,
    from_rpc_error,
)
from .fleet import HostEvent, HostOutput, excluded, is_exclusion, is_pattern
from .results import Exit, Lost, Result, Stderr, Stdout, result_from_response
from .retry import KEY_PATTERN

__all__ = ["DEFAULT_PARALLEL", "SplitExecuteManyCall"]

DEFAULT_PARALLEL = 32  # hosts at once when the call sets none: the server's default too
QUEUED_EVENTS = 64  # events waiting for the reader; then the hosts' calls wait (and pause)


class _End:
    """Put on the queue after every host's last event."""


class SplitExecuteManyCall(ExecuteManyCall):
    """One fan-out as one call per host; iterate it as an ExecuteManyCall.

    Nothing is sent until the first iteration. The call's metadata (the credentials)
    goes on ListHosts; each host's call carries its own x-scout-host. Leaving `async
    with`, cancel(), the call's deadline or its garbage collection cancel every host's
    call, so the replicas stop what still runs.
    """

    # set at the first iteration, when the host calls start
    _events: asyncio.Queue[HostEvent | _End]
    _runner: asyncio.Task[None] | None = None
    _ended = False
    _failures = 0  # hosts failed so far, against the request's max_failures

    def __repr__(self) -> str:
        """Show the targets and how far the call got, for logs."""
        state = "not started"
        if self._runner is not None:
            state = "done" if self._ended or self._runner.done() else "running"
        return f"<SplitExecuteManyCall {self._targets_text()} {state}>"

    def __del__(self) -> None:
        """A call dropped before its end takes its host calls with it."""
        with contextlib.suppress(RuntimeError):  # its loop may be closed by now
            self.cancel()

    def cancel(self) -> None:
        """Cancel every host's call: running commands are stopped, and no new one starts."""
        if self._runner is not None and not self._runner.done():
            self._cancelled = True
            self._runner.cancel()

    async def __anext__(self) -> HostEvent:
        """Read the next Result, host ScoutError or HostOutput; the call's failure raises."""
        if self._runner is None:
            self._events = asyncio.Queue(QUEUED_EVENTS)
            self._runner = asyncio.ensure_future(self._run())
        while not self._ended:
            if not self._events.empty():
                return self._take(self._events.get_nowait())
            if self._runner.done():
                self._ended = True
                if self._runner.cancelled():
                    raise _failure(grpc.StatusCode.CANCELLED, "fan-out cancelled")
                error = self._runner.exception()
                assert error is not None  # a runner that ends well queues _End first
                raise error
            getter = asyncio.ensure_future(self._events.get())
            try:
                await asyncio.wait({getter, self._runner}, return_when="FIRST_COMPLETED")
            finally:
                getter.cancel()  # an item it had not taken stays in the queue
            if getter.done() and not getter.cancelled():
                return self._take(getter.result())
        raise StopAsyncIteration

    def _take(self, event: HostEvent | _End) -> HostEvent:
        """Return a host's event; the end marker ends the iteration."""
        if isinstance(event, _End):
            self._ended = True
            raise StopAsyncIteration
        return event

    async def _run(self) -> None:
        """Resolve the targets and run every host, max_parallel at once, within the
        call's deadline; then put _End. Past the deadline every host call is cancelled
        and the call fails as ExecuteMany's would, with DEADLINE_EXCEEDED."""
        loop = asyncio.get_running_loop()
        ends_at = None if self._deadline is None else loop.time() + self._deadline
        try:
            async with asyncio.timeout_at(ends_at):
                await self._client._connected()  # no server: Unreachable for the whole call
                targets = iter(await self._targets())
                parallel = self._request.max_parallel or DEFAULT_PARALLEL
                workers = [asyncio.ensure_future(self._work(targets)) for _ in range(parallel)]
                try:
                    await asyncio.gather(*workers)
                finally:
                    for worker in workers:
                        worker.cancel()
                    await asyncio.gather(*workers, return_exceptions=True)
        except TimeoutError:
            raise _failure(grpc.StatusCode.DEADLINE_EXCEEDED, "fan-out deadline exceeded") from None
        await self._events.put(_End())

    async def _targets(self) -> list[str]:
        """The literal names, then what the globs and the selector pick; each once, less
        the exclusions' hosts (ListHosts applies them to what it picks, as ExecuteMany
        does; here to the literal names). Exclusions alone start from every host."""
        hosts, selector = list(self._request.hosts), self._request.selector
        if not hosts and not selector:
            raise InvalidRequest(
                "hosts or selector: at least one target is required", code="INVALID_ARGUMENT"
            )
        names = [name for name in hosts if not is_pattern(name) and not excluded(name, hosts)]
        patterns = [name for name in hosts if is_pattern(name)]
        including = [name for name in hosts if not is_exclusion(name)]
        globs = [name for name in including if is_pattern(name)]
        if selector or globs or not including:
            listed = await self._client.list_hosts(selector, patterns)
            names += [host.name for host in listed]
        targets = list(dict.fromkeys(names))
        if not targets:
            raise HostNotFound(
                "no host in the inventory matches the hosts and selector", code="NOT_FOUND"
            )
        return targets

    async def _work(self, targets: Iterator[str]) -> None:
        """Take the next target (workers share the iterator) until none is left; after
        max_failures failed hosts, each one left ends not started, as ExecuteMany's do."""
        limit = self._request.max_failures
        for host in targets:
            if limit and self._failures >= limit:
                text = f"not started: {self._failures} failures (max_failures {limit})"
                code = grpc.StatusCode.ABORTED.value[0]
                await self._events.put(from_host_status(code, text, host, started=False))
                continue
            await self._host(host)

    async def _put(self, event: HostEvent) -> None:
        """Queue a host's event, counting the failed outcomes (ScoutError, or a Result
        that is not ok) against max_failures."""
        if isinstance(event, ScoutError) or (isinstance(event, Result) and not event.ok):
            self._failures += 1
        await self._events.put(event)

    async def _host(self, host: str) -> None:
        """Run the command on one host through the proxy; queue its events."""
        request = exec_pb2.ExecuteRequest()
        request.CopyFrom(self._request.request)
        request.host = host
        if request.idempotency_key:
            # ExecuteMany's KEY/HOST, spelled with a character one call's key may hold
            request.idempotency_key = f"{request.idempotency_key}:{host}"
            if not KEY_PATTERN.fullmatch(request.idempotency_key):
                text = (
                    f"idempotency_key {request.idempotency_key!r} (the key and the host) is "
                    "not 1-128 of A-Z a-z 0-9 . _ : -"
                )
                await self._put(InvalidRequest(text, code="INVALID_ARGUMENT", host=host))
                return
        try:
            metadata = self._client._metadata(host)
        except ScoutError as err:  # a name gRPC cannot carry: that host's error
            await self._put(err)
            return
        deadline = None  # as Execute's: the command's timeout plus the client's margin
        if request.HasField("timeout"):
            deadline = request.timeout.ToNanoseconds() / 1e9 + self._client._margin
        if not self._request.stream_output:
            try:
                channel = await self._client._connected(deadline, host)
                response = await _exec_stub(channel).Execute(
                    request, timeout=deadline, metadata=metadata
                )
            except ScoutError as err:  # Unreachable: nothing was sent
                await self._put(err)
                return
            except grpc.RpcError as err:
                await self._put(from_rpc_error(err, host))
                return
            await self._put(result_from_response(response, host))
            return
        request.close_stdin = True  # no stdin: EOF in the start message
        try:
            async with StreamCall(self._client, host, request, deadline, metadata) as call:
                async for event in call:
                    if not isinstance(event, Lost):  # only a re-attach loses output
                        await self._put(_host_event(host, event))
        except ScoutError as err:
            await self._put(err)


def _failure(code: grpc.StatusCode, details: str) -> ScoutError:
    """The call's own failure, mapped as an RPC's would be."""
    return from_rpc_error(grpc.aio.AioRpcError(code, details=details), "")


def _host_event(host: str, event: Stdout | Stderr | Exit) -> HostEvent:
    """A Stream event as the fan-out event ExecuteMany would have sent for it."""
    if isinstance(event, Exit):
        return Result(**dataclasses.asdict(event.status), host=host)
    if isinstance(event, Stdout):
        return HostOutput(host=host, stream="stdout", data=event.data, text=event.text)
    return HostOutput(host=host, stream="stderr", data=event.data, text=event.text)
