"""The load generator process: a LoadSpec in (JSON on stdin), a LoadResult out (a JSON line).

It runs apart from the server under test and drives one caller (bench.callers):

    closed    N callers back to back; paced, request i starts no earlier than i / rate
    open      arrivals on a fixed schedule; latency counts from the *scheduled* time, so a
              server that falls behind shows its queueing (no coordinated omission)
    burst     N requests at once: the makespan is the time until the last one ends

CPU per request: this process's, the server's and the SSH server's process tree's over
the measured window; meanwhile /metrics can be scraped every second (as Prometheus would).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import math
import os
import random
import sys
import time
from collections import Counter
from urllib.parse import urlsplit

import psutil

from scout.allocator import keep_freed_memory

from .callers import Caller, PsshCaller, failure, make_caller
from .procs import Probe, print_json
from .specs import Cpu, Latency, LoadResult, LoadSpec


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its descendants, reaped children included (an sshd's
    sessions come and go; once reaped, their time is in their parent's children_*)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return math.nan
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


class Window:
    """The requests measured, their outcomes, and the CPU each process spent meanwhile."""

    def __init__(self, spec: LoadSpec) -> None:
        self.spec, self.latencies = spec, list[float]()
        self.errors, self.details = Counter[str](), dict[str, str]()  # the first detail of each
        self.nbytes = self.scrapes = self.finished = 0
        pids = {"loadgen": os.getpid(), "server": spec.server_pid, "target": spec.target_pid}
        self._pids = {name: pid for name, pid in pids.items() if pid}  # 0: not measured
        self._cpu: dict[str, float] = {}
        self.probe = Probe(spec.server_pid or os.getpid()) if spec.probe else None
        self._rng = random.Random(spec.seed)

    async def call(self, caller: Caller, worker: int, i: int) -> tuple[str, int]:
        """Request number i (to a host round robin, or at random with a seed), bounded by the
        spec's timeout; a failure becomes an outcome name."""
        n = len(self.spec.hosts)
        try:
            async with asyncio.timeout(self.spec.timeout):
                return await caller.call(
                    worker, i % n if self.spec.seed is None else self._rng.randrange(n)
                )
        except Exception as exc:
            name, detail = failure(exc)
            self.details.setdefault(name, detail)
            return name, 0

    def begin(self) -> None:
        """The window opens: start the probe, read the CPU clocks."""
        if self.probe:
            self.probe.begin()
        self._cpu = {name: tree_cpu(pid) for name, pid in self._pids.items()}

    def end(self) -> None:
        """The window closes: CPU seconds spent inside it, by process; stop the probe."""
        self._cpu = {name: tree_cpu(pid) - self._cpu[name] for name, pid in self._pids.items()}
        if self.probe:
            self.probe.end()

    def record(self, outcome: str, latency: float, nbytes: int) -> None:
        """One measured request (the spec's measured outcome: OK, unless it says)."""
        if outcome == self.spec.measured:
            self.latencies.append(latency)
            self.nbytes += nbytes
        else:
            self.errors[outcome] += 1

    def result(self, elapsed: float, finished: int | None = None) -> LoadResult:
        """The summary; CPU per request over `finished` requests (default: the successful)."""
        n = self.finished = len(self.latencies) if finished is None else finished
        cpu = Cpu(**{name: s / n * 1e6 if n else math.nan for name, s in self._cpu.items()})
        return LoadResult(
            backend=self.spec.backend, mode=self.spec.mode, ok=len(self.latencies),
            elapsed=elapsed, throughput=n / elapsed if elapsed > 0 else 0.0,
            latency=Latency.of(self.latencies), cpu=cpu, nbytes=self.nbytes,
            errors=dict(self.errors), error_details=self.details, scrapes=self.scrapes,
        )  # fmt: skip

    async def scrape(self, url: str) -> None:
        """GET url every second, as Prometheus would; fail loudly on a bad answer."""
        where = urlsplit(url)
        while True:
            reader, writer = await asyncio.open_connection(where.hostname, where.port)
            writer.write(f"GET {where.path} HTTP/1.1\r\nHost: {where.netloc}\r\n\r\n".encode())
            answer = await reader.read()
            writer.close()
            if not answer.startswith(b"HTTP/1.1 200") or b"scout_rpcs_total" not in answer:
                raise RuntimeError(f"GET {url}: {answer[:200]!r}")
            self.scrapes += 1
            await asyncio.sleep(1.0)


async def closed_loop(caller: Caller, w: Window) -> LoadResult:
    """N callers back to back, maybe paced; requests that start inside the window are
    measured, and throughput and CPU count those that also finish inside it."""
    loop = asyncio.get_running_loop()
    t1 = (t0 := (start := loop.time()) + w.spec.warmup) + w.spec.duration
    seq, finished = itertools.count(), 0

    async def worker(k: int) -> None:
        nonlocal finished
        while (began := loop.time()) < t1:
            i = next(seq)
            if w.spec.rate and (early := start + i / w.spec.rate - began) > 0:
                await asyncio.sleep(early)
                began = loop.time()
            outcome, nbytes = await w.call(caller, k, i)
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
    tasks: list[asyncio.Task[None]] = []

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
        tasks.append(loop.create_task(one(k, start + at)))
    await asyncio.gather(*tasks)
    w.end()
    return w.result(max(last_end - t0, least))


async def run(spec: LoadSpec) -> LoadResult:
    """Set up the caller (outside the window), run the mode, tear down."""
    caller, me = make_caller(spec), psutil.Process()
    rss_before = me.memory_info().rss
    await caller.setup()
    rss_after, w = me.memory_info().rss, Window(spec)
    scraper = asyncio.ensure_future(w.scrape(spec.scrape) if spec.scrape else asyncio.sleep(0))
    try:
        result = await (closed_loop if spec.mode == "closed" else open_loop)(caller, w)
        result.cipher = caller.cipher()
    finally:
        await caller.close()
    if scraper.done():
        scraper.result()  # a failed scrape fails the run
    scraper.cancel()
    counts = await w.probe.counts(w.finished) if w.probe else {}
    return dataclasses.replace(result, rss_before=rss_before, rss_after=rss_after, counts=counts)


def run_pssh(spec: LoadSpec) -> LoadResult:
    """parallel-ssh's burst (gevent, no asyncio): set up, then one run_command over every
    host and its join inside the window. Its API tells when all hosts are done, not when
    each was: the latency is the makespan's (max) alone."""
    caller, me = PsshCaller(spec), psutil.Process()
    rss_before = me.memory_info().rss
    caller.setup()
    rss_after, w = me.memory_info().rss, Window(spec)
    try:
        w.begin()
        began = time.perf_counter()
        outcomes = caller.burst()
        elapsed = time.perf_counter() - began
        w.end()
        cipher = caller.cipher()
    finally:
        caller.close()
    for outcome, nbytes in outcomes:
        w.record(outcome, elapsed, nbytes)
    result = w.result(elapsed)
    return dataclasses.replace(
        result, latency=Latency(max=result.latency.max), rss_before=rss_before,
        rss_after=rss_after, cipher=cipher,
    )  # fmt: skip


if __name__ == "__main__":
    keep_freed_memory()  # as scout's server and its `scout` command do
    spec = LoadSpec.from_dict(json.loads(sys.stdin.read()))
    pssh = spec.backend in ("pssh", "pssh_cold")
    print_json(dataclasses.asdict(run_pssh(spec) if pssh else asyncio.run(run(spec))))
