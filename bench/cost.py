"""Scenario 7, and the profile that explains it: what one request and one connection cost.

CPU per Execute is the server process's CPU time (psutil, user + system) over a measured
window divided by the requests finished in it; it is read from scenarios 1 and 3. The raw
asyncssh client's own CPU per request (the load generator process) is beside it: that is
what the SSH client work costs with nothing else around it.

RSS per warm connection: a fresh server with 200 hosts serves a few requests on one host
(so every code path is loaded), then one request on each host; the RSS growth divided by
the new connections. The raw client's growth for 200 connections is the baseline.

The profile runs scenario 1's load once more against a server under cProfile and groups
its time by where the code lives (asyncssh, grpc, protobuf, asyncio, scout, C calls).
"""

from __future__ import annotations

import asyncio
import io
import math
import pstats
import signal
from pathlib import Path
from typing import Any

from .results import Section, median, median_of, num
from .rig import Mode, Rig, say

HOSTS = 200
COMMAND = "echo ok"


async def _scout_rss_per_conn(rig: Rig) -> dict[str, float]:
    """One fresh server: RSS before and after warming HOSTS connections."""
    hosts = rig.fake_hosts[:HOSTS]
    server = await rig.scout(hosts, rig.fake_login)
    try:
        spec = {"command": COMMAND, "target": server.target, "backend": "scout"}
        await rig.load({**spec, "hosts": hosts[:1], "mode": "sequence", "count": 50})
        await asyncio.sleep(0.5)
        await rig.fake_stats(reset=True)
        before = server.rss()
        await rig.load({**spec, "hosts": hosts, "mode": "burst", "concurrency": HOSTS})
        await asyncio.sleep(0.5)
        after = server.rss()
        new = int((await rig.fake_stats())["handshakes"])
    finally:
        await server.stop()
    return {
        "before": before,
        "after": after,
        "new": new,
        "per_conn": (after - before) / max(new, 1),
    }


async def _raw_rss_per_conn(rig: Rig) -> dict[str, float]:
    """The raw client's RSS growth for one connection to each of HOSTS hosts."""
    hosts = rig.fake_hosts[:HOSTS]
    r = await rig.load(
        {
            "hosts": hosts,
            "command": COMMAND,
            "backend": "raw",
            "auth": rig.auth(rig.fake_login),
            "per_host": 1,
            "mode": "sequence",
            "count": 1,
        }
    )
    grew = float(r["rss_after"] - r["rss_before"])
    return {"before": r["rss_before"], "after": r["rss_after"], "per_conn": grew / HOSTS}


async def cost(rig: Rig, mode: Mode, earlier: dict[str, Section]) -> Section:
    """Scenario 7: CPU per Execute (from 1 and 3) and RSS per warm connection."""
    section = Section(
        "s7",
        "7. Cost: CPU per Execute, memory per warm connection",
        "CPU per request = a process's CPU time over a measured window / requests finished "
        "in it (psutil). For scout and gRPC alone, the server process; for raw asyncssh, "
        "its own process (the SSH client work alone, no gRPC). RSS per warm connection: "
        f"RSS growth of a fresh server after one request to each of {HOSTS} hosts, per new "
        f"connection ({mode.rss_runs} run(s)); for raw asyncssh, its process's growth for "
        f"{HOSTS} connections.",
        ["measure", "scout", "raw asyncssh", "gRPC alone, no SSH", "from"],
    )
    s1 = earlier.get("s1")
    if s1 is not None:
        res = s1.raw["results"]
        section.rows.append(
            [
                "CPU µs per request, closed loop, 50 callers, 1 host",
                num(median_of(res["scout"], "server_cpu_us_per_req")),
                num(median_of(res["raw asyncssh"], "loadgen_cpu_us_per_req")),
                num(median_of(res["gRPC alone, no SSH"], "server_cpu_us_per_req")),
                "scenario 1",
            ]
        )
    s3 = earlier.get("s3")
    if s3 is not None:
        steps = s3.raw["steps"]
        for rate in sorted({step["rate"] for step in steps.get("scout", [])}):
            at = {k: next((s for s in v if s["rate"] == rate), None) for k, v in steps.items()}

            def cell(key: str, field: str, at: dict[str, Any] = at) -> str:
                step = at.get(key)
                return num(step[field]) if step else "—"

            section.rows.append(
                [
                    f"CPU µs per request, open loop {rate:,} req/s, 100 hosts",
                    cell("scout", "cpu_us"),
                    cell("raw", "loadgen_us"),
                    cell("grpc", "cpu_us"),
                    "scenario 3",
                ]
            )
    scout_rss = [await _scout_rss_per_conn(rig) for _ in range(mode.rss_runs)]
    raw_rss = [await _raw_rss_per_conn(rig) for _ in range(mode.rss_runs)]
    kib = median([r["per_conn"] for r in scout_rss]) / 1024
    raw_kib = median([r["per_conn"] for r in raw_rss]) / 1024
    say(f"[s7] RSS per warm connection: scout {kib:.0f} KiB, raw {raw_kib:.0f} KiB")
    section.rows.append(
        [
            "RSS KiB per warm connection",
            num(kib),
            num(raw_kib),
            "—",
            f"{HOSTS} hosts, one connection each",
        ]
    )
    section.notes.append(
        "Open loop, requests arrive one by one and each pays its own wake-ups, system calls "
        "and gRPC completions; a closed loop of 50 callers shares them. Per-request CPU is "
        "therefore highest at low rates."
    )
    section.raw = {"scout_rss": scout_rss, "raw_rss": raw_rss}
    return section


