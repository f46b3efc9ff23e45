"""Scenarios 3 and 11: the load ladder, open loop on 100 warm hosts, and its plot.

scout, raw asyncssh and gRPC alone climb the same rates, interleaved rate by rate, each
until a rate is not held (P95 from the scheduled arrival within 50 ms, no error, 90 % of
the rate completed); scenario 11 climbs it pinned, the gateway on its own core.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, replace
from pathlib import Path

from .results import Runs, Section, met, num
from .rig import PINNED, Rig, say
from .specs import Host, LoadSpec

RATES = (100, 500, 1000, 1500, 2000, 2500, 3000, 4000, 5000, 6000, 8000, 10000)
HOSTS = 100
P95_LIMIT_MS = 50.0
HELD_TARGET = 1500  # issue 24: req/s held on the same 2 cores
MIN = 0.9  # of the offered rate achieved
BACKENDS = {"scout": "scout", "raw": "raw asyncssh", "grpc": "gRPC alone, no SSH"}
PLOT = Path(__file__).resolve().parent / "ladder.png"


@dataclass
class Step:
    """One rate of one backend: its runs, and whether the rate was held."""

    rate: int
    runs: Runs

    @property
    def held(self) -> bool:
        """P95 within the limit, no errors, and enough of the rate completed."""
        r = self.runs
        return r.latency("p95") <= P95_LIMIT_MS and not r.errors and r.rate >= MIN * self.rate


def highest_held(steps: list[Step]) -> int:
    """The highest rate held before the first rate that was not (0: none)."""
    return max((s.rate for s in itertools.takewhile(lambda s: s.held, steps)), default=0)


async def ladder(rig: Rig, pinned: bool = False) -> Section:
    """Climb the ladder with scout, raw asyncssh and gRPC alone, interleaved rate by rate;
    pinned (scenario 11), with the gateway on its own core as in scenario 10."""
    mode, hosts = rig.mode, tuple(rig.fake_hosts[:HOSTS])
    section = Section(
        11 if pinned else 3,
        "11. Pinned: the load ladder with the gateway on its own core"
        if pinned
        else "3. Load ladder, 100 warm hosts, open loop",
        f"{HOSTS} protocol-only hosts, connections warmed first; open-loop arrivals at "
        f"each rate for {mode.ladder_step:g} s after 1 s of warm-up at that rate, "
        f"{mode.ladder_runs} run(s) per rate (medians). Held: P95 ≤ {P95_LIMIT_MS:g} ms "
        f"from the scheduled arrival, no errors, ≥ {MIN:.0%} of the rate completed. "
        "Raw asyncssh has one connection per host, opened beforehand; *gRPC alone* is "
        "scenario 1's ExecService that answers without SSH (the gRPC hop's own ceiling). "
        "CANCELLED at an overloaded rung: see Method." + PINNED * pinned,
        ["backend", "offered req/s", "achieved req/s", "P50 ms", "P95 ms", "P99 ms", "max ms",
         "errors", "CPU µs/req: load gen.", "server", "held"],
    )  # fmt: skip
    async with rig.pinned() if pinned else contextlib.nullcontext():
        steps = await climb(rig, hosts, section)
    for key, step in [(k, step) for k in steps for step in steps[k]]:
        r, mark = step.runs, "yes" if step.held else "**no**"
        cells = [*r.latency_cells(), r.errors_text(), num(r.cpu("loadgen")), num(r.cpu("server"))]
        section.rows.append([BACKENDS[key], num(step.rate), num(r.rate), *cells, mark])
    held = {key: highest_held(steps[key]) for key in steps}
    section.notes.append(
        f"Highest rate held: scout **{held['scout']:,} req/s**; raw asyncssh "
        f"{held['raw']:,} req/s; gRPC alone {held['grpc']:,} req/s (the next rung up is "
        "the first not held)."
    )
    if not pinned:
        best = max(steps["scout"], key=lambda step: step.runs.rate)
        section.verdict(
            f"≥ {HELD_TARGET:,} req/s held on the same 2 cores (issue 24)",
            f"{held['scout']:,} req/s",
            met(held["scout"], held["scout"] >= HELD_TARGET),
            f"gRPC alone, with no SSH behind it, held {held['grpc']:,} req/s and raw "
            f"asyncssh {held['raw']:,}; scout's fastest rung completed {num(best.runs.rate)} "
            f"req/s at {num(best.runs.cpu('server'))} µs of server CPU each: both cores are "
            "shared with the load generator and the SSH server.",
        )
        plot(steps, rig.caption)
        section.notes.append(f"![load ladder](bench/{PLOT.name})")
    return section


async def climb(rig: Rig, hosts: tuple[Host, ...], section: Section) -> dict[str, list[Step]]:
    """Each backend up the rates, interleaved, until a rate is not held."""
    server = await rig.scout(list(hosts), rig.fake_auth())
    floor = await rig.grpc_floor()
    raw = LoadSpec("raw", "open", hosts, auth=rig.fake_auth(), timeout=10.0, warmup=1.0,
                   duration=rig.mode.ladder_step, target_pid=rig.fake.pid)  # fmt: skip
    specs = {"scout": server.aim(raw), "raw": raw, "grpc": floor.aim(raw)}
    steps: dict[str, list[Step]] = {key: [] for key in specs}
    tag = f"s{section.number}"
    warm = replace(specs["scout"], mode="closed", concurrency=HOSTS, warmup=0.0)
    say(f"[{tag}] warming {HOSTS} hosts: {(await rig.load(warm)).brief()}")
    for rate in RATES:
        for key in [k for k in specs if all(s.held for s in steps[k])]:
            runs = Runs()
            for run in range(rig.mode.ladder_runs):
                runs.append(await rig.load(replace(specs[key], rate=rate)))
                say(f"[{tag}] {key} {rate}/s run {run + 1}: {runs[-1].brief()}")
            steps[key].append(Step(rate, runs))
            section.runs[f"{key} {rate}/s"] = runs
    await server.stop()
    await floor.stop()
    return steps


def plot(steps: dict[str, list[Step]], caption: str) -> None:
    """Latency percentiles against offered rate, one panel per backend."""
    keys = [key for key in BACKENDS if steps.get(key)]
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
