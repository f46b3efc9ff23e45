"""The ExecService servicer: each RPC reads as admit -> run the command -> map the outcome.

The RPC loop (`server.rpc`) wraps each method: limits, identity, error mapping, trailers.
A command's way in and out (pool, channel, stop, release) is `server.launch`; Stream's
machinery is `server.stream`, ExecuteMany's `server.fanout`; files are `server.files`
(Upload, Download) and `server.uploadmany`; output buffering is
`server.output`; the answers are built in `server.responses`.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import uuid
from collections.abc import AsyncIterator, Callable

import asyncssh

from scout.v1 import exec_pb2

from . import targets
from .attach import (
    attach_offsets,
    check_attach,
    elsewhere,
    follow,
    not_found,
    replay_record,
)
from .audit import AuditLog, CallRecord
from .callers import ANONYMOUS, Gate
from .command import CommandSpec, RunningCommand
from .config import CallerConfig, Config, HostConfig
from .durable import Durable, KeyedRun, Owner, OwnerGone
from .durablestore import open_store
from .errors import HostNotFound, PermissionDenied, ScoutError
from .fanout import FanOut
from .files import Files
from .idempotency import check_durable
from .launch import Bounds, Launcher, bounds_for
from .live import LiveConfig
from .outcomes import Outcome
from .output import STDERR, STDOUT, ExecuteOutput, OutputBudget
from .pool import Pool
from .requests import check_execute, timeout_of
from .responses import execute_response
from .rpc import Context, RpcStats, rpc
from .stream import first_message, run_stream
from .uploadmany import UploadFanOut


class ExecService:
    """Execute, Stream, ListHosts, ExecuteMany and the file RPCs over the shared pool."""

    def __init__(
        self,
        live: LiveConfig,
        pool: Pool[asyncssh.SSHClientConnection],
        *,
        launcher: Launcher | None = None,
        output_budget: OutputBudget | None = None,
        gate: Gate | None = None,
        audit: AuditLog | None = None,
        group: str = "",
    ) -> None:
        self.live = live
        config = live.current
        self.pool = pool
        self.launcher = launcher or Launcher(pool, config.pool)
        self.output_budget = output_budget or OutputBudget(config.exec.max_buffered_output_bytes)
        self.rpcs = RpcStats(max_in_flight=config.max_concurrent_rpcs)
        self.gate = gate or Gate(live)
        self.audit = audit or AuditLog(config.audit)
        self.stopping = False  # the server is shutting down: cancelled commands are ABORTED
        self.files = Files(self)
        self.durable = Durable(
            lambda: self.config.durable,
            open_store(config.durable),
            self.launcher,
            Owner(group or uuid.uuid4().hex),  # a group of its own, unless a supervisor's
        )

    @property
    def config(self) -> Config:
        """The config in force (a reload swaps it; a call reads it once per use)."""
        return self.live.current

    def admit(
        self, call: CallRecord, request: exec_pb2.ExecuteRequest, *, stream: bool
    ) -> tuple[HostConfig, CommandSpec]:
        """Policy, then validation, then the audit log's consent: what may run, and where."""
        call.describe(request)
        call.authorized = True
        assert call.who is not None
        self.gate.authorize(call.who, call.method, request)
        try:
            host, spec = check_execute(
                self.config, request, stream=stream, extra_env=self.exported(call)
            )
        except HostNotFound as exc:
            raise HostNotFound(
                exc.message + self._closest(call.who, request.host), exc.host
            ) from None
        check_durable(self.config.durable, request)
        self.audit.ready()
        return host, spec

    def exported(self, call: CallRecord) -> dict[str, str]:
        """scout's own variables for the command: SCOUT_REQUEST_ID when configured."""
        return {"SCOUT_REQUEST_ID": call.request_id} if self.config.exec.export_request_id else {}

    def _closest(self, who: CallerConfig, name: str) -> str:
        """ "; closest: a, b" among the hosts the caller may use, or nothing."""
        usable = [h for h in self.config.hosts if self.gate.may_use(who, h)]
        close = difflib.get_close_matches(name[:255], usable, n=3, cutoff=0.6)
        return f"; closest: {', '.join(close)}" if close else ""

    def bounds(
        self,
        spec: CommandSpec,
        request: exec_pb2.ExecuteRequest,
        rpc_remaining: float | None,
        *,
        stream: bool,
    ) -> Bounds:
        """When the command must end: its own timeout, or sooner for the RPC deadline."""
        timeout, cause = timeout_of(self.config.exec, request, stream=stream)
        return bounds_for(spec, timeout, cause, rpc_remaining)

    def keyed_bounds(
        self,
        spec: CommandSpec,
        request: exec_pb2.ExecuteRequest,
        rpc_remaining: float | None,
        *,
        stream: bool,
    ) -> Callable[[float], Bounds]:
        """A keyed run's bounds for its detach_grace: with one, the run outlives the call,
        so only its own timeout bounds it; without, the call's deadline does too."""

        def bounds(grace: float) -> Bounds:
            remaining = None if grace else rpc_remaining
            return self.bounds(spec, request, remaining, stream=stream)

        return bounds

    async def execute_once(
        self,
        host: HostConfig,
        spec: CommandSpec,
        request: exec_pb2.ExecuteRequest,
        rpc_remaining: float | None,
        call: CallRecord,
    ) -> exec_pb2.ExecuteResponse:
        """Run one command to its end and build Execute's answer (Execute, ExecuteMany)."""
        bounds = self.bounds(spec, request, rpc_remaining, stream=False)
        output = ExecuteOutput(spec.max_output_bytes, self.output_budget, text=request.text)
        try:
            async with self.launcher.run(host, spec, output, bounds, call) as run:
                await run.bounded(_feed_and_wait(run.command))
            return execute_response(run.outcome(), output.stdout, output.stderr, text=request.text)
        finally:
            output.release()

    async def execute_keyed(
        self,
        host: HostConfig,
        spec: CommandSpec,
        request: exec_pb2.ExecuteRequest,
        key: str,
        *,
        rpc_remaining: float | None,
        call: CallRecord,
    ) -> exec_pb2.ExecuteResponse:
        """Execute with an idempotency key: the one run of that key, started or joined,
        or its recorded outcome (Execute, and each host of ExecuteMany)."""

        bounds = self.keyed_bounds(spec, request, rpc_remaining, stream=False)
        found = await self.durable.begin(
            call, host, spec, request, key=key, bounds=bounds, stream=False, inline=True
        )
        if isinstance(found, Outcome):
            if not call.relayed:  # the owner's answer (forwarded) says so itself
                call.replayed = True
            return found.answer(text=request.text)
        if found.inline is not None and found.starter is call:
            return (await self.durable.run_inline(found)).answer(text=request.text)
        self.durable.join(found)
        try:
            outcome = await asyncio.shield(found.done)
        finally:
            self.durable.leave(found)
        call.replayed = found.starter is not call
        return outcome.answer(text=request.text)

    @rpc("Execute")
    async def Execute(
        self, request: exec_pb2.ExecuteRequest, context: Context, call: CallRecord
    ) -> exec_pb2.ExecuteResponse:
        """Run a command, wait for it, return its capped output and exit status."""
        host, spec = self.admit(call, request, stream=False)
        remaining = context.time_remaining()
        if request.idempotency_key:
            key = request.idempotency_key
            return await self.execute_keyed(
                host, spec, request, key, rpc_remaining=remaining, call=call
            )
        return await self.execute_once(host, spec, request, remaining, call)

    @rpc("ListHosts")
    async def ListHosts(
        self, request: exec_pb2.ListHostsRequest, context: Context, call: CallRecord
    ) -> exec_pb2.ListHostsResponse:
        """The hosts picked (all by default) that the caller may use, with the pool's view."""
        call.authorized = True  # a listing is audited like any call
        assert call.who is not None
        who = call.who

        def may_use(name: str) -> bool:
            return self.gate.may_use(who, name)

        hosts = self.config.hosts
        targets.check_patterns(request.hosts, self.config.fanout.max_targets)
        selector = targets.parse_selector(request.selector)
        if request.hosts or selector is not None:
            names, _ = targets.pick(hosts, may_use, request.hosts, selector)
        else:
            names = sorted(name for name in hosts if may_use(name))
        response = exec_pb2.ListHostsResponse()
        for name in names:
            host = hosts[name]
            open_, in_use = self.pool.host_view(name)
            response.hosts.add(
                name=name,
                address=host.address,
                port=host.port,
                user=host.user,
                labels=host.labels,
                via=targets.via(host, may_use),
                connections_open=open_,
                channels_in_use=in_use,
            )
        return response

    @rpc("ExecuteMany")
    async def ExecuteMany(
        self, request: exec_pb2.ExecuteManyRequest, context: Context, call: CallRecord
    ) -> None:
        """Run one command on many hosts; one message per host as each finishes."""
        fan = FanOut(self, request, context, call)
        try:
            hosts = fan.targets()
        except ScoutError:
            call.authorized = True  # a refused fan-out has its line; each host run has its own
            call.describe(request.request)
            raise
        await fan.run(hosts)

    @rpc("Upload")
    async def Upload(
        self, requests: AsyncIterator[exec_pb2.UploadRequest], context: Context, call: CallRecord
    ) -> exec_pb2.UploadResponse:
        """Write a file through a temporary name, renamed over the target at the end."""
        return await self.files.upload_call(requests, context, call)

    @rpc("Download")
    async def Download(
        self, request: exec_pb2.DownloadRequest, context: Context, call: CallRecord
    ) -> None:
        """Send a file (or a range of it), then its size, digest, mode and mtime."""
        await self.files.download_call(request, context, call)

    @rpc("UploadMany")
    async def UploadMany(
        self,
        requests: AsyncIterator[exec_pb2.UploadManyRequest],
        context: Context,
        call: CallRecord,
    ) -> None:
        """Spool one file, write it to many hosts; one message per host as each finishes."""
        await UploadFanOut(self, requests, context, call).run()

    @rpc("Stream")
    async def Stream(
        self,
        requests: AsyncIterator[exec_pb2.StreamRequest],
        context: Context,
        call: CallRecord,
    ) -> None:
        """Run a command, send its output as it comes, pass stdin and signals through; or
        attach to a keyed command (server.attach)."""
        limits = self.config.exec
        first = await first_message(requests, limits.stream_start_timeout)
        if first.WhichOneof("event") == "attach":
            await self.attach(first.attach, requests, context, call)
            return
        start = first.start
        host, spec = self.admit(call, start, stream=True)
        remaining = context.time_remaining()
        if start.idempotency_key:
            await self.stream_keyed(
                host, spec, start, requests=requests, context=context, call=call
            )
            return
        bounds = self.bounds(spec, start, remaining, stream=True)
        await run_stream(
            self.launcher,
            host,
            spec,
            bounds=bounds,
            requests=requests,
            context=context,
            call=call,
            text=start.text,
            limits=limits,
        )

    async def stream_keyed(
        self,
        host: HostConfig,
        spec: CommandSpec,
        start: exec_pb2.ExecuteRequest,
        *,
        requests: AsyncIterator[exec_pb2.StreamRequest],
        context: Context,
        call: CallRecord,
    ) -> None:
        """Stream with an idempotency key: start the run (or join it), read it from 0."""
        rpc_remaining = context.time_remaining()

        bounds = self.keyed_bounds(spec, start, rpc_remaining, stream=True)
        key = start.idempotency_key
        found = await self.durable.begin(
            call, host, spec, start, key=key, bounds=bounds, stream=True
        )
        offsets = {STDOUT: 0, STDERR: 0}
        if isinstance(found, Outcome):
            await replay_record(found, offsets, context, call, text=start.text)
            return
        starter = found.starter is call
        call.replayed = not starter
        await follow(
            self.durable,
            found,
            offsets,
            starter=starter,
            requests=requests,
            context=context,
            call=call,
            text=start.text,
            limits=self.config.exec,
        )

    async def attach(
        self,
        attach: exec_pb2.Attach,
        requests: AsyncIterator[exec_pb2.StreamRequest],
        context: Context,
        call: CallRecord,
    ) -> None:
        """Stream `attach`: this caller's keyed command on that host, running or finished.
        Another caller's key, or a host the caller may no longer use, reads as no key."""
        call.authorized = True
        call.host, call.key = attach.host[:255], attach.idempotency_key[:400]
        check_attach(attach)
        assert call.who is not None
        who, key = call.who, attach.idempotency_key
        if not self.gate.may_use(who, attach.host):
            raise not_found(key)
        if who is not ANONYMOUS and not who.stream:
            raise PermissionDenied(
                f"caller {who.name} may not use Stream (its policy has stream = false)"
            )
        self.audit.ready()
        offsets = attach_offsets(attach)
        found = await self.durable.find(who.name, key)
        if isinstance(found, KeyedRun):
            if found.host.name != attach.host:
                raise not_found(key)
            # the policy in force now must still allow what runs (a reload may narrow it):
            # an attach can write to its stdin and signal it
            self.gate.authorize(who, "Stream", found.request)
            await follow(
                self.durable,
                found,
                offsets,
                starter=False,
                requests=requests,
                context=context,
                call=call,
                text=False,
                limits=self.config.exec,
            )
            return
        if found is None:
            raise not_found(key)
        if found.outcome is not None:
            outcome = Outcome.decode(found.outcome)
            if outcome.host != attach.host:
                raise not_found(key)
            await replay_record(outcome, offsets, context, call, text=False)
            return
        owner = found.owner
        if owner == str(self.durable.owner) or not await self.durable.store.alive(owner):
            raise self.durable.unknown(key, found)
        if not self.durable.sibling(owner):
            raise elsewhere(key)
        forwarder = self.durable.forwarder  # another worker runs it: proxy the call there
        if forwarder is not None and not call.forwarded and forwarder.reaches(owner):
            with contextlib.suppress(OwnerGone):
                await forwarder.attach(owner, call, attach, requests, context)
                return
        settled = await self.durable.settle(found, call)  # that worker stops, or is gone
        if settled is None or settled.host != attach.host:
            raise not_found(key)
        await replay_record(settled, offsets, context, call, text=False)


async def _feed_and_wait(command: RunningCommand) -> None:
    """Execute: write stdin, send EOF, wait for the channel to close."""
    await command.write(command.spec.stdin)
    command.close_stdin()
    await command.wait_closed()