def _area(filename: str, name: str) -> str:
    """Which body of code a profiled function belongs to."""
    for marker, area in (
        ("/asyncssh/", "asyncssh (Python)"),
        ("/grpc/", "grpc (Python layer)"),
        ("/google/protobuf/", "protobuf (Python layer)"),
        ("/asyncio/", "asyncio (Python)"),
        ("/cryptography/", "cryptography (Python layer)"),
        ("/server/", "scout server code"),
        ("/scout/", "scout generated stubs"),
    ):
        if marker in filename:
            return area
    if filename != "~":
        return "other Python"
    if "_contextvars.Context" in name:
        # Own time of Context.run is the C code that callbacks run without a Python
        # frame: asyncio's C tasks and futures, and grpc's Cython core (cygrpc).
        return "C callbacks: asyncio C tasks, grpc Cython core"
    if any(word in name for word in ("socket", "epoll", "select")):
        return "system calls (sockets, epoll)"
    if any(word in name for word in ("Cipher", "Poly1305", "openssl", "_rust", "encrypt")):
        return "OpenSSL via cryptography (C)"
    return "other C functions and builtins"


def summarize_profile(path: Path, requests: int, cpu_us: float, top: int = 25) -> str:
    """CPU by area (shares, and cpu_us spread over them), then the top functions, as text."""
    stats = pstats.Stats(str(path))
    table: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in table.values()) or 1.0
    areas: dict[str, float] = {}
    for (filename, _, name), value in table.items():
        area = _area(filename, name)
        areas[area] = areas.get(area, 0.0) + value[2]
    out = io.StringIO()
    profiled = total / requests * 1e6 if requests else math.nan
    out.write(
        f"CPU by area: {total:.2f} s profiled over {requests:,} requests ({profiled:,.0f} µs "
        f"each under the profiler; {cpu_us:,.0f} µs each without it, from scenario 1)\n"
    )
    for area, seconds in sorted(areas.items(), key=lambda kv: -kv[1]):
        share = seconds / total
        spread = "" if math.isnan(cpu_us) else f"  ~{share * cpu_us:5.0f} µs/request"
        out.write(f"  {area:<48} {share:6.1%}{spread}\n")
    calls: dict[str, int] = {}
    for (_, _, name), value in table.items():
        calls[name] = calls.get(name, 0) + value[1]
    if requests:

        def per(name: str) -> str:
            return f"{calls.get(name, 0) / requests:.1f}"

        out.write(
            f"\nper request: {per('_run')} event-loop callbacks, {per('create_task')} tasks, "
            f"{per('create_future')} futures, {per('call_later')} timers; "
            f"{per('_recv_packet')} SSH packets received, {per('encrypt_and_sign')} sent\n"
        )
    scout = sorted(
        ((value[3], filename, line, name) for (filename, line, name), value in table.items()),
        reverse=True,
    )
    scout = [row for row in scout if "/server/" in row[1]][:10]
    out.write("\nscout functions by cumulative share (a coroutine's share counts its steps):\n")
    for cum, filename, line, name in scout:
        where = f"{filename.split('/server/')[-1]}:{line} {name}"
        out.write(f"  {cum / total:6.1%}  server/{where}\n")
    out.write(f"\ntop {top} functions by own time:\n")
    buffer = io.StringIO()
    stats.stream = buffer  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(top)
    lines = buffer.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    out.write("\n".join(line.replace(str(Path.cwd()) + "/", "") for line in lines[start:]))
    return out.getvalue().rstrip() + "\n"


def _size(path: Path) -> int:
    """The file's size, -1 while it does not exist."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


async def _written(path: Path, within: float = 30.0) -> None:
    """Wait until the profile file exists and has stopped growing."""
    size = -1
    for _ in range(int(within / 0.2)):
        now = _size(path)
        if now > 0 and now == size:
            return
        size = now
        await asyncio.sleep(0.2)


async def profile(rig: Rig, mode: Mode, cpu_us: float) -> dict[str, Any]:
    """Scenario 1's load against a server under cProfile, profiled in the window only."""
    host = rig.fake_hosts[0]
    prof = rig.workdir / "scout.prof"
    server = await rig.scout([host], rig.fake_login, profile=prof)
    spec = {
        "hosts": [host],
        "command": COMMAND,
        "mode": "closed",
        "concurrency": 50,
        "backend": "scout",
        "target": server.target,
        "server_pid": server.pid,
    }
    try:
        await rig.load({**spec, "warmup": 0.0, "duration": mode.warmup})
        await rig.fake_stats(reset=True)
        server.signal(signal.SIGUSR1)
        result = await rig.load({**spec, "warmup": 0.0, "duration": mode.duration})
        server.signal(signal.SIGUSR2)
        served = int((await rig.fake_stats())["execs"])
        await _written(prof)
    finally:
        await server.stop()
    if _size(prof) <= 0:
        return {"text": "(the profiled server wrote no profile)", "result": result}
    text = summarize_profile(prof, served, cpu_us)
    say("[profile] done")
    return {"text": text, "result": result, "requests": served}
