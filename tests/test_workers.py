"""`scout-server --workers N`: real processes on one port, real SSH, real signals.

Which worker served a call is read from its access line (every worker's log line carries
its `worker` index); a new connection lands on whichever worker the kernel picks
(SO_REUSEPORT), so a test opens connections until it has one on the worker it needs.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeAlias

import grpc
import psutil
import pytest

from scout.v1 import exec_pb2, exec_pb2_grpc
from server.callers import hash_token
from server.config import HostConfig
from server.configfile import available_cores, load
from server.workers import RESTART_LIMIT, count
from testkit.certs import make_pki
from testkit.processes import eventually, gone, marker, running, stop
from testkit.scripted import ScriptedServer
from testkit.sshd import OpenSSHServer

from .serverproc import LISTENING, ROOT, host_toml, server_exits
from .test_ops import scrape

WORKER_UP = re.compile(r"worker (\d+) (?:started|ready again) \(pid (\d+)\)")
READY_AGAIN = re.compile(r"worker (\d+) ready again \(pid (\d+)\)")
METRICS = re.compile(r"metrics on http://\S+:(\d+)/metrics")
SUPERVISOR = {"server.workers", "server.metrics"}  # the loggers of the supervisor itself
TOKEN = "workers-test-token"


@dataclass
class Served:
    """scout-server with workers as a child process, and what its log says."""

    proc: subprocess.Popen[bytes]
    log: Path
    port: int
    metadata: tuple[tuple[str, str], ...] = ()
    credentials: grpc.ChannelCredentials | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def lines(self) -> list[dict[str, Any]]:
        """The JSON log lines."""
        return [json.loads(x) for x in self.text().splitlines() if x.startswith("{")]

    def pids(self) -> dict[int, int]:
        """Each worker's latest pid."""
        return {int(i): int(p) for i, p in WORKER_UP.findall(self.text())}

    def every_pid(self) -> set[int]:
        return {int(p) for _, p in WORKER_UP.findall(self.text())}

    def worker_of(self, request_id: str) -> int | None:
        """The worker whose access line has this request id (`NAME:ID` with callers)."""
        for line in self.lines():
            logged = str(line.get("request_id", ""))
            if request_id in (logged, logged.partition(":")[2]) and "status" in line:
                return int(line["worker"])
        return None

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        (port,) = METRICS.findall(self.text())
        return scrape(int(port))

    async def exited(self, within: float = 30.0) -> int:
        """The supervisor's exit status (it must exit within the time)."""
        return await asyncio.to_thread(self.proc.wait, within)


async def serve(
    tmp_path: Path, toml: str, *args: str, fmt: str = "json", audit_pipe: bool = False
) -> Served:
    """Start `python -m server --config ... --listen 127.0.0.1:0 ARGS` and wait for the
    listening line (the supervisor's, once every worker serves)."""
    config = tmp_path / "scout.toml"
    config.write_text(toml)
    log = tmp_path / "scout.log"
    argv = ["--config", str(config), "--listen", "127.0.0.1:0", "--log-format", fmt, *args]
    proc = _popen(argv, log, audit_pipe=audit_pipe)
    for _ in range(400):  # up to 20 s
        if m := LISTENING.search(log.read_text()):
            return Served(proc, log, int(m.group(1)))
        if proc.poll() is not None:
            break
        await asyncio.sleep(0.05)
    proc.kill()
    raise AssertionError(f"scout-server did not start:\n{log.read_text()}")


def _popen(args: list[str], log: Path, *, audit_pipe: bool) -> subprocess.Popen[bytes]:
    with log.open("w") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "server", *args],
            stdout=subprocess.PIPE if audit_pipe else sink,
            stderr=sink,
            cwd=ROOT,
        )


Start = Callable[..., Awaitable[Served]]


