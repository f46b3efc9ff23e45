"""The load generator process: a LoadSpec in (JSON on stdin), a LoadResult out (a JSON line).

It runs in its own process, apart from the server under test, and drives one caller
(bench.callers) in one of three ways:

    closed    N callers, each starts its next request when the last one ends
    open      arrivals on a fixed schedule (rate per second); a request's latency is
              counted from its *scheduled* time, so a server that falls behind shows
              its queueing instead of slowing the generator down (no coordinated omission)
    burst     N requests at once: the makespan is the time until the last one ends

Latency percentiles are over successful requests; failures are counted by outcome.
CPU per request is read for this process, the server under test and the SSH target's
process tree, each over the measured window.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import math
import os
import random
import sys
from collections import Counter
from collections.abc import Callable

import psutil

from .callers import OK, Caller, failure, make_caller
from .procs import print_json
from .specs import Cpu, Latency, LoadResult, LoadSpec


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its descendants, reaped children included.

    An sshd's session processes come and go; once reaped, their time shows in their
    parent's children_user/children_system, so the sum over the live tree keeps it.
    """
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return math.nan
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


class Window:
    """The requests measured, their outcomes, and the CPU each process spent meanwhile."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.details: dict[str, str] = {}  # the first detail of each error outcome
        self.nbytes = 0
        pids = {"loadgen": os.getpid(), "server": spec.server_pid, "target": spec.target_pid}
        self._pids = {name: pid for name, pid in pids.items() if pid}  # 0: not measured
        self._cpu: dict[str, float] = {}
        n, rng = len(spec.hosts), random.Random(spec.seed)
        self.pick: Callable[[int], int] = lambda i: i % n  # which host request i goes to
        if spec.seed is not None:
            self.pick = lambda _i: rng.randrange(n)

    async def call(self, caller: Caller, worker: int, i: int) -> tuple[str, int]:
        """Request number i, bounded by the spec's timeout; a failure becomes an outcome name."""
        try:
            async with asyncio.timeout(self.spec.timeout):
                return await caller.call(worker, self.pick(i))
        except Exception as exc:
            name, detail = failure(exc)
            self.details.setdefault(name, detail)
            return name, 0

    def begin(self) -> None:
        """The window opens: read the CPU clocks."""
        self._cpu = {name: tree_cpu(pid) for name, pid in self._pids.items()}

    def end(self) -> None:
        """The window closes: CPU seconds spent inside it, by process."""
        self._cpu = {name: tree_cpu(pid) - self._cpu[name] for name, pid in self._pids.items()}

    def record(self, outcome: str, latency: float, nbytes: int) -> None:
        """One measured request."""
        if outcome == OK:
            self.latencies.append(latency)
            self.nbytes += nbytes
        else:
            self.errors[outcome] += 1

    def result(self, elapsed: float, finished: int | None = None) -> LoadResult:
        """The summary; CPU per request over `finished` requests (default: the successful)."""
        n = len(self.latencies) if finished is None else finished
        cpu = Cpu(**{name: s / n * 1e6 if n else math.nan for name, s in self._cpu.items()})
        return LoadResult(
            backend=self.spec.backend,
            mode=self.spec.mode,
            ok=len(self.latencies),
            elapsed=elapsed,
            throughput=n / elapsed if elapsed > 0 else 0.0,
            latency=Latency.of(self.latencies),
            cpu=cpu,
            nbytes=self.nbytes,
            errors=dict(self.errors),
            error_details=self.details,
        )


async def closed_loop(caller: Caller, w: Window) -> LoadResult:
    """N callers back to back; requests that start inside the window are measured, and
    throughput and CPU count the requests that also finish inside it."""
    loop = asyncio.get_running_loop()
    t0 = loop.time() + w.spec.warmup
    t1 = t0 + w.spec.duration
    seq = itertools.count()
    finished = 0

    async def worker(k: int) -> None:
        nonlocal finished
        while (began := loop.time()) < t1:
            outcome, nbytes = await w.call(caller, k, next(seq))
            ended = loop.time()
            if began >= t0:
                w.record(outcome, ended - began, nbytes)
                finished += ended <= t1

    async def clock() -> None:
        await asyncio.sleep(max(t0 - loop.time(), 0))
        w.begin()
        await asyncio.sleep(max(t1 - loop.time(), 0))
        w.end()

    await asyncio.gather(clock(), *(worker(k) for k in range(w.spec.concurrency)))
    return w.result(w.spec.duration, finished)


async def open_loop(caller: Caller, w: Window) -> LoadResult:
    """Arrivals on a schedule, every 1/rate seconds (open) or all at once (burst); latency
    counts from each arrival's scheduled time, and the window lasts until the last answer."""
    loop, spec = asyncio.get_running_loop(), w.spec
    if spec.mode == "burst":
        schedule, first, least = [0.0] * spec.concurrency, 0, 0.0
    else:
        schedule = [k / spec.rate for k in range(round((spec.warmup + spec.duration) * spec.rate))]
        first, least = round(spec.warmup * spec.rate), spec.duration
    start = loop.time() + 0.05
    t0 = last_end = start + schedule[first]
    tasks: set[asyncio.Task[None]] = set()

    async def one(k: int, scheduled: float) -> None:
        nonlocal last_end
        outcome, nbytes = await w.call(caller, k, k)
        ended = loop.time()
        if k >= first:
            last_end = max(last_end, ended)
            w.record(outcome, ended - scheduled, nbytes)

    for k, at in enumerate(schedule):
        if (delay := start + at - loop.time()) > 0:  # running late: dispatch at once
            await asyncio.sleep(delay)
        if k == first:
            w.begin()
        task = loop.create_task(one(k, start + at))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    w.end()
    return w.result(max(last_end - t0, least))


MODES = {"closed": closed_loop, "open": open_loop, "burst": open_loop}


async def run(spec: LoadSpec) -> LoadResult:
    """Set up the caller (outside the window), run the mode, tear down."""
    caller = make_caller(spec)
    rss_before = psutil.Process().memory_info().rss
    await caller.setup()
    rss_after = psutil.Process().memory_info().rss
    try:
        result = await MODES[spec.mode](caller, Window(spec))
    finally:
        await caller.close()
    return dataclasses.replace(result, rss_before=rss_before, rss_after=rss_after)


if __name__ == "__main__":
    spec = LoadSpec.from_dict(json.loads(sys.stdin.read()))
    print_json(dataclasses.asdict(asyncio.run(run(spec))))
