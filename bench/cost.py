"""Scenario 7: what one request and one connection cost.

CPU per request is the server process's CPU time (psutil, user + system) over a measured
window divided by the requests finished in it. The scenarios that ran before this one
measured it (their `Section.cpu` figures); this one gathers them in one table. The raw
asyncssh client's own CPU per request (the load generator process) is beside it: what the
SSH client work costs with nothing else around it.

RSS per warm connection: a fresh server with 200 hosts serves requests on one host for a
moment (so every code path is loaded), then one request on each host; the RSS growth
divided by the new connections. The raw client's growth for 200 connections is the
baseline.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import psutil

from .results import Section, median, num
from .rig import Rig, say
from .specs import LoadSpec

HOSTS = 200


async def _scout_rss_per_conn(rig: Rig) -> float:
    """One fresh server: RSS growth per connection after warming HOSTS connections."""
    hosts = tuple(rig.fake_hosts[:HOSTS])
    server = await rig.scout(list(hosts), rig.fake_auth())
    try:
        one_host = LoadSpec("scout", "closed", hosts[:1], warmup=0.0, duration=0.5)
        await rig.load(server.aim(one_host))
        await asyncio.sleep(0.5)
        await rig.stats(reset=True)
        process = psutil.Process(server.pid)
        before = int(process.memory_info().rss)
        await rig.load(server.aim(replace(one_host, mode="burst", hosts=hosts, concurrency=HOSTS)))
        await asyncio.sleep(0.5)
        grew = int(process.memory_info().rss) - before
        new = (await rig.stats()).handshakes
    finally:
        await server.stop()
    return grew / max(new, 1)


async def _raw_rss_per_conn(rig: Rig) -> float:
    """The raw client's RSS growth per connection, for one to each of HOSTS hosts."""
    hosts = tuple(rig.fake_hosts[:HOSTS])
    r = await rig.load(LoadSpec("raw", "burst", hosts, auth=rig.fake_auth()))
    return (r.rss_after - r.rss_before) / HOSTS


async def cost(rig: Rig) -> Section:
    """Scenario 7: CPU per Execute (from the scenarios before) and RSS per warm connection."""
    section = Section(
        7,
        "7. Cost: CPU per Execute, memory per warm connection",
        "CPU per request = a process's CPU time over a measured window / requests finished "
        "in it (psutil). For scout and gRPC alone, the server process; for raw asyncssh, "
        "its own process (the SSH client work alone, no gRPC). RSS per warm connection: "
        f"RSS growth of a fresh server after one request to each of {HOSTS} hosts, per new "
        f"connection ({rig.mode.rss_runs} run(s)); for raw asyncssh, its process's growth for "
        f"{HOSTS} connections.",
        ["measure", "scout", "raw asyncssh", "gRPC alone, no SSH", "from"],
    )
    for n, earlier in sorted(rig.sections.items()):
        for f in earlier.cpu:
            section.rows.append([f.measure, num(f.scout), num(f.raw), num(f.grpc), f"scenario {n}"])
    kib = median([await _scout_rss_per_conn(rig) for _ in range(rig.mode.rss_runs)]) / 1024
    raw_kib = median([await _raw_rss_per_conn(rig) for _ in range(rig.mode.rss_runs)]) / 1024
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
    return section
