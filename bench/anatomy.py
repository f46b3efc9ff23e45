"""Where a warm Execute's server CPU goes: event-loop work and system calls per request.

Not part of `make bench` (run `python -m bench.anatomy`; BENCHMARKS.md records what it
found). Three processes are measured the same way, each on N requests after a warm-up:

    scout      scout-server, Execute against the protocol-only SSH host
    grpc       bench.grpcfloor: the gRPC hop alone (answers with no SSH)
    raw        the raw asyncssh client alone (the SSH client work, no gRPC)

Counts are exact, whatever else the machine does: tasks and futures created, callbacks
run (every Handle the loop runs: call_soon, timers, I/O readiness), timers scheduled,
event-loop iterations, and epoll waits, counted by patching the event loop in the
measured process; system calls by `strace -c` attached for the window. CPU microseconds
per request come from a separate, unpatched run, so they carry the machine's noise.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
EVENTS = ("tasks", "futures", "callbacks", "timers", "iterations", "epoll_waits")


def install_counting(dump: Path) -> None:
    """Patch the event loop to count; SIGUSR1 zeroes the counts, SIGUSR2 writes them."""
    counts: Counter[str] = Counter()
    loop_cls = asyncio.base_events.BaseEventLoop

    def counted(cls: Any, name: str, key: str) -> None:
        original = getattr(cls, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[key] += 1
            return original(*args, **kwargs)

        setattr(cls, name, wrapper)

    counted(loop_cls, "create_task", "tasks")
    counted(loop_cls, "create_future", "futures")
    counted(loop_cls, "call_at", "timers")
    counted(loop_cls, "_run_once", "iterations")
    counted(asyncio.events.Handle, "_run", "callbacks")
    counted(selectors.EpollSelector, "select", "epoll_waits")
    signal.signal(signal.SIGUSR1, lambda *_: counts.clear())
    signal.signal(signal.SIGUSR2, lambda *_: dump.write_text(json.dumps(counts)))


def child(kind: str, dump: Path, args: list[str]) -> None:
    """Run one measured process with counting installed."""
    install_counting(dump)
    sys.argv = [kind, *args]
    if kind == "scout":
        from server.main import main

        main(args)
    elif kind == "grpc":
        from bench.grpcfloor import serve

        asyncio.run(serve())
    else:
        asyncio.run(_raw_client(args))


async def _raw_client(args: list[str]) -> None:
    """The raw asyncssh client: connections first, then requests on SIGCONT... on stdin."""
    import asyncssh

    from bench.callers import run_raw
    from server.connector import CIPHERS

    host, port, key, known, conc = args[0], int(args[1]), args[2], args[3], int(args[4])
    conns = [
        await asyncssh.connect(
            host, port, username="u", client_keys=[key], known_hosts=known, config=None,
            encryption_algs=CIPHERS, agent_path=None,
        )
        for _ in range(7)
    ]  # fmt: skip
    sem = asyncio.Semaphore(conc)

    async def one(i: int) -> None:
        async with sem:
            await run_raw(conns[i % len(conns)], "echo ok")

    loop = asyncio.get_running_loop()
    print("ready", flush=True)
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        await asyncio.gather(*(one(i) for i in range(int(line))))
        print("done", flush=True)


async def _grpc_load(target: str, n: int, conc: int) -> None:
    import grpc

    from scout.v1 import exec_pb2, exec_pb2_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        stub = exec_pb2_grpc.ExecServiceStub(channel)  # type: ignore[no-untyped-call]
        request = exec_pb2.ExecuteRequest(host="h", command="echo ok")
        sem = asyncio.Semaphore(conc)

        async def one() -> None:
            async with sem:
                await stub.Execute(request)

        await asyncio.gather(*(one() for _ in range(n)))


def _measure(pid: int, work: Any, n: int, dump: Path, strace: bool) -> dict[str, float]:
    """Counts (or CPU time) of process pid over `work()` doing n requests."""
    proc = psutil.Process(pid)
    os.kill(pid, signal.SIGUSR1)
    tracer = None
    if strace:
        out = dump.with_suffix(".strace")
        tracer = subprocess.Popen(
            ["strace", "-c", "-f", "-p", str(pid), "-o", str(out)], stderr=subprocess.DEVNULL
        )
        time.sleep(1.0)
    cpu = sum(proc.cpu_times()[:2])
    work()
    cpu = sum(proc.cpu_times()[:2]) - cpu
    os.kill(pid, signal.SIGUSR2)
    time.sleep(0.3)
    result = {k: v / n for k, v in json.loads(dump.read_text()).items()}
    if tracer is not None:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=10)
        total = re.findall(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?total", out.read_text(), re.M)
        result["syscalls"] = int(total[-1]) / n if total else float("nan")
    else:
        result["cpu_us"] = 1e6 * cpu / n
    return result


def main() -> None:
    """Measure the three processes; print one JSON line per process and run."""
    if len(sys.argv) > 2 and sys.argv[1] == "child":
        child(sys.argv[2], Path(sys.argv[3]), sys.argv[4:])
        return
    n, conc = int(os.environ.get("N", "3000")), 50
    from server.keyfiles import load_or_create_keys

    work = Path(tempfile.mkdtemp(prefix="scout-anatomy-"))
    keys = load_or_create_keys(work / "keys")
    fake = subprocess.Popen(
        [sys.executable, "-m", "bench.fakessh", str(work / "keys"), "1", "0"],
        stdout=subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    assert fake.stdout is not None
    host, port = json.loads(fake.stdout.readline())["endpoints"][0]
    keys.trust(host, port)
    config = work / "scout.toml"
    config.write_text(
        f"[hosts.h]\naddress = '{host}'\nport = {port}\nuser = 'u'\n"
        f"identity_file = '{keys.identity_file}'\nknown_hosts = '{keys.known_hosts}'\n"
    )
    report: dict[str, list[dict[str, float]]] = {}
    try:
        for kind in ("scout", "grpc", "raw"):
            report[kind] = [_run(kind, work, config, keys, host, port, n, conc, s) for s in (False, True)]
    finally:
        fake.terminate()
    for kind, (cpu, counts) in report.items():
        print(json.dumps({"process": kind, **cpu, **counts}))


def _run(
    kind: str, work: Path, config: Path, keys: Any, host: str, port: int, n: int, conc: int, strace: bool
) -> dict[str, float]:
    dump = work / f"{kind}.json"
    log = work / f"{kind}.log"
    base = [sys.executable, "-m", "bench.anatomy", "child", kind, str(dump)]
    if kind == "raw":
        args = [host, str(port), str(keys.identity_file), str(keys.known_hosts), str(conc)]
        proc = subprocess.Popen([*base, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, text=True)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdout.readline()

        def go(count: int) -> None:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(f"{count}\n")
            proc.stdin.flush()
            proc.stdout.readline()

    else:
        extra = ["--config", str(config), "--listen", "127.0.0.1:0", "--log-format", "text"]
        proc = subprocess.Popen([*base, *(extra if kind == "scout" else [])], stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=ROOT)  # noqa: SIM115
        target = ""
        for _ in range(400):
            text = log.read_text()
            if m := re.search(r"\(port (\d+)\)|\"endpoints\": \[\[\"[\d.]+\", (\d+)", text):
                target = f"127.0.0.1:{m.group(1) or m.group(2)}"
                break
            time.sleep(0.05)

        def go(count: int) -> None:
            asyncio.run(_grpc_load(target, count, conc))

    try:
        go(1000)  # warm
        return _measure(proc.pid, lambda: go(n), n, dump, strace)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
