"""The ExecService servicer: for both RPCs, validate -> run the command -> map the outcome.

The RPC loop (`server.rpc`) wraps each method: limits, error mapping, trailers. The
command's way in and out (pool, channel, stop, release) is `server.launch`; Stream's
machinery is `server.stream`; output buffering is `server.output`.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import asyncssh
from google.protobuf import duration_pb2

from scout.v1 import exec_pb2

from .audit import AuditLog, CallRecord
from .callers import Gate
from .command import CommandSpec, ExitInfo, RunningCommand
from .config import Config, HostConfig
from .launch import Bounds, Launcher
from .output import ExecuteOutput, OutputBudget, OutputQueue
from .pool import Pool
from .requests import check_execute, timeout_of
from .rpc import STARTED_KEY, Context, RpcStats, describe, rpc
from .stream import StdinPump, first_message, pump_output

STOP_SHARE = 0.25  # of the time to the RPC deadline, kept for stopping the command
MIN_STOP_RESERVE = 0.1  # seconds kept for the stop however near the deadline is
ANSWER_MARGIN = 0.05  # seconds between the end of the stop and the caller's deadline


def duration(seconds: float) -> duration_pb2.Duration:
    """A protobuf Duration from seconds."""
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(max(seconds, 0) * 1e9))
    return d


def bounds_for(spec: CommandSpec, timeout: float, rpc_remaining: float | None) -> Bounds:
    """When the command must end, leaving time before the RPC deadline to stop it."""
    now = time.monotonic()
    full = spec.full_stop()
    bounds = Bounds(now + timeout, full, f"its timeout ({timeout:g}s)")
    if rpc_remaining is None:
        return bounds
    rpc_end = now + rpc_remaining
    reserve = min(full, max(MIN_STOP_RESERVE, rpc_remaining * STOP_SHARE))
    run_until, cause = bounds.run_until, bounds.cause
    if rpc_end - reserve < run_until:
        run_until, cause = rpc_end - reserve, "the RPC deadline"
    within = min(full, max(rpc_end - run_until - ANSWER_MARGIN, 0.05))
    return Bounds(run_until, within, cause)


def capped_text(data: bytes, cap: int) -> str:
    """UTF-8 text of data (bad bytes replaced), at most cap bytes once encoded."""
    text = data.decode("utf-8", "replace")
    if cap and len(text) * 3 > cap and len(encoded := text.encode()) > cap:
        text = encoded[:cap].decode("utf-8", "ignore")
    return text


class ExecService:
    """Execute and Stream over the shared pool."""

    def __init__(
        self,
        config: Config,
        pool: Pool[asyncssh.SSHClientConnection],
        *,
        launcher: Launcher | None = None,
        output_budget: OutputBudget | None = None,
        gate: Gate | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.config = config
        self.pool = pool
        self.launcher = launcher or Launcher(pool, config.pool)
        self.output_budget = output_budget or OutputBudget(config.exec.max_buffered_output_bytes)
        self.rpcs = RpcStats(max_in_flight=config.max_concurrent_rpcs)
        self.gate = gate or Gate(config.callers)
        self.audit = audit or AuditLog(config.audit)

    def _admit(
        self, call: CallRecord, request: exec_pb2.ExecuteRequest, *, stream: bool
    ) -> tuple[HostConfig, CommandSpec]:
        """Policy, then validation, then the audit log's consent: what may run, and where."""
        describe(call, request)
        call.authorized = True
        assert call.who is not None
        self.gate.authorize(call.who, call.method, request.host, request.command)
        host, spec = check_execute(self.config, request, stream=stream)
        self.audit.ready()
        return host, spec

    @rpc("Execute")
    async def Execute(
        self, request: exec_pb2.ExecuteRequest, context: Context, call: CallRecord
    ) -> exec_pb2.ExecuteResponse:
        """Run a command, wait for it, return its capped output and exit status."""
        host, spec = self._admit(call, request, stream=False)
        timeout = timeout_of(self.config.exec, request, stream=False)
        bounds = bounds_for(spec, timeout, context.time_remaining())
        output = ExecuteOutput(spec.max_output_bytes, self.output_budget, text=request.text)
        try:
            async with self.launcher.run(host, spec, output.feed, bounds) as run:
                output.attach(run.command.chan)
                await run.bounded(_feed_and_wait(run.command))
            info = run.command.outcome()
            call.exit_code, call.signal = info.exit_code, info.signal
            return _execute_response(info, output, request.text)
        finally:
            call.bytes_out = output.stdout.total + output.stderr.total
            output.release()

    @rpc("Stream")
    async def Stream(
        self,
        requests: AsyncIterator[exec_pb2.StreamRequest],
        context: Context,
        call: CallRecord,
    ) -> None:
        """Run a command, send its output as it comes, pass stdin and signals through."""
        limits = self.config.exec
        start = await first_message(requests, limits.stream_start_timeout)
        host, spec = self._admit(call, start, stream=True)
        timeout = timeout_of(self.config.exec, start, stream=True)
        bounds = bounds_for(spec, timeout, context.time_remaining())
        if not start.HasField("timeout"):
            bounds = Bounds(
                bounds.run_until,
                bounds.stop_within,
                bounds.cause.replace("timeout", "timeout, the server's default for Stream"),
            )
        queue = OutputQueue(spec.max_output_bytes)
        try:
            async with self.launcher.run(host, spec, queue.feed, bounds) as run:
                command = run.command
                queue.attach(command.chan)
                command.session.closed.add_done_callback(lambda _: queue.close())
                # Response headers mean "the command started" (and say so: x-scout-started):
                # a client waits for them before it writes stdin, so a request that fails
                # earlier never sees a write race the error (grpc would then report INTERNAL
                # instead of the real status).
                await context.send_initial_metadata(((STARTED_KEY, "true"),))
                stdin = StdinPump(command, requests, queue, limits.stream_messages_per_second)
                stdin.start()
                try:
                    await run.bounded(pump_output(queue, context, start.text))
                except BaseException:
                    await stdin.stop()
                    raise
        finally:
            call.bytes_out = queue.stdout.total + queue.stderr.total
        info = command.outcome()
        call.exit_code, call.signal = info.exit_code, info.signal
        await context.write(
            exec_pb2.StreamResponse(
                exit=exec_pb2.ExitStatus(
                    exit_code=info.exit_code,
                    signal=info.signal,
                    core_dumped=info.core_dumped,
                    stdout_bytes=queue.stdout.total,
                    stderr_bytes=queue.stderr.total,
                    stdout_truncated=queue.stdout.truncated,
                    stderr_truncated=queue.stderr.truncated,
                    duration=duration(info.ended - info.started),
                )
            )
        )
        await stdin.finish()


async def _feed_and_wait(command: RunningCommand) -> None:
    """Execute: write stdin, send EOF, wait for the channel to close."""
    await command.write(command.spec.stdin)
    command.close_stdin()
    await command.wait_closed()


def _execute_response(
    info: ExitInfo, output: ExecuteOutput, text: bool
) -> exec_pb2.ExecuteResponse:
    out, err = output.stdout, output.stderr
    stdout, stderr = out.value(), err.value()
    response = exec_pb2.ExecuteResponse(
        stdout=stdout,
        stderr=stderr,
        exit_code=info.exit_code,
        signal=info.signal,
        core_dumped=info.core_dumped,
        stdout_truncated=out.truncated,
        stderr_truncated=err.truncated,
        stdout_bytes=out.total,
        stderr_bytes=err.total,
        duration=duration(info.ended - info.started),
    )
    if text:
        response.stdout_text = capped_text(stdout, out.cap)
        response.stderr_text = capped_text(stderr, err.cap)
    return response