@pytest.fixture
def started(tmp_path: Path) -> Iterator[Start]:
    """`await started(TOML, ARGS...)`: serve() in this test's folder, and at its end SIGTERM
    each server (then kill it, with its workers)."""
    servers: list[Served] = []

    async def start(toml: str, *args: str, fmt: str = "json", audit_pipe: bool = False) -> Served:
        served = await serve(tmp_path, toml, *args, fmt=fmt, audit_pipe=audit_pipe)
        servers.append(served)
        return served

    yield start
    for s in servers:
        stop(s.proc, timeout=30)
        if s.proc.stdout is not None:
            s.proc.stdout.close()
        for pid in s.every_pid():
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Whether the process runs (a zombie has ended)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def stub_of(channel: grpc.aio.Channel) -> exec_pb2_grpc.ExecServiceStub:
    return exec_pb2_grpc.ExecServiceStub(channel)


async def channels(served: Served, wanted: set[int]) -> dict[int, grpc.aio.Channel]:
    """A channel (its own TCP connection) on each wanted worker: connect until the kernel
    has put one on each."""
    found: dict[int, grpc.aio.Channel] = {}
    for _ in range(60):
        options = [("grpc.use_local_subchannel_pool", 1)]
        if served.credentials is None:
            channel = grpc.aio.insecure_channel(served.target, options=options)
        else:
            channel = grpc.aio.secure_channel(served.target, served.credentials, options=options)
        request_id = f"probe-{uuid.uuid4().hex}"
        await stub_of(channel).ListHosts(
            exec_pb2.ListHostsRequest(),
            metadata=(("x-request-id", request_id), *served.metadata),
            timeout=10,
        )
        assert await eventually(lambda: served.worker_of(request_id) is not None)  # noqa: B023
        worker = served.worker_of(request_id)
        if worker in wanted and worker not in found:
            found[worker] = channel
            if set(found) == wanted:
                return found
        else:
            await channel.close()
    raise AssertionError(f"60 connections never reached workers {wanted - set(found)}")


Call: TypeAlias = "grpc.aio.UnaryUnaryCall[Any, exec_pb2.ExecuteResponse]"
WITH_METRICS = '[metrics]\nlisten = "127.0.0.1:0"\n'


async def two_workers(
    started: Start, host: HostConfig, toml: str = ""
) -> tuple[Served, dict[int, grpc.aio.Channel]]:
    """A server of two workers whose one host, "h", is host (and the rest of its config
    TOML), and a channel on each."""
    served = await started(toml + host_toml("h", host), "--workers", "2")
    return served, await channels(served, {0, 1})


async def sleeping(
    started: Start, host: HostConfig, grace: float, sleeps: list[str]
) -> tuple[Served, dict[int, grpc.aio.Channel], list[Call]]:
    """Two workers with this shutdown_grace, worker i running `sleep sleeps[i]` on host
    (returned once every sleep runs), with their calls."""
    served, on = await two_workers(started, host, f"shutdown_grace = {grace}\n")
    calls = [execute(on[w], f"sleep {m}") for w, m in zip(on, sleeps, strict=True)]
    for m in sleeps:
        assert await running(f"sleep {m}")
    return served, on, calls


async def closing(chans: dict[int, grpc.aio.Channel]) -> None:
    for channel in chans.values():
        await channel.close()


def execute(channel: grpc.aio.Channel, command: str, host: str = "h", **kw: Any) -> Call:
    request = exec_pb2.ExecuteRequest(host=host, command=command)
    return stub_of(channel).Execute(request, timeout=30, **kw)


