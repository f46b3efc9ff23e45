"""Load: bursts, slow readers and floods are refused or paced, never queued without bound.

Bursts past grpc core's queue and past max_concurrent_rpcs, the output budget, a default
client's largest response, a Stream that never starts, a flood of Stream messages.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from scout.v1 import exec_pb2, exec_pb2_grpc
from server.output import STDOUT, ExecuteOutput, OutputBudget
from testkit.scripted import ScriptedServer
from testkit.sshd import OpenSSHServer

from .pausable import RecordedChannel
from .scoutd import config, running_scout
from .serverproc import ROOT, host_toml, start_server

# ---- bursts ----------------------------------------------------------------------------


async def test_a_burst_beyond_grpc_cores_queue_gets_no_cancelled(
    shell_server: ScriptedServer,
) -> None:
    async with running_scout(config({"h": shell_server.host_config("h")})) as s:
        calls = [
            s.stub.Execute(exec_pb2.ExecuteRequest(host="nope", command="true"), timeout=60)
            for _ in range(2000)
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        codes = {r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)}
        assert codes == {grpc.StatusCode.NOT_FOUND}


async def burst(stub: Any, request: exec_pb2.ExecuteRequest, n: int) -> list[tuple[str, float]]:
    """n calls at once; each one's status name and its latency from its own start."""

    async def one() -> tuple[str, float]:
        began = time.monotonic()
        try:
            await stub.Execute(request, timeout=30)
            return "OK", time.monotonic() - began
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                assert "retry" in (err.details() or ""), err.details()
            return err.code().name, time.monotonic() - began

    return list(await asyncio.gather(*(one() for _ in range(n))))


