"""Scenario 3: the load ladder, open loop on 100 warm hosts, and its plot (bench/ladder.png).

Arrivals come on a fixed schedule at each offered rate (100, 500, 1000, 2000 req/s and
up), spread round robin over 100 hosts whose connections are already warm. A rate is
*held* when P95 (from scheduled arrival, so queueing counts) stays at or under 50 ms, no
request fails, and at least 90 % of the offered rate completes. The ladder climbs until a
rate is not held; raw asyncssh (one connection per host, opened beforehand) and the
gRPC-only ExecService (bench.grpcfloor) climb the same ladder in the same invocation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from .results import CpuFigure, Runs, Section, num
from .rig import Rig, say
from .specs import LoadSpec

RATES = (100, 500, 1000, 1500, 2000, 2500, 3000, 4000, 5000, 6000, 8000, 10000)
HOSTS = 100
P95_LIMIT_MS = 50.0
MIN_ACHIEVED = 0.9
BACKENDS = {"scout": "scout", "raw": "raw asyncssh", "grpc": "gRPC alone, no SSH"}
PLOT = Path(__file__).resolve().parent / "ladder.png"


@dataclass
class Step:
    """One rate of one backend: its runs, their medians, and whether the rate was held."""

    rate: int
    runs: Runs

    @property
    def held(self) -> bool:
        """P95 within the limit, no errors, and enough of the rate completed."""
        runs = self.runs
        return (
            runs.latency("p95") <= P95_LIMIT_MS
            and not runs.errors
            and runs.rate >= MIN_ACHIEVED * self.rate
        )

    def row(self, label: str) -> list[str]:
        """The table row."""
        runs = self.runs
        cpu = [runs.cpu("loadgen"), runs.cpu("server")]
        cells = [*runs.latency_cells(), runs.errors_text(), *map(num, cpu)]
        return [label, num(self.rate), num(runs.rate), *cells, "yes" if self.held else "**no**"]


def highest_held(steps: list[Step]) -> int:
    """The highest rate held before the first rate that was not (0: none)."""
    best = 0
    for step in steps:
        if not step.held:
            break
        best = step.rate
    return best


async def ladder(rig: Rig) -> Section:
    """Climb the ladder with scout, raw asyncssh and gRPC alone, interleaved rate by rate."""
    mode, hosts = rig.mode, tuple(rig.fake_hosts[:HOSTS])
    section = Section(
        3,
        "3. Load ladder, 100 warm hosts, open loop",
        f"{HOSTS} protocol-only hosts, connections warmed first; open-loop arrivals at "
        f"each rate for {mode.ladder_step:g} s after 1 s of warm-up at that rate, "
        f"{mode.ladder_runs} run(s) per rate (medians). Held: P95 ≤ {P95_LIMIT_MS:g} ms "
        f"from the scheduled arrival, no errors, ≥ {MIN_ACHIEVED:.0%} of the rate completed. "
        "Raw asyncssh has one connection per host, opened beforehand; *gRPC alone* is "
        "scenario 1's ExecService that answers without SSH (the gRPC hop's own ceiling).",
        ["backend", "offered req/s", "achieved req/s", "P50 ms", "P95 ms", "P99 ms", "max ms",
         "errors", "CPU µs/req: load gen.", "server", "held"],
    )  # fmt: skip
    server = await rig.scout(list(hosts), rig.fake_auth())
    floor = await rig.grpc_floor()
    raw = LoadSpec(
        "raw",
        "open",
        hosts,
        auth=rig.fake_auth(),
        timeout=10.0,
        warmup=1.0,
        duration=mode.ladder_step,
        target_pid=rig.fake.pid,
    )
    specs = {"scout": server.aim(raw), "raw": raw, "grpc": floor.aim(raw)}
    steps: dict[str, list[Step]] = {key: [] for key in specs}
    try:
        warm = replace(specs["scout"], mode="closed", concurrency=HOSTS, warmup=0.0)
        say(f"[s3] warming {HOSTS} hosts: {(await rig.load(warm)).brief()}")
        for rate in RATES:
            for key in [k for k in specs if all(s.held for s in steps[k])]:
                runs = Runs()
                for run in range(mode.ladder_runs):
                    runs.append(await rig.load(replace(specs[key], rate=rate)))
                    say(f"[s3] {key} {rate}/s run {run + 1}: {runs[-1].brief()}")
                steps[key].append(Step(rate, runs))
                section.runs[f"{key} {rate}/s"] = runs
    finally:
        await server.stop()
        await floor.stop()
    section.rows = [step.row(BACKENDS[key]) for key in specs for step in steps[key]]
    held = {key: highest_held(steps[key]) for key in steps}
    section.notes.append(
        f"Highest rate held: scout **{held['scout']:,} req/s**; raw asyncssh "
        f"{held['raw']:,} req/s; gRPC alone {held['grpc']:,} req/s (the next rung up is "
        "the first not held)."
    )
    if any("CANCELLED" in s.runs.errors for k in steps for s in steps[k]):
        section.notes.append(
            "CANCELLED at an overloaded rung comes from grpc core, not from scout's code: "
            "calls that wait too long in the server's queue of not-yet-handled calls are "
            "shed (server arguments `grpc.server.max_pending_requests`, default 1000, and "
            "its hard limit, 3000), so an overloaded server answers CANCELLED after about a "
            "second rather than RESOURCE_EXHAUSTED."
        )
    if plot(steps, rig.caption):
        section.notes.append(f"![load ladder](bench/{PLOT.name})")
    by_rate = {key: {s.rate: s.runs for s in steps[key]} for key in steps}
    for rate, runs in by_rate["scout"].items():
        raw_runs, grpc_runs = by_rate["raw"].get(rate, Runs()), by_rate["grpc"].get(rate, Runs())
        measure = f"CPU µs per request, open loop {rate:,} req/s, 100 hosts"
        cpu = (runs.cpu("server"), raw_runs.cpu("loadgen"), grpc_runs.cpu("server"))
        section.cpu.append(CpuFigure(measure, *cpu))
    return section


def plot(steps: dict[str, list[Step]], caption: str) -> bool:
    """Latency percentiles against offered rate, one panel per backend; False if empty."""
    keys = [key for key in BACKENDS if steps.get(key)]
    if not keys:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, len(keys), figsize=(4.2 * len(keys), 4.6), dpi=110, sharey=True, squeeze=False
    )
    for ax, key in zip(axes[0], keys, strict=True):
        rates = [s.rate for s in steps[key]]
        for p, color in {"p50": "tab:blue", "p95": "tab:orange", "p99": "tab:red"}.items():
            values = [s.runs.latency(p) for s in steps[key]]  # NaN leaves a gap
            ax.plot(rates, values, "-", marker="o", color=color, label=p.upper())
        ax.axhline(P95_LIMIT_MS, color="grey", linewidth=1, linestyle=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{BACKENDS[key]}: held {highest_held(steps[key]):,} req/s", fontsize=10)
        ax.set_xlabel("offered rate, req/s (open loop)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel(f"latency from scheduled arrival, ms ({P95_LIMIT_MS:g} ms dotted)")
    fig.suptitle("Load ladder: 100 warm hosts, protocol-only SSH server", fontsize=11)
    fig.text(0.01, 0.01, caption, fontsize=7, color="grey")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(PLOT)
    plt.close(fig)
    return True