def sample(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return name, tuple(sorted(labels.items()))


# ---- serving ---------------------------------------------------------------------------


async def test_two_workers_serve_one_port_and_one_metrics_endpoint(
    shell_server: ScriptedServer, tmp_path: Path, started: Start
) -> None:
    served, on = await two_workers(started, shell_server.host_config("h"), WITH_METRICS)
    ids = {w: [f"w{w}-{n}" for n in range(5)] for w in on}
    replies = await asyncio.gather(
        *(
            execute(on[w], "echo $0 >/dev/null; echo served", metadata=(("x-request-id", i),))
            for w, those in ids.items()
            for i in those
        )
    )
    assert {r.stdout for r in replies} == {b"served\n"}
    for w, those in ids.items():  # each worker ran the calls of its own connection
        assert {served.worker_of(i) for i in those} == {w}
    m = await asyncio.to_thread(served.metrics)
    assert m[sample("scout_rpcs_total", method="Execute", code="OK")] == 10
    assert m[sample("scout_commands_total", outcome="exit_zero")] == 10
    assert m[sample("scout_workers")] == 2
    assert m[sample("scout_worker_restarts_total")] == 0
    assert m[sample("scout_pool_connection_limit")] == 256  # 128 each: max_connections shared
    assert m[sample("scout_host_connections", host="h")] == 2  # one per worker's pool
    await closing(on)
    served.proc.send_signal(signal.SIGTERM)
    assert await served.exited() == 0
    lines = served.lines()
    ours = [x for x in lines if x["logger"] not in SUPERVISOR]
    assert ours and {x.get("worker") for x in ours} == {0, 1}  # every worker line says whose
    assert not [x for x in lines if x["logger"] in SUPERVISOR and "worker" in x]
    assert len(LISTENING.findall(served.text())) == 1  # one listening line, the supervisor's


async def test_every_worker_serves_tls_on_the_one_port(
    shell_server: ScriptedServer, tmp_path: Path, started: Start
) -> None:
    pki = make_pki(tmp_path)
    tls = f'[tls]\ncert_file = "{pki.server.cert}"\nkey_file = "{pki.server.key}"\n'
    toml = tls + host_toml("h", shell_server.host_config("h"))
    served = await started(toml, "--workers", "2")
    served.credentials = grpc.ssl_channel_credentials(pki.ca.bundle.read_bytes())
    assert "over TLS" in served.text()
    on = await channels(served, {0, 1})
    for channel in on.values():
        assert (await execute(channel, "echo private")).stdout == b"private\n"
    await closing(on)


@pytest.mark.parametrize("destination", ["file", "stdout pipe"])
async def test_audit_lines_of_all_workers_stay_whole(
    shell_server: ScriptedServer, tmp_path: Path, started: Start, destination: str
) -> None:
    audit = tmp_path / "audit.jsonl"
    where = str(audit) if destination == "file" else "-"
    toml = f'[audit]\nfile = "{where}"\n' + host_toml("h", shell_server.host_config("h"))
    served = await started(toml, "--workers", "2", audit_pipe=destination != "file")
    out = bytearray()
    if served.proc.stdout is not None:  # a slow log collector: the pipe is often full
        reader = threading.Thread(target=_read_slowly, args=(served.proc.stdout, out))
        reader.start()
    on = await channels(served, {0, 1})
    # a line of ~20 KiB: far over the 4 KiB a pipe writes whole, and over stdio's buffers
    command = "true " + "x" * 20_000
    calls = [execute(on[w], command) for w in on for _ in range(15)]
    assert {r.exit_code for r in await asyncio.gather(*calls)} == {0}
    await closing(on)
    served.proc.send_signal(signal.SIGTERM)
    assert await served.exited() == 0
    if served.proc.stdout is not None:
        reader.join(timeout=10)
        served.proc.stdout.close()
        text = out.decode()
    else:
        text = audit.read_text()
    lines = [json.loads(x) for x in text.splitlines()]  # each one whole JSON
    executed = [x for x in lines if x["method"] == "Execute"]
    assert len(executed) == 30 and {x["command"] for x in executed} == {command}
    assert len({x["request_id"] for x in executed}) == 30


def _read_slowly(pipe: IO[bytes], into: bytearray) -> None:
    """Read the pipe 4 KiB at a time with pauses, so that writers often find it full and
    a long line goes in in parts (which other workers' writes must not come between)."""
    while chunk := os.read(pipe.fileno(), 4096):
        into.extend(chunk)
        time.sleep(0.0005)


# ---- failures and signals ----------------------------------------------------------------


@pytest.mark.sshd
async def test_a_killed_worker_fails_no_call_on_the_other_and_is_started_again(
    openssh: OpenSSHServer, tmp_path: Path, started: Start
) -> None:
    served, on = await two_workers(started, openssh.host_config("h"), WITH_METRICS)
    victim, survivor = served.pids()[1], on[0]
    assert (await execute(on[1], "echo counted")).stdout == b"counted\n"  # by the victim
    a, b = (marker().replace("30.", "2.") for _ in range(2))  # 2.x seconds each
    executing = execute(survivor, f"sleep {a}; echo executed")
    start = exec_pb2.ExecuteRequest(host="h", command=f"sleep {b}; echo streamed")
    streaming = stub_of(survivor).Stream(iter([exec_pb2.StreamRequest(start=start)]), timeout=30)
    assert await running(f"sleep {a}") and await running(f"sleep {b}")
    before = await asyncio.to_thread(served.metrics)
    os.kill(victim, signal.SIGKILL)
    assert (await executing).stdout == b"executed\n"
    messages = [m async for m in streaming]
    assert b"".join(m.stdout for m in messages) == b"streamed\n"
    assert messages[-1].exit.exit_code == 0
    assert await eventually(lambda: bool(READY_AGAIN.search(served.text())), within=20)
    assert served.pids()[1] != victim
    assert f"worker 1 (pid {victim}) exited with signal SIGKILL; starting it again" in (
        served.text()
    )
    again = await channels(served, {1})  # the new worker 1 serves the port too
    assert (await execute(again[1], "echo back")).stdout == b"back\n"
    after = await asyncio.to_thread(served.metrics)
    assert after[sample("scout_worker_restarts_total")] == 1
    assert after[sample("scout_workers")] == 2
    # what the dead worker had counted (as last scraped) is still in the server's counters
    ok = sample("scout_rpcs_total", method="Execute", code="OK")
    assert before[ok] == 1 and after[ok] == 1 + 2
    await closing(on)
    await closing(again)


async def test_sigterm_drains_every_worker_and_stops_what_outlives_the_grace(
    shell_server: ScriptedServer, tmp_path: Path, started: Start
) -> None:
    quick, slow = marker().replace("30.", "1."), marker()
    host = shell_server.host_config("h")
    served, on, (finishing, outliving) = await sleeping(started, host, 2.0, [quick, slow])
    pids = served.pids()
    served.proc.send_signal(signal.SIGTERM)
    assert (await finishing).exit_code == 0  # within the grace: it ended by itself
    with pytest.raises(grpc.aio.AioRpcError):
        await outliving  # past the grace: stopped
    assert await served.exited() == 0
    assert await gone(f"sleep {slow}", within=5)  # no remote command left running
    assert not [p for p in pids.values() if alive(p)]
    await closing(on)


async def test_a_second_signal_skips_the_grace_on_every_worker(
    shell_server: ScriptedServer, tmp_path: Path, started: Start
) -> None:
    marks = [marker(), marker()]
    served, on, calls = await sleeping(started, shell_server.host_config("h"), 60.0, marks)
    served.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    assert served.proc.poll() is None  # in its 60 s grace
    served.proc.send_signal(signal.SIGTERM)
    assert await served.exited(within=20) == 0
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError):
            await call
    for m in marks:
        assert await gone(f"sleep {m}", within=5)
    second = [x for x in served.lines() if x["message"].startswith("second signal")]
    assert {x.get("worker") for x in second} == {None, 0, 1}  # the supervisor and each worker
    await closing(on)


