"""Scenario 15: shedding under overload. 500 calls at once against a limit of 50, each
admitted call holding its place for a second: how soon do the refused ones hear
RESOURCE_EXHAUSTED, from scout and from grpc.aio's own limit with no work behind it?"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from .procs import Child
from .results import Runs, Section, met, num, ratio, times
from .rig import Rig
from .specs import LoadResult, LoadSpec

CALLS, LIMIT, HOLD = 500, 50, 1.0
CHANNELS = 10  # gRPC connections the 500 calls share, call k on k % CHANNELS
STEADY = 20  # callers of the closed loop of refusals
REFUSED = "RESOURCE_EXHAUSTED"
TARGET = 1.3  # scout's P95 time to a refusal, at most this many times the bare server's
FLOOR = f"bare grpc.aio, maximum_concurrent_rpcs={LIMIT}"


def _cpu_ms(r: LoadResult) -> float:
    """The server's CPU over the whole burst, ms (CPU per refused call x refused calls)."""
    return r.cpu.server * r.ok / 1000


async def shedding(rig: Rig) -> Section:
    """Scenario 15: scout's max_concurrent_rpcs against grpc's, hit the same way."""
    mode, host = rig.mode, rig.fake_hosts[0]
    runs = 2 * mode.runs
    section = Section(
        15,
        f"15. Overload: {CALLS} calls at once, max_concurrent_rpcs = {LIMIT}",
        f"{CALLS} Execute calls at once (over {CHANNELS} gRPC connections) of `sleep "
        f"{HOLD:g}`, to a server that admits {LIMIT}: scout with `max_concurrent_rpcs = "
        f"{LIMIT}` on one protocol-only host (which answers `sleep N` after N seconds; the "
        f"pool warmed by {LIMIT} calls first), and the gRPC floor of scenario 1 on a "
        f"grpc.aio server with `maximum_concurrent_rpcs={LIMIT}` (grpc refuses beyond it "
        "before any handler runs; an admitted call sleeps, no SSH). Time to refusal: from "
        "the burst's start to each RESOURCE_EXHAUSTED (nearest-rank percentiles over the "
        f"refused calls). Server CPU: over the whole burst, admitted calls included. {runs} "
        f"rounds, interleaved. Then, per refusal alone: {LIMIT} calls held (`sleep 600`), "
        f"{STEADY} callers back to back for {mode.duration:g} s, every call refused: the "
        "server's CPU per refused call (medians of as many rounds).",
        ["server", "refused", "admitted (OK)", "other", "P50 ms to refusal",
         "P95 ms to refusal", "max ms to refusal", "makespan ms", "server CPU ms",
         "CPU µs per refusal, alone"],
    )  # fmt: skip
    scout = await rig.scout([host], rig.fake_auth(), top={"max_concurrent_rpcs": LIMIT})
    floor = await rig.grpc_floor(limit=LIMIT)
    try:
        burst = LoadSpec("scout", "burst", (host,), command=f"sleep {HOLD:g}",
                         concurrency=CALLS, channels=CHANNELS, measured=REFUSED)  # fmt: skip
        warm = replace(scout.aim(burst), command="echo ok", concurrency=LIMIT, measured="OK")
        await rig.load(warm)
        out = await rig.repeat("s15", runs, {"scout": scout.aim(burst), FLOOR: floor.aim(burst)})
        alone = await _alone(rig, {"scout": scout, FLOOR: floor}, burst, runs)
    finally:
        await scout.stop()
        await floor.stop()
    section.runs = {**out, **{f"{k}, refusals alone": rs for k, rs in alone.items()}}
    for label, rs in out.items():
        other = Runs(
            replace(r, errors={k: n for k, n in r.errors.items() if k != "OK"}) for r in rs
        )
        section.rows.append([
            label, num(rs.median(lambda r: r.ok)), num(rs.median(lambda r: r.errors.get("OK", 0))),
            other.errors_text(), *(num(rs.latency(p), 1) for p in ("p50", "p95", "max")),
            num(rs.makespan_ms), num(rs.median(_cpu_ms)), num(alone[label].cpu("server")),
        ])  # fmt: skip
    ours, theirs = out["scout"].latency("p95"), out[FLOOR].latency("p95")
    pairs = zip(out["scout"], out[FLOOR], strict=True)
    each = [ratio(a.latency.p95, b.latency.p95) for a, b in pairs]
    value = ratio(ours, theirs)
    section.notes.append(
        f"scout / {FLOOR}, P95 time to RESOURCE_EXHAUSTED: **{times(value)}** "
        f"({num(ours, 1)} against {num(theirs, 1)} ms; round by round "
        f"{', '.join(times(e) for e in each)})"
    )
    cpu = [rs.median(_cpu_ms) for rs in out.values()]
    each_alone = [rs.cpu("server") for rs in alone.values()]
    section.notes.append(
        f"Server CPU per refused call, alone: scout {num(each_alone[0])} µs, the bare server "
        f"{num(each_alone[1])} µs ({times(ratio(*each_alone))})"
    )
    section.verdict(
        f"P95 time to RESOURCE_EXHAUSTED ≤ {TARGET:g}x a bare grpc.aio server's (issue 24)",
        times(value),
        met(value, value <= TARGET),
        f"a refusal alone costs scout's server {num(each_alone[0])} µs of CPU, the bare "
        f"server's {num(each_alone[1])}; over the burst scout's server spent {num(cpu[0])} ms "
        f"of CPU and the bare one {num(cpu[1])}: scout's {LIMIT} admitted calls do their SSH "
        "work (the channel opens and exec requests) on the core the refusals wait for.",
    )
    return section


async def _alone(
    rig: Rig, servers: dict[str, Child], burst: LoadSpec, runs: int
) -> dict[str, Runs]:
    """Each server's CPU per refused call with nothing else to do: LIMIT calls held, then a
    closed loop of calls that are all refused (one that is not fails by its timeout)."""
    hold = replace(burst, command="sleep 600", concurrency=LIMIT, timeout=900, measured="OK")
    holders = [asyncio.ensure_future(rig.load(s.aim(hold))) for s in servers.values()]
    try:
        await asyncio.sleep(2.0)  # every held call admitted (a warm pool, a bare server)
        refused = rig.closed(replace(burst, timeout=5.0), STEADY)
        return await rig.repeat("s15 alone", runs, {k: s.aim(refused) for k, s in servers.items()})
    finally:
        for holder in holders:
            holder.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
