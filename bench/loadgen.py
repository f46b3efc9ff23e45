"""The load generator process: one spec in (JSON on stdin), one result out (JSON line).

It runs in its own process, apart from the server under test, and drives one caller
(bench.callers) in one of four ways:

    closed    N workers, each starts its next request when the last one ends
    open      arrivals on a fixed schedule (rate per second); a request's latency is
              counted from its *scheduled* time, so a server that falls behind shows
              its queueing instead of slowing the generator down (no coordinated omission)
    burst     N requests at once, one per host: the makespan is the time until the last ends
    sequence  `count` requests one after another (the Stream throughput test)

Latency percentiles are over successful requests; failures are counted by outcome.
CPU per request is reported for this process, the server under test (`server_pid`) and
the SSH target's process tree (`target_pid`), each over the measured window.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import psutil

from .callers import OK, Caller, error_detail, error_name, make_caller
from .procs import print_ready
from .results import latency_summary

Pick = Callable[[int], int]
SLOW = 0.020  # seconds: open-loop requests slower than this are listed with their times
_SLOW_KEPT = 5000


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its descendants, reaped children included.

    An sshd's session processes come and go; once reaped, their time shows in their
    parent's children_user/children_system, so the sum over the live tree keeps it.
    """
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return float("nan")
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


class Window:
    """Outcomes and latencies of the requests inside the measured window, and CPU spent.

    CPU is read at the window's edges for this process (the load generator), the server
    under test (`server_pid`) and the SSH target's process tree (`target_pid`).
    """

    def __init__(self, server_pid: int | None, target_pid: int | None = None) -> None:
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self.nbytes = 0
        self._pids = {"loadgen": psutil.Process().pid}
        if server_pid:
            self._pids["server"] = server_pid
        if target_pid:
            self._pids["target"] = target_pid
        self._cpu0: dict[str, float] = {}
        self.cpu_s: dict[str, float] = {}
        self.span = (0.0, 0.0)  # the window on the system's monotonic clock
        self.slow: list[tuple[float, float]] = []  # (start, latency) of slow requests

    @property
    def cpu(self) -> float:
        """The server's CPU seconds in the window (NaN without a server)."""
        return self.cpu_s.get("server", float("nan"))

    def begin(self) -> None:
        """The window opens: read the CPU clocks."""
        self._cpu0 = {name: tree_cpu(pid) for name, pid in self._pids.items()}
        self.span = (time.monotonic(), 0.0)

    def end(self) -> None:
        """The window closes: CPU seconds spent inside it, by process."""
        self.cpu_s = {name: tree_cpu(pid) - self._cpu0[name] for name, pid in self._pids.items()}
        self.span = (self.span[0], time.monotonic())

    def per_request(self, count: int) -> dict[str, float]:
        """CPU µs per request for each measured process, over count requests."""
        names = ("loadgen", "server", "target")
        return {
            f"{name}_cpu_us_per_req": self.cpu_s.get(name, float("nan")) / count * 1e6
            if count
            else float("nan")
            for name in names
        }

    def record(self, outcome: str, latency: float, nbytes: int, at: float = 0.0) -> None:
        """One finished request (started at `at`, monotonic, when known)."""
        if outcome == OK:
            self.latencies.append(latency)
            self.nbytes += nbytes
        else:
            self.errors[outcome] += 1
        if at and latency > SLOW and len(self.slow) < _SLOW_KEPT:
            self.slow.append((at, latency))

    def result(self, elapsed: float, **extra: Any) -> dict[str, Any]:
        """The JSON-able summary."""
        ok = len(self.latencies)
        return {
            "ok": ok,
            "errors": dict(self.errors),
            "elapsed": elapsed,
            "throughput": ok / elapsed if elapsed > 0 else 0.0,
            "latency": latency_summary(self.latencies),
            "bytes": self.nbytes,
            "server_cpu": self.cpu,
            **self.per_request(ok),
            "window": list(self.span),
            "slow": self.slow,
            **extra,
        }


_details: dict[str, str] = {}  # the first detail of each error outcome in this process


async def _timed(caller: Caller, worker: int, host: int, limit: float) -> tuple[str, int]:
    """One call, bounded by limit seconds, with failures turned into outcome names."""
    try:
        async with asyncio.timeout(limit):
            return await caller.call(worker, host)
    except Exception as exc:
        name = error_name(exc)
        _details.setdefault(name, error_detail(exc))
        return name, 0


async def closed_loop(
    caller: Caller, pick: Pick, window: Window, *, n: int, warmup: float, duration: float, t: float
) -> dict[str, Any]:
    """n workers back to back; requests that start inside the window are measured."""
    loop = asyncio.get_running_loop()
    t0 = loop.time() + warmup
    t1 = t0 + duration
    seq = itertools.count()
    completed = 0

    async def worker(w: int) -> None:
        nonlocal completed
        while (began := loop.time()) < t1:
            outcome, nbytes = await _timed(caller, w, pick(next(seq)), t)
            ended = loop.time()
            if began >= t0:
                window.record(outcome, ended - began, nbytes)
                completed += ended <= t1

    async def clock() -> None:
        await asyncio.sleep(max(t0 - loop.time(), 0))
        window.begin()
        await asyncio.sleep(max(t1 - loop.time(), 0))
        window.end()

    await asyncio.gather(clock(), *(worker(w) for w in range(n)))
    result = window.result(duration, concurrency=n)
    result["throughput"] = completed / duration  # requests finished inside the window
    if completed:  # CPU inside the window, per request finished inside it
        result.update(window.per_request(completed))
    return result


