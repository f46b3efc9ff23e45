"""Scenario 8: ExecuteMany, one command on 200 hosts, at most 50 at once (issue 12).

scout: one ExecuteMany call naming every host, `max_parallel` 50; its makespan runs from
the call's start to its last message (one per host, bench.callers). Cold is a fresh
server with no connection; warm is the same call again on that server. Raw asyncssh does
the same in its load generator: an asyncio.Semaphore(50) and one command per host; cold
connects inside the semaphore, warm has every connection open before the clock. The fake
SSH server counts the channels open at once (the bound) and the handshakes.
"""

from __future__ import annotations

import math
from dataclasses import replace

from .fakessh import Counters
from .results import Runs, Section, num, ratio, times
from .rig import DELAY_MS, Rig, say
from .specs import LoadResult, LoadSpec

HOSTS = 200
PARALLEL = 50
TARGET = 1.25  # warm: scout's makespan at most this many times raw's
_COUNTS = ("peak_channels", "handshakes")  # the fake server's, per run (the table: the most)


async def fan_out(rig: Rig) -> Section:
    """Scenario 8: scout's ExecuteMany against raw asyncssh with a semaphore, cold and warm."""
    mode, hosts = rig.mode, tuple(rig.fake_hosts[:HOSTS])
    section = Section(
        8,
        f"8. Fan-out: one command on {HOSTS} hosts, max_parallel {PARALLEL}",
        f"`echo ok` on {HOSTS} protocol-only hosts ({DELAY_MS:g} ms connect delay). scout: "
        f"one `ExecuteMany` naming every host, `max_parallel = {PARALLEL}`; raw asyncssh: "
        f"an `asyncio.Semaphore({PARALLEL})` and one command per host, in its load "
        "generator. Makespan: from the call's start to the last host's answer. *Cold*: a "
        "fresh scout server, or raw connecting inside the semaphore; *warm*: the same call "
        "again on that server, or raw on connections opened before the clock (its "
        "handshakes are those). Peak channels: the most open at once at the SSH server. "
        "CPU per host as in scenario 1 (from 10 ms clock ticks: ±50 µs per host). "
        f"{mode.runs} runs, interleaved.",
        ["backend", "makespan ms", "P50 ms", "max ms", "per-host errors", "peak channels",
         "handshakes", "CPU µs/host: load gen.", "server", "SSH server", "total"],
    )  # fmt: skip
    raw = LoadSpec("raw", "burst", hosts, auth=rig.fake_auth(), concurrency=HOSTS)
    raw = replace(raw, parallel=PARALLEL, target_pid=rig.fake.pid)
    seen: dict[str, list[tuple[LoadResult, Counters]]] = {}

    async def measure(label: str, spec: LoadSpec) -> None:
        seen.setdefault(label, []).append(pair := await rig.counted(spec))
        say(f"[s8] {label} (peak channels {pair[1].peak_channels}): {pair[0].brief()}")

    for _ in range(mode.runs):
        await rig.quiet()
        server = await rig.scout(list(hosts), rig.fake_auth())
        try:
            await measure("scout, cold", many := replace(server.aim(raw), op="many"))
            await measure("scout, warm", many)
        finally:
            await server.stop()
        await rig.quiet()
        await measure("raw asyncssh, cold", replace(raw, backend="raw_cold"))
        await rig.quiet()
        await measure("raw asyncssh, warm", raw)
    for label in sorted(seen, key=lambda label: label.endswith("warm")):  # cold first
        section.runs[label] = rs = Runs(r for r, _ in seen[label])
        peak, shakes = (max(getattr(c, k) for _, c in seen[label]) for k in _COUNTS)
        cells = [num(rs.makespan_ms), num(rs.latency("p50"), 1), num(rs.latency("max"), 1)]
        cells += [rs.errors_text(), num(peak), num(shakes), *rs.cpu_cells()]
        section.rows.append([label, *cells])
    ms = {label: rs.makespan_ms for label, rs in section.runs.items()}
    cold, warm = (ratio(ms[f"scout, {t}"], ms[f"raw asyncssh, {t}"]) for t in ("cold", "warm"))
    section.notes.append(
        f"scout / raw asyncssh makespan: cold {times(cold)}, warm **{times(warm)}**"
    )
    scout, base = section.runs["scout, warm"], section.runs["raw asyncssh, warm"]
    total, raw_total = scout.cpu("total"), base.cpu("total")
    busy, raw_busy = scout.cpu("server") * HOSTS / 1000, base.cpu("loadgen") * HOSTS / 1000
    scout_ms, raw_ms = ms["scout, warm"], ms["raw asyncssh, warm"]
    section.verdict(
        f"warm makespan ≤ {TARGET:g}x raw asyncssh",
        times(warm),
        None if math.isnan(warm) else warm <= TARGET,
        f"scout's server process was busy {num(busy)} ms of its {num(scout_ms)} ms makespan "
        f"({num(100 * ratio(busy, scout_ms))} % of one core; one event loop cannot use "
        f"another), {num(scout.cpu('server'))} µs per host; the raw client's process "
        f"{num(raw_busy)} ms of its {num(raw_ms)} ms ({num(100 * ratio(raw_busy, raw_ms))} %), "
        f"{num(base.cpu('loadgen'))} µs per host. scout's server does the raw client's SSH "
        "work plus the gRPC hop and its own; all processes together spend "
        f"{num(total)} µs per host through scout (its gRPC client {num(scout.cpu('loadgen'))}, "
        f"the SSH server {num(scout.cpu('target'))}) against {num(raw_total)} µs with raw "
        "asyncssh.",
    )
    scouts = [pair for label, pairs in seen.items() if label.startswith("scout") for pair in pairs]
    errors = sum(sum(r.errors.values()) for r, _ in scouts)
    peak = max(c.peak_channels for _, c in scouts)
    section.verdict(
        f"no per-host error, at most {PARALLEL} channels at once",
        f"{errors} errors, peak {peak}",
        errors == 0 and peak <= PARALLEL,
    )
    return section
