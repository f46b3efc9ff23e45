"""Child processes of a benchmark: start (pinned, or counting), read JSON lines, stop.

Each runs in its own process (no two share an event loop or the GIL), logs to a file and
answers in JSON lines on stdout: its endpoints, or its result. `python -m bench.procs
[--cpus=0] [--count] -- ARGV` runs ARGV's entry point on those CPUs (os.sched_setaffinity,
inherited by its threads and children) and, with --count, with its event loop counted for
a Probe in the load generator (scenario 12).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import runpy
import selectors
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .specs import LoadSpec

METRICS_HOST = "127.0.1.1"  # scout's /metrics, apart from its gRPC port on 127.0.0.1
PYTHON = sys.executable
BIN = Path(sys.executable).parent
SYSCALLS = "system calls"


@dataclass
class Child:
    """A running child process, and the endpoints its ready line announced."""

    name: str
    proc: asyncio.subprocess.Process
    log: Path
    endpoints: list[tuple[str, int]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.proc.pid

    def aim(self, spec: LoadSpec) -> LoadSpec:
        """spec sent through this gRPC server, with its CPU measured (and /metrics scraped)."""
        (_, port), *metrics = self.endpoints
        url = f"http://{METRICS_HOST}:{metrics[0][1]}/metrics" if metrics else ""
        target = f"127.0.0.1:{port}"
        return replace(spec, backend="scout", target=target, server_pid=self.pid, scrape=url)

    def failure(self, what: str) -> RuntimeError:
        """An error naming the child, what went wrong and the tail of its log."""
        tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
        return RuntimeError(f"{self.name} {what}; log {self.log}:\n{tail}")

    async def read_json(self, within: float) -> dict[str, Any]:
        """The next JSON object the child prints on stdout (other lines are skipped)."""
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(within):
                while line := await self.proc.stdout.readline():
                    if line.startswith(b"{"):
                        value: dict[str, Any] = json.loads(line)
                        return value
                await self.proc.wait()
        except TimeoutError:
            raise self.failure(f"said nothing for {within:.0f}s") from None
        raise self.failure(f"exited with status {self.proc.returncode}")

    async def stop(self, grace: float = 30.0) -> None:
        """SIGTERM, wait, SIGKILL if it will not go."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), grace)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def spawn(
    name: str, argv: list[str], log: Path, *, stdin: bytes | None = b"", ready: bool = False,
    cpus: Collection[int] = (), count: bool = False, env: Mapping[str, str] | None = None,
) -> Child:  # fmt: skip
    """Start argv (on cpus, counting, in env: None is this process's) with stderr to log and
    stdin fed, then closed (None: kept open); with ready, wait for its JSON line
    {"endpoints": [[address, port], ...]}."""
    if cpus or count:
        flags = [f"--cpus={','.join(map(str, sorted(cpus)))}"] if cpus else []
        argv = [PYTHON, "-m", "bench.procs", *flags, *(["--count"] * count), "--", *argv]
    with log.open("ab") as err:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err,
            env=env,
        )  # fmt: skip
    assert proc.stdin is not None
    if stdin is not None:
        proc.stdin.write(stdin)
        proc.stdin.close()
    child = Child(name, proc, log)
    try:
        found = (await child.read_json(60.0))["endpoints"] if ready else []
    except BaseException:
        await child.stop()
        raise
    child.endpoints = [(str(a), int(p)) for a, p in found]
    return child


def pin(pid: int, cpus: Collection[int]) -> None:
    """Move every thread of a running process to cpus."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), cpus)


def print_json(value: dict[str, Any]) -> None:
    """In a child: one JSON line on stdout."""
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


def counts_file(pid: int) -> Path:
    """Where a counting process writes its event-loop counts on SIGUSR2."""
    return Path(tempfile.gettempdir()) / f"scout-bench-counts-{pid}.json"


def install_counting() -> None:
    """Count this process's tasks and futures created, callbacks run (every Handle:
    call_soon, timers, I/O readiness), timers, loop iterations and epoll waits. SIGUSR1
    zeroes the counts; SIGUSR2 writes them to counts_file (empty until then)."""
    counts: Counter[str] = Counter()

    def count(cls: Any, name: str, key: str) -> None:
        original = getattr(cls, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            counts[key] += 1
            return original(*args, **kwargs)

        setattr(cls, name, counted)

    loop, handle, epoll = asyncio.BaseEventLoop, asyncio.Handle, selectors.EpollSelector
    for cls, name, key in [
        (loop, "create_task", "tasks"), (loop, "create_future", "futures"),
        (loop, "call_at", "timers"), (loop, "_run_once", "loop iterations"),
        (handle, "_run", "callbacks"), (epoll, "select", "epoll waits"),
    ]:  # fmt: skip
        count(cls, name, key)
    path = counts_file(os.getpid())
    path.write_text("")
    signal.signal(signal.SIGUSR1, lambda *_: counts.clear())
    signal.signal(signal.SIGUSR2, lambda *_: path.write_text(json.dumps(counts)))


class Probe:
    """In the load generator: what the measured process did over the window, per request:
    system calls by `perf stat` (attached at once, enabled only inside the window; it counts
    in the kernel, at no cost to the process) and, if it was started counting, its loop work.
    """

    def __init__(self, pid: int) -> None:
        self.pid, self.counting = pid, counts_file(pid).exists()
        ctl, self._ctl = os.pipe()
        self._ack, ack = os.pipe()
        argv = ["perf", "stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p", str(pid),
                "-D", "-1", "--control", f"fd:{ctl},{ack}"]  # fmt: skip
        self.perf = subprocess.Popen(argv, pass_fds=(ctl, ack), stderr=subprocess.PIPE, text=True)

    def _perf(self, command: bytes) -> None:
        """Enable or disable perf's counter; return once it has acknowledged."""
        os.write(self._ctl, command + b"\n")
        os.read(self._ack, 16)

    def begin(self) -> None:
        """The window opens: zero the loop counts, count system calls."""
        if self.counting:
            os.kill(self.pid, signal.SIGUSR1)
        self._perf(b"enable")

    def end(self) -> None:
        """The window closes: stop counting, ask for the loop counts."""
        self._perf(b"disable")
        if self.counting:
            os.kill(self.pid, signal.SIGUSR2)

    async def counts(self, requests: int) -> dict[str, float]:
        """What was counted in the window, per request."""
        self.perf.send_signal(signal.SIGINT)
        _, err = await asyncio.to_thread(self.perf.communicate)
        found = re.search(r"^(\d+),,raw_syscalls:sys_enter", err, re.MULTILINE)
        counts = {SYSCALLS: float(found[1]) if found else math.nan}
        path = counts_file(self.pid)
        for _ in range(100 if self.counting else 0):
            if text := path.read_text():
                counts |= json.loads(text)
                path.unlink()
                break
            await asyncio.sleep(0.05)
        return {k: v / requests if requests else math.nan for k, v in counts.items()}


def launch(args: list[str]) -> None:
    """`python -m bench.procs [--cpus=0,1] [--count] -- ARGV`: see the module docstring."""
    flags, argv = args[: args.index("--")], args[args.index("--") + 1 :]
    for flag in flags:
        if flag.startswith("--cpus="):
            os.sched_setaffinity(0, {int(c) for c in flag.removeprefix("--cpus=").split(",")})
    if "--count" in flags:
        install_counting()
    if argv[1:2] == ["-m"]:  # python -m MODULE ...
        sys.argv = argv[2:]
        runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
    else:  # a console script
        sys.argv = argv
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    launch(sys.argv[1:])