async def open_loop(
    caller: Caller,
    pick: Pick,
    window: Window,
    *,
    rate: float,
    warmup: float,
    duration: float,
    t: float,
) -> dict[str, Any]:
    """Arrivals every 1/rate seconds; latency counts from each arrival's scheduled time."""
    loop = asyncio.get_running_loop()
    interval = 1.0 / rate
    total = round((warmup + duration) * rate)
    first = round(warmup * rate)
    start = loop.time() + 0.05
    t0 = start + first * interval
    last_end = t0
    tasks: set[asyncio.Task[None]] = set()

    async def one(k: int, scheduled: float) -> None:
        nonlocal last_end
        outcome, nbytes = await _timed(caller, k, pick(k), t)
        ended = loop.time()
        if k >= first:
            window.record(outcome, ended - scheduled, nbytes, scheduled)
            last_end = max(last_end, ended)

    k = 0
    while k < total:
        now = loop.time()
        while k < total and start + k * interval <= now:
            if k == first:
                window.begin()
            task = loop.create_task(one(k, start + k * interval))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            k += 1
        if k < total:
            await asyncio.sleep(max(start + k * interval - loop.time(), 0))
    lag = loop.time() - (start + (total - 1) * interval)  # how late the last arrival left
    await asyncio.gather(*tasks)
    window.end()
    result = window.result(max(last_end - t0, duration), offered=rate, dispatch_lag_ms=lag * 1e3)
    result["achieved"] = result["ok"] / max(last_end - t0, duration)
    return result


async def burst(caller: Caller, pick: Pick, window: Window, n: int, t: float) -> dict[str, Any]:
    """n requests at the same moment; the makespan is until the last one ends."""
    loop = asyncio.get_running_loop()
    window.begin()
    start = loop.time()

    async def one(i: int) -> None:
        outcome, nbytes = await _timed(caller, i, pick(i), t)
        window.record(outcome, loop.time() - start, nbytes)

    await asyncio.gather(*(one(i) for i in range(n)))
    makespan = loop.time() - start
    window.end()
    return window.result(makespan, makespan=makespan, concurrency=n)


async def sequence(
    caller: Caller, pick: Pick, window: Window, count: int, t: float
) -> dict[str, Any]:
    """count requests one after another; reports MiB/s of output."""
    loop = asyncio.get_running_loop()
    window.begin()
    start = loop.time()
    for i in range(count):
        began = loop.time()
        outcome, nbytes = await _timed(caller, 0, pick(i), t)
        window.record(outcome, loop.time() - began, nbytes)
    elapsed = loop.time() - start
    window.end()
    result = window.result(elapsed)
    result["mib_s"] = window.nbytes / elapsed / 2**20 if elapsed > 0 else 0.0
    return result


def _picker(spec: dict[str, Any]) -> Pick:
    """Which host request number i goes to: round robin, or seeded random."""
    n = len(spec["hosts"])
    if spec.get("pick") == "random":
        rng = random.Random(spec.get("seed", 1))
        return lambda _i: rng.randrange(n)
    return lambda i: i % n


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Set up the caller, run the mode, tear down; the result includes setup costs."""
    caller = make_caller(spec)
    pick = _picker(spec)
    window = Window(spec.get("server_pid"), spec.get("target_pid"))
    limit = float(spec.get("timeout", 30.0))
    loop = asyncio.get_running_loop()
    rss0, began = _rss(), loop.time()
    await caller.setup()
    setup = {"setup_s": loop.time() - began, "rss_before": rss0, "rss_after": _rss()}
    try:
        mode = spec["mode"]
        times = {"warmup": spec.get("warmup", 0.0), "duration": spec.get("duration", 1.0)}
        if mode == "closed":
            n = spec["concurrency"]
            result = await closed_loop(caller, pick, window, n=n, t=limit, **times)
        elif mode == "open":
            rate = spec["rate"]
            result = await open_loop(caller, pick, window, rate=rate, t=limit, **times)
        elif mode == "burst":
            result = await burst(caller, pick, window, spec["concurrency"], limit)
        elif mode == "sequence":
            result = await sequence(caller, pick, window, spec.get("count", 1), limit)
        else:
            raise ValueError(f"unknown mode {mode!r}")
    finally:
        await caller.close()
    result["error_details"] = dict(_details)
    return {**result, **setup, "backend": spec["backend"], "mode": spec["mode"]}


def main() -> None:
    """`python -m bench.loadgen < spec.json`."""
    spec = json.loads(sys.stdin.read())
    print_ready(**asyncio.run(run(spec)))


if __name__ == "__main__":
    main()