async def test_sighup_reaches_every_worker_and_never_stops_one(
    shell_server: ScriptedServer, tmp_path: Path, started: Start
) -> None:
    host = shell_server.host_config("h")
    served = await started(host_toml("h", host), "--workers", "2")
    pids = served.pids()
    (tmp_path / "scout.toml").write_text(host_toml("h", host) + host_toml("added", host))
    for _ in range(3):
        served.proc.send_signal(signal.SIGHUP)

    def reloaded() -> set[int]:
        return {x["worker"] for x in served.lines() if x["message"] == "SIGHUP: reloading"}

    assert await eventually(lambda: reloaded() == {0, 1})
    on = await channels(served, {0, 1})
    for channel in on.values():
        assert (await execute(channel, "echo new", host="added")).stdout == b"new\n"
    assert served.pids() == pids and served.proc.poll() is None
    await closing(on)


async def test_sighup_revokes_a_removed_caller_in_every_worker_and_keeps_each_ones_port(
    shell_server: ScriptedServer, started: Start, tmp_path: Path
) -> None:
    def callers(*names: str) -> str:
        return "".join(
            f'[[callers]]\nname = "{n}"\ntoken_sha256 = "{hash_token(TOKEN + n)}"\nhosts = ["*"]\n'
            for n in names
        )

    hosts = host_toml("h", shell_server.host_config("h"))
    served = await started(callers("ci", "ops") + hosts, "--workers", "2")
    ci, ops = ((("authorization", f"Bearer {TOKEN}{n}"),) for n in ("ci", "ops"))
    served.metadata = ci
    on = await channels(served, {0, 1})
    (tmp_path / "scout.toml").write_text(callers("ci") + hosts)
    served.proc.send_signal(signal.SIGHUP)

    def reloaded() -> set[int]:
        return {x["worker"] for x in served.lines() if x["message"].startswith("config reloaded")}

    assert await eventually(lambda: reloaded() == {0, 1}, within=20)
    for channel in on.values():
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await execute(channel, "true", metadata=ops)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert (await execute(channel, "echo ok", metadata=ci)).stdout == b"ok\n"
    # a worker's own port and share of the limits are not mistaken for changes
    assert not [x for x in served.lines() if "takes a restart" in x["message"]]
    await closing(on)