@pytest.mark.sshd
@pytest.mark.slow
async def test_beyond_max_concurrent_rpcs_calls_are_refused_at_once(
    openssh: OpenSSHServer, tmp_path: Path
) -> None:
    """Limit 50, 500 calls at once: 450 RESOURCE_EXHAUSTED about as fast as gRPC can answer.

    "As fast as gRPC can answer" is measured in the same run: a grpc.aio server that
    refuses every call with no work at all (tests/fakeexec.py), hit the same way. Its
    latencies are the floor (on a 2-core machine, a median of ~0.1 s for 500 calls:
    Python's gRPC takes each new call one at a time); scout's refusals must stay near it,
    never queue behind the admitted calls (grpc's own limiter would) nor be CANCELLED.
    """
    floor_proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.fakeexec", cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    cfg = tmp_path / "scout.toml"
    cfg.write_text("max_concurrent_rpcs = 50\n" + host_toml("o", openssh.host_config("o")))
    proc, target = start_server(["--config", str(cfg)], tmp_path / "scout.log")
    try:
        async with grpc.aio.insecure_channel(await fake_target(floor_proc)) as channel:
            stub = exec_pb2_grpc.ExecServiceStub(channel)
            busy = exec_pb2.ExecuteRequest(host="h", command="refuse RESOURCE_EXHAUSTED retry")
            floor = sorted(t for _, t in await burst(stub, busy, 500))
        async with grpc.aio.insecure_channel(target) as channel:
            stub = exec_pb2_grpc.ExecServiceStub(channel)
            await stub.Execute(exec_pb2.ExecuteRequest(host="o", command="true"))  # warm
            outcomes = await burst(stub, exec_pb2.ExecuteRequest(host="o", command="sleep 3"), 500)
        assert {code for code, _ in outcomes} == {"OK", "RESOURCE_EXHAUSTED"}
        assert sum(code == "OK" for code, _ in outcomes) >= 50
        refused = sorted(t for code, t in outcomes if code == "RESOURCE_EXHAUSTED")
        median, floor_median = refused[len(refused) // 2], floor[len(floor) // 2]
        print(
            f"\nrefusals: median {median * 1e3:.0f} ms, max {refused[-1] * 1e3:.0f} ms; "
            f"bare gRPC floor: median {floor_median * 1e3:.0f} ms, max {floor[-1] * 1e3:.0f} ms"
        )
        # never queued behind the admitted calls: every refusal came before any `sleep 3`
        # ended (grpc's own limiter would hold them until then)
        assert refused[-1] < min(t for code, t in outcomes if code == "OK")
        # and near gRPC's own answer, with room for a busy 2-core machine (CI saw 0.79 s
        # against a 0.14 s floor measured moments before); the ratio itself is bench
        # scenario 15's
        assert median < 5 * floor_median + 0.5
        assert refused[-1] < 2.5
    finally:
        floor_proc.kill()
        await floor_proc.wait()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


async def fake_target(proc: asyncio.subprocess.Process) -> str:
    """Where a `python -m tests.fakeexec` child serves (it prints "port N" first).

    The child then prints a line per call: 500 short lines fit in the pipe unread.
    """
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    return f"127.0.0.1:{line.decode().split()[1]}"


# ---- the output budget -----------------------------------------------------------------


async def test_buffered_output_waits_for_the_budget_and_stays_near_it(
    shell_server: ScriptedServer,
) -> None:
    cfg = config(
        {"h": shell_server.host_config("h")},
        exec={"max_output_bytes": 1_000_000, "max_buffered_output_bytes": 4_000_000},
    )
    async with running_scout(cfg) as s:
        cmd = "head -c 1000000 /dev/zero; head -c 1000000 /dev/zero >&2; sleep 0.3"
        results = await asyncio.gather(*(s.execute(host="h", command=cmd) for _ in range(8)))
        assert all(len(r.stdout) == len(r.stderr) == 1_000_000 for r in results)
        budget = s.app.service.output_budget
        assert budget.paused > 0  # some calls waited for room
        assert budget.peak <= budget.limit + 8 * 2 * 1024 * 1024  # one window each, at most
        assert budget.used == 0


# ---- a default client gets a full default response -------------------------------------


async def test_a_default_grpc_client_receives_the_largest_default_response(
    shell_server: ScriptedServer,
) -> None:
    async with running_scout(config({"h": shell_server.host_config("h")})) as s:
        async with grpc.aio.insecure_channel(s.target) as channel:  # 4 MiB receive limit
            stub = exec_pb2_grpc.ExecServiceStub(channel)
            cmd = "head -c 3000000 /dev/urandom; head -c 3000000 /dev/urandom >&2"
            r = await stub.Execute(exec_pb2.ExecuteRequest(host="h", command=cmd, text=True))
        assert len(r.stdout) == len(r.stderr) == 1_000_000
        assert r.stdout_truncated and r.stdout_bytes == 3_000_000
        assert len(r.stdout_text.encode()) <= 1_000_000  # replacement chars are capped too


# ---- an idle Stream --------------------------------------------------------------------


async def test_a_stream_that_never_starts_is_dropped(shell_server: ScriptedServer) -> None:
    cfg = config({"h": shell_server.host_config("h")}, exec={"stream_start_timeout": 0.3})
    async with running_scout(cfg) as s:

        async def nothing() -> AsyncIterator[exec_pb2.StreamRequest]:
            await asyncio.sleep(30)
            yield exec_pb2.StreamRequest()

        began = time.monotonic()
        await s.assert_stream_fails(
            nothing(), grpc.StatusCode.INVALID_ARGUMENT, "no `start` message within 0.3s", 30
        )
        assert time.monotonic() - began < 2.0
        assert s.app.service.rpcs.in_flight == 0


# ---- a flood of Stream messages --------------------------------------------------------


async def test_a_flood_of_stream_messages_is_paced(shell_server: ScriptedServer) -> None:
    cfg = config({"h": shell_server.host_config("h")}, exec={"stream_messages_per_second": 100})
    async with running_scout(cfg) as s:

        async def flood() -> AsyncIterator[exec_pb2.StreamRequest]:
            yield exec_pb2.StreamRequest(
                start=exec_pb2.ExecuteRequest(host="h", command="cat >/dev/null; echo done")
            )
            for _ in range(300):
                yield exec_pb2.StreamRequest(stdin=b"x")
            yield exec_pb2.StreamRequest(close_stdin=True)

        began = time.monotonic()
        out = [m async for m in s.stub.Stream(flood(), timeout=30)]
        assert out[-1].exit.exit_code == 0
        assert time.monotonic() - began >= 1.9  # 100 at once, then 100 a second


def _budgeted(budget: OutputBudget, n: int) -> tuple[list[ExecuteOutput], list[RecordedChannel]]:
    """n Execute outputs charged to budget, each with its channel."""
    channels = [RecordedChannel() for _ in range(n)]
    outputs = [ExecuteOutput(0, budget, text=False) for _ in range(n)]
    for out, chan in zip(outputs, channels, strict=True):
        out.attach(chan)
    return outputs, channels


def test_paused_calls_holding_the_whole_budget_are_not_left_waiting() -> None:
    """The overdraft call ends while the paused ones hold the budget between them: one of
    them must be woken to take the overdraft, or all wait until their deadlines (CI saw
    eight 2 MB Executes under a 4 MB budget run into their 30 s deadline)."""
    budget = OutputBudget(10)
    outputs, channels = _budgeted(budget, 3)
    a, b, c = outputs
    a.feed(STDOUT, b"x" * 4)
    b.feed(STDOUT, b"x" * 4)
    c.feed(STDOUT, b"x" * 4)  # past the limit: c goes on, as the overdraft
    a.feed(STDOUT, b"x")
    b.feed(STDOUT, b"x")
    assert channels[0].paused and channels[1].paused and not channels[2].paused
    c.release()  # c ended: 10 of 10 still held by a and b
    assert budget.overdraft is None
    assert not channels[0].paused and channels[1].paused  # a goes on, b waits its turn
    a.feed(STDOUT, b"x")
    assert budget.overdraft is a
    a.release()
    assert not channels[1].paused
    b.release()
    assert budget.used == 0 and budget.waiting == 0


def test_a_call_that_ends_while_paused_is_not_woken_in_a_live_one_s_place() -> None:
    """A paused call cut by its deadline leaves the queue, so the next wake reaches a call
    that can still take the overdraft."""
    budget = OutputBudget(10)
    outputs, channels = _budgeted(budget, 3)
    dead, live, big = outputs
    live.feed(STDOUT, b"x" * 6)
    big.feed(STDOUT, b"x" * 5)  # past the limit: the overdraft
    dead.feed(STDOUT, b"x")  # paused, first in line
    live.feed(STDOUT, b"x" * 4)  # paused next, holding 10
    dead.release()  # its deadline passed while it waited
    assert budget.waiting == 1
    big.release()  # 10 of 10 held by the live call: it must be the one woken
    assert not channels[1].paused and budget.waiting == 0
    live.release()
    assert budget.used == 0
