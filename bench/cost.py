"""Scenarios 7, 9 and 12: what a request, a connection and operating scout cost.

Scenario 9 runs scenario 1's load (over CHANNELS connections) on one scout-server per
entry of VARIANTS (its extra flags), in alternating rounds, each compared with the default
round by round. With `--workers N` the rig finds the gRPC port in whichever process of the
server's tree listens, and the load generator reads the CPU of the whole tree.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import psutil

from .ladder import BACKENDS, RATES
from .procs import METRICS_HOST, SYSCALLS
from .results import Runs, Section, median, met, num, ratio, times
from .rig import Rig, say
from .specs import LoadSpec

HOSTS = 200


async def rss_per_conn(rig: Rig) -> tuple[float, float]:
    """RSS growth per new connection: of a fresh scout server once warm on one host, after
    one request to each of HOSTS hosts; of the raw client, for one connection to each."""
    hosts = tuple(rig.fake_hosts[:HOSTS])
    server = await rig.scout(list(hosts), rig.fake_auth())
    one_host = LoadSpec("scout", "closed", hosts[:1], warmup=0.0, duration=0.5)
    await rig.load(server.aim(one_host))  # every code path loaded
    await asyncio.sleep(0.5)
    before = psutil.Process(server.pid).memory_info().rss
    burst = replace(one_host, mode="burst", hosts=hosts, concurrency=HOSTS)
    new = (await rig.counted(server.aim(burst))).seen["handshakes"]
    await asyncio.sleep(0.5)
    grew = psutil.Process(server.pid).memory_info().rss - before
    await server.stop()
    raw = await rig.load(LoadSpec("raw", "burst", hosts, auth=rig.fake_auth()))
    return grew / max(new, 1), (raw.rss_after - raw.rss_before) / HOSTS


async def cost(rig: Rig) -> Section:
    """Scenario 7: CPU per Execute (from the scenarios before) and RSS per warm connection."""
    section = Section(
        7,
        "7. Cost: CPU per Execute, memory per warm connection",
        "CPU per request of the server process (scout, gRPC alone) or of raw asyncssh's own "
        "(the SSH client work alone), from the scenarios before. RSS per warm connection: "
        f"the growth of a fresh server after one request to each of {HOSTS} hosts, per new "
        f"connection ({rig.mode.rss_runs} run(s)); for raw asyncssh, its own growth.",
        ["measure", "scout", "raw asyncssh", "gRPC alone, no SSH", "from"],
    )
    one = ("closed loop, 50 callers, 1 host", 1, "scout", "raw asyncssh", "gRPC alone, no SSH")
    ladder = [
        (f"open loop {r:,} req/s, 100 hosts", 3, *(f"{k} {r}/s" for k in BACKENDS)) for r in RATES
    ]
    for measure, n, scout, raw, grpc in [one, *ladder]:  # the server, the raw client, gRPC alone
        runs = rig.sections[n].runs if n in rig.sections else {}
        cells = [
            num(runs[k].cpu(p)) if k in runs else "—"
            for k, p in ((scout, "server"), (raw, "loadgen"), (grpc, "server"))
        ]
        if scout in runs:
            section.rows.append([f"CPU µs per request, {measure}", *cells, f"scenario {n}"])
    scout, raw = zip(*[await rss_per_conn(rig) for _ in range(rig.mode.rss_runs)], strict=True)
    kib, raw_kib = median(scout) / 1024, median(raw) / 1024
    say(f"[s7] RSS per warm connection: scout {kib:.0f} KiB, raw {raw_kib:.0f} KiB")
    cells = [num(kib), num(raw_kib), "—", f"{HOSTS} hosts, one connection each"]
    section.rows.append(["RSS KiB per warm connection", *cells])
    return section


CALLERS, CHANNELS = 50, 10  # several connections, which SO_REUSEPORT spreads over workers
METRICS_TARGET = 1.05  # issue 13: metrics on costs under 5 % more server CPU per Execute
JSON = ("--log-format", "json")
DEFAULT = "default: one process, access log at INFO (JSON), no metrics"
METRICS = "[metrics] listen, scraped every second"
QUIET = "log level WARNING: no access line"
VARIANTS = {
    DEFAULT: JSON,
    METRICS: (*JSON, "--metrics", f"{METRICS_HOST}:0"),
    QUIET: (*JSON, "--log-level", "WARNING"),
    "--workers 2 (unpinned)": (*JSON, "--workers", "2"),
}


def paired(runs: Runs, base: Runs) -> tuple[float, float, list[float]]:
    """Medians over rounds of server CPU per request minus, and over, base's; the ratios."""
    pairs = [(r.cpu.server, b.cpu.server) for r, b in zip(runs, base, strict=True)]
    ratios = [ratio(r, b) for r, b in pairs]
    return median([r - b for r, b in pairs]), median(ratios), ratios