async def test_workers_stop_when_the_supervisor_is_killed(
    shell_server: ScriptedServer, tmp_path: Path, started: Start
) -> None:
    served = await started(host_toml("h", shell_server.host_config("h")), "--workers", "2")
    pids = served.pids()
    served.proc.kill()
    assert await served.exited() == -signal.SIGKILL
    assert await eventually(lambda: not [p for p in pids.values() if alive(p)])
    orphaned = [
        x for x in served.lines() if x["message"] == "the supervisor is gone: shutting down"
    ]
    assert {x["worker"] for x in orphaned} == {0, 1}


async def test_restarts_past_the_bound_stop_the_server_with_status_1(
    shell_server: ScriptedServer, tmp_path: Path, started: Start
) -> None:
    toml = host_toml("h", shell_server.host_config("h"))
    served = await started(toml, "--workers", "2", fmt="text")
    for n in range(RESTART_LIMIT + 1):
        os.kill(served.pids()[0], signal.SIGKILL)
        if n < RESTART_LIMIT:  # wait for the new one, so the next kill is of a serving one
            assert await eventually(restarted(served, n + 1), within=20)
    assert await served.exited() == 1
    text = served.text()
    assert (
        f"that is {RESTART_LIMIT + 1} restarts in 60s, more than the {RESTART_LIMIT} allowed"
        in (text)
    )
    assert not [p for p in served.every_pid() if alive(p)]
    assert "[worker=1]" in text and "[worker=0]" in text  # the text format says whose, too


def restarted(served: Served, times: int) -> Callable[[], bool]:
    """Whether workers came back `times` times."""
    return lambda: len(READY_AGAIN.findall(served.text())) == times


# ---- limits and refusals -------------------------------------------------------------------


