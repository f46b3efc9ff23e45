"""Scenario 14: what an idempotency key costs an Execute, with each store.

Scenario 1's load (one warm protocol-only host, closed-loop callers over CHANNELS
connections) on three scout servers in alternating rounds: no keys; a new key per
Execute with the SQLite store (a file in the bench's work directory); the same with a
real redis-server on loopback (testkit.redis). Each keyed round is compared with the
unkeyed round next to it: server CPU per Execute and P95 side by side.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from testkit.redis import start_redis

from .cost import paired
from .results import Section, met, num, times
from .rig import Rig
from .specs import LoadSpec

CALLERS, CHANNELS = 16, 4
RATE = 400.0  # requests a second, below what every server holds: CPU per request compared
#               at one rate, not at each server's own peak (where batching differs)
TARGET = 1.10  # a key costs at most 10 % more server CPU per Execute with SQLite
UNKEYED = "no key"
SQLITE = "a new key per Execute, SQLite store"
REDIS = "a new key per Execute, Redis store"


async def keyed(rig: Rig) -> Section:
    """Scenario 14: keyed and unkeyed Execute, server CPU per request and P95."""
    rounds = 2 * rig.mode.runs
    section = Section(
        14,
        "14. Keyed Execute: what an idempotency key costs",
        f"Scenario 1's load paced at {RATE:g} requests a second (one warm protocol-only host, "
        f"{CALLERS} closed-loop callers over {CHANNELS} gRPC connections, "
        f"{rig.mode.warmup:g} s warm-up, {rig.mode.duration:g} s measured; one rate for all, "
        "so each server's CPU per request is compared at the same load, not at its own peak), "
        f"{rounds} alternating rounds, on three scout servers: no keys; every "
        "Execute with a key of its own, so each one claims a record before it runs and "
        "writes its outcome after (the SQLite store: a WAL file in the bench's work "
        "directory; the Redis store: a real redis-server on loopback, persistence off). "
        "*vs no key*: the median over rounds of each round's ratio of server CPU per "
        "Execute (all processes; redis-server's own CPU is not counted) to the unkeyed one.",
        ["server", "req/s", "P95 ms", "errors", "server CPU µs/req", "vs no key: µs/req",
         "ratio"],
    )  # fmt: skip
    host = rig.fake_hosts[0]
    redis = await asyncio.to_thread(start_redis, rig.workdir / "redis")
    try:
        stores = {UNKEYED: "", SQLITE: f"sqlite:{rig.workdir / 'keyed.sqlite3'}", REDIS: redis.url}
        servers = {
            label: await rig.scout([host], rig.fake_auth(), durable=store)
            for label, store in stores.items()
        }
        spec = LoadSpec("scout", "closed", (host,), channels=CHANNELS, rate=RATE)
        load = rig.closed(spec, CALLERS)
        specs = {
            label: server.aim(load if label == UNKEYED else replace(load, keyed=True))
            for label, server in servers.items()
        }
        section.runs = runs = await rig.repeat("s14", rounds, specs)
        for server in servers.values():
            await server.stop()
    finally:
        await asyncio.to_thread(redis.stop)
    for label, rs in runs.items():
        diff, x, _ = paired(rs, runs[UNKEYED])
        cells = [num(rs.latency("p95"), 1), rs.errors_text(), num(rs.cpu("server"))]
        section.rows.append([label, num(rs.rate), *cells, f"{diff:+,.0f}", times(x)])
    sqlite_us, sqlite_x, each = paired(runs[SQLITE], runs[UNKEYED])
    section.verdict(
        "a key costs ≤ 10 % more server CPU per Execute with SQLite",
        f"{times(sqlite_x)} ({sqlite_us:+,.0f} µs)",
        met(sqlite_x, sqlite_x <= TARGET),
        f"round by round the ratio went from {times(min(each))} to {times(max(each))}.",
    )
    return section