async def overhead(rig: Rig) -> Section:
    """Scenario 9: server CPU per Execute with metrics, the access log, (workers) on or off."""
    rounds = 2 * rig.mode.runs
    section = Section(
        9,
        "9. Operating costs: metrics, the access log, and a second worker",
        f"Scenario 1's load (one warm protocol-only host, {CALLERS} closed-loop callers over "
        f"{CHANNELS} gRPC connections, {rig.mode.warmup:g} s warm-up, {rig.mode.duration:g} s "
        f"measured) on scout servers that differ by flags, {rounds} alternating rounds. *vs "
        "default*: the median over rounds of each round's difference (and ratio) of server "
        "CPU per Execute (all processes) to the default's. The default writes one JSON access "
        "line per RPC to a file; with `[metrics] listen` (here `--metrics`) the load "
        "generator also GETs `/metrics` every second, as Prometheus would.",
        ["server", "req/s", "P95 ms", "errors", "scrapes", "server CPU µs/req",
         "vs default: µs/req", "ratio"],
    )  # fmt: skip
    host = rig.fake_hosts[0]
    load = rig.closed(LoadSpec("scout", "closed", (host,), channels=CHANNELS), CALLERS)
    servers = {k: await rig.scout([host], rig.fake_auth(), args=v) for k, v in VARIANTS.items()}
    specs = {label: server.aim(load) for label, server in servers.items()}
    section.runs = runs = await rig.repeat("s9", rounds, specs)
    for server in servers.values():
        await server.stop()
    for label, rs in runs.items():
        diff, times_base, _ = paired(rs, runs[DEFAULT])
        cells = [num(rs.latency("p95"), 1), rs.errors_text(), num(sum(r.scrapes for r in rs))]
        cells += [num(rs.cpu("server")), f"{diff:+,.0f}", times(times_base)]
        section.rows.append([label, num(rs.rate), *cells])
    metrics_us, metrics_x, each = paired(runs[METRICS], runs[DEFAULT])
    quiet_us, quiet_x, _ = paired(runs[QUIET], runs[DEFAULT])
    section.verdict(
        "metrics on: server CPU per Execute < 5 % above metrics off",
        f"{times(metrics_x)} ({metrics_us:+,.0f} µs)",
        met(metrics_x, metrics_x <= METRICS_TARGET),
        f"round by round the ratio went from {times(min(each))} to {times(max(each))}.",
    )
    section.notes.append(
        f"Without the access line the server spends {quiet_us:+,.0f} µs per Execute "
        f"({times(quiet_x)} the default's CPU)."
    )
    return section


EVENTS = ("callbacks", "tasks", "futures", "timers", "loop iterations", "epoll waits")


async def anatomy(rig: Rig) -> Section:
    """Scenario 12 (not in the default set): where a warm Execute's CPU goes."""
    section = Section(
        12,
        "12. Anatomy of a warm Execute (per request)",
        "Scenario 1's load, counted in three processes: the scout server, gRPC alone, and "
        "the raw asyncssh client (the load generator itself; scenario 1 has their CPU). "
        "System calls: `perf stat` over the window; event-loop work: the process runs with "
        "its event loop counted (`bench/procs.py`): exact counts whatever else runs.",
        ["per request", SYSCALLS, *EVENTS],
    )
    host = rig.fake_hosts[0]
    raw = LoadSpec("raw", "closed", (host,), auth=rig.fake_auth(), per_host=7, probe=True)
    raw, rows = rig.closed(raw, CALLERS), {}
    for kind in ("scout", "gRPC alone", "raw client"):
        if kind == "raw client":
            result = await rig.load(raw, count=True)
        else:
            start = rig.scout([host], rig.fake_auth(), count=True) if kind == "scout" else None
            server = await (start or rig.grpc_floor(count=True))
            result = await rig.load(server.aim(raw))
            await server.stop()
        section.runs[kind] = Runs([result])
        rows[kind] = [result.counts.get(e, 0.0) for e in (SYSCALLS, *EVENTS)]
        say(f"[s12] {kind}: {result.brief()}")
    floor = [a + b for a, b in zip(rows["gRPC alone"], rows["raw client"], strict=True)]
    rows["gRPC alone + raw client"] = floor
    rows["scout minus that floor"] = [a - b for a, b in zip(rows["scout"], floor, strict=True)]
    section.rows = [[kind, *(num(v, 1) for v in row)] for kind, row in rows.items()]
    return section