async def test_each_worker_gets_its_share_of_a_callers_max_in_flight(
    shell_server: ScriptedServer, tmp_path: Path, started: Start
) -> None:
    caller = (
        f'[[callers]]\nname = "ci"\ntoken_sha256 = "{hash_token(TOKEN)}"\n'
        'hosts = ["*"]\nmax_in_flight = 4\n'
    )
    toml = caller + host_toml("h", shell_server.host_config("h"))
    served = await started(toml, "--workers", "2")
    served.metadata = (("authorization", f"Bearer {TOKEN}"),)
    on = await channels(served, {0})
    m = marker()
    held = [execute(on[0], f"sleep {m}", metadata=served.metadata) for _ in range(2)]
    assert await eventually(lambda: len([p for p in psutil.process_iter() if _sleeps(p, m)]) == 2)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await execute(on[0], "true", metadata=served.metadata)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "limit of 2 calls at once" in (refused.value.details() or "")
    for call in held:
        call.cancel()
    assert await gone(f"sleep {m}", within=10)
    await closing(on)


def _sleeps(proc: psutil.Process, m: str) -> bool:
    """A `sleep M` process itself (not the shell that started it)."""
    try:
        return bool(proc.cmdline() == ["sleep", m])
    except psutil.Error:
        return False


@pytest.mark.parametrize(
    ("args", "toml", "says"),
    [
        (
            ["--workers", "2"],
            "[pool]\nmax_connections_per_host = 1\n",
            "pool.max_connections_per_host = 1 cannot be shared by 2 workers",
        ),
        (
            ["--workers", "3"],
            "[exec]\nmax_output_bytes = 1000000\nmax_buffered_output_bytes = 8000000\n",
            "exec.max_buffered_output_bytes = 8000000 cannot be shared by 3 workers: each worker "
            "needs at least 4000000",
        ),
        (
            ["--workers", "2"],
            "[server]\nmax_introspection_streams = 1\n",
            "server.max_introspection_streams = 1 cannot be shared by 2 workers",
        ),
        ([], "workers = 'many'\n", 'workers: expected a whole number from 1 to 1024 or "auto"'),
        (["--workers", "0"], "", "argument --workers: expected a whole number from 1 to 1024"),
        (["--demo", "--workers", "2"], "", "--demo serves its shell from one process"),
    ],
)
def test_what_cannot_be_served_by_workers_is_refused_at_start_with_status_2(
    tmp_path: Path, args: list[str], toml: str, says: str
) -> None:
    config = tmp_path / "scout.toml"
    config.write_text(toml)
    done = server_exits("--config", str(config), "--listen", "127.0.0.1:0", *args)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr.decode()


async def test_no_other_server_can_take_the_port_of_one_with_workers(
    tmp_path: Path, started: Start
) -> None:
    served = await started("", "--workers", "2")
    for extra in ([], ["--workers", "2"]):  # one process (no SO_REUSEPORT), or workers
        config = str(tmp_path / "scout.toml")
        done = await asyncio.to_thread(
            server_exits, "--config", config, "--listen", served.target, *extra
        )
        assert done.returncode == 1
        assert f"cannot listen on {served.target}" in done.stderr.decode()


def test_auto_is_one_worker_per_core_this_process_may_use(tmp_path: Path) -> None:
    (tmp_path / "scout.toml").write_text('workers = "auto"\n')
    assert count(load(tmp_path / "scout.toml")) == available_cores()
    assert available_cores() == len(os.sched_getaffinity(0))


def test_auto_runs_no_more_workers_than_the_shared_limits_allow(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On a machine with more cores than a per-host limit, "auto" still starts (a number
    given outright is refused instead: see the test of what is refused at start)."""
    (tmp_path / "scout.toml").write_text('workers = "auto"\n[pool]\nmax_connections_per_host = 1\n')
    assert count(load(tmp_path / "scout.toml")) == 1
    if available_cores() > 1:
        assert "pool.max_connections_per_host = 1 cannot be shared" in caplog.text
