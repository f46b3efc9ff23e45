"""Scenario 3: the load ladder, open loop on 100 warm hosts, and its plot.

Arrivals come on a fixed schedule at each offered rate (100, 500, 1000, 2000 req/s and
up), spread round robin over 100 hosts whose connections are already warm. A rate is
*held* when P95 (from scheduled arrival, so queueing counts) stays at or under 50 ms, no
request fails, and at least 90 % of the offered rate completes. The ladder climbs until a
rate is not held; raw asyncssh (one connection per host, opened beforehand) and the
gRPC-only ExecService (bench.grpcfloor) climb the same ladder in the same invocation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .pauses import gc_pauses
from .results import Section, errors_text, median_of, merged_errors, num
from .rig import Mode, Rig, brief, say

RATES = (100, 500, 1000, 1500, 2000, 2500, 3000, 4000, 5000, 6000, 8000, 10000)
HOSTS = 100
P95_LIMIT_MS = 50.0
MIN_ACHIEVED = 0.9
GC_WINDOW = 8.0  # seconds: long enough for a few full collections at a few hundred req/s
COMMAND = "echo ok"
BACKENDS = {"scout": "scout", "raw": "raw asyncssh", "grpc": "gRPC alone, no SSH"}


def _step(rate: int, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of one rate's runs, and whether the rate was held."""
    step: dict[str, Any] = {
        "rate": rate,
        "p50": median_of(results, "latency.p50"),
        "p95": median_of(results, "latency.p95"),
        "p99": median_of(results, "latency.p99"),
        "max": median_of(results, "latency.max"),
        "achieved": median_of(results, "achieved"),
        "cpu_us": median_of(results, "server_cpu_us_per_req"),
        "loadgen_us": median_of(results, "loadgen_cpu_us_per_req"),
        "errors": sum(merged_errors(results).values()),
        "error_codes": merged_errors(results),
        "lag_ms": median_of(results, "dispatch_lag_ms"),
    }
    step["held"] = (
        step["p95"] <= P95_LIMIT_MS
        and step["errors"] == 0
        and step["achieved"] >= MIN_ACHIEVED * rate
    )
    return step


def highest_held(steps: list[dict[str, Any]]) -> int:
    """The highest rate held before the first rate that was not (0: none)."""
    best = 0
    for step in steps:
        if not step["held"]:
            break
        best = step["rate"]
    return best


async def ladder(rig: Rig, mode: Mode) -> Section:
    """Climb the ladder with scout, raw asyncssh and gRPC alone, interleaved rate by rate."""
    hosts = rig.fake_hosts[:HOSTS]
    section = Section(
        "s3",
        "3. Load ladder, 100 warm hosts, open loop",
        f"{HOSTS} protocol-only hosts, connections warmed first; open-loop arrivals at "
        f"each rate for {mode.ladder_step:g} s after 1 s of warm-up at that rate, "
        f"{mode.ladder_runs} run(s) per rate (medians). Held: P95 ≤ {P95_LIMIT_MS:g} ms "
        f"from the scheduled arrival, no errors, ≥ {MIN_ACHIEVED:.0%} of the rate completed. "
        "Raw asyncssh has one connection per host, opened beforehand; *gRPC alone* is "
        "scenario 1's ExecService that answers without SSH (the gRPC hop's own ceiling).",
        [
            "backend",
            "offered req/s",
            "achieved req/s",
            "P50 ms",
            "P95 ms",
            "P99 ms",
            "max ms",
            "errors",
            "CPU µs/req: load gen.",
            "server",
            "held",
        ],
    )
    server = await rig.scout(hosts, rig.fake_login)
    floor = await rig.grpc_floor()
    common = {"hosts": hosts, "command": COMMAND, "timeout": 10.0, "target_pid": rig.fake.pid}
    specs = {
        "scout": {**common, "backend": "scout", "target": server.target, "server_pid": server.pid},
        "raw": {**common, "backend": "raw", "auth": rig.auth(rig.fake_login), "per_host": 1},
        "grpc": {
            **common,
            "backend": "scout",
            "target": f"127.0.0.1:{floor.ready['port']}",
            "server_pid": floor.pid,
        },
    }
    steps: dict[str, list[dict[str, Any]]] = {key: [] for key in specs}
    try:
        warm = {"mode": "closed", "concurrency": HOSTS, "warmup": 0.0, "duration": 1.0}
        say(f"[s3] warming {HOSTS} hosts: {brief(await rig.load({**specs['scout'], **warm}))}")
        active = list(specs)
        for rate in RATES:
            if not active:
                break
            for key in list(active):
                spec = {**specs[key], "mode": "open", "rate": rate}
                spec.update(warmup=1.0, duration=mode.ladder_step)
                results = []
                for run in range(mode.ladder_runs):
                    results.append(await rig.load(spec))
                    say(f"[s3] {key} {rate}/s run {run + 1}: {brief(results[-1])}")
                step = _step(rate, results)
                steps[key].append(step)
                if not step["held"]:
                    active.remove(key)
    finally:
        await server.stop()
        await floor.stop()
    for key, label in BACKENDS.items():
        for step in steps[key]:
            section.rows.append(
                [
                    label,
                    num(step["rate"]),
                    num(step["achieved"]),
                    *(num(step[p], 1) for p in ("p50", "p95", "p99", "max")),
                    errors_text([{"errors": step["error_codes"]}]),
                    num(step["loadgen_us"]),
                    num(step["cpu_us"]),
                    "yes" if step["held"] else "**no**",
                ]
            )
    held = {key: highest_held(steps[key]) for key in steps}
    section.notes.append(
        f"Highest rate held: scout **{held['scout']:,} req/s**; raw asyncssh "
        f"{held['raw']:,} req/s; gRPC alone {held['grpc']:,} req/s (the next rung up is "
        "the first not held)."
    )
    if any("CANCELLED" in s["error_codes"] for k in steps for s in steps[k]):
        section.notes.append(
            "CANCELLED at an overloaded rung comes from grpc core, not from scout's code: "
            "calls that wait too long in the server's queue of not-yet-handled calls are "
            "shed (server arguments `grpc.server.max_pending_requests`, default 1000, and "
            "its hard limit, 3000), so an overloaded server answers CANCELLED after about a "
            "second rather than RESOURCE_EXHAUSTED."
        )
    section.notes.append("![load ladder](bench/ladder.png)")
    rate = max(held["scout"], RATES[1])
    gc = await gc_pauses(rig, hosts, rate, max(mode.ladder_step, GC_WINDOW))
    section.notes.append(_gc_note(gc))
    section.raw = {"steps": steps, "held": held, "gc": gc}
    return section


def _gc_note(gc: dict[str, Any]) -> str:
    """What the garbage-collection log says about the latency tail."""
    lat = gc["result"]["latency"]
    if not gc["full"]:
        return (
            f"**Latency tail.** The {gc['rate']:,} req/s rung once more, against a scout "
            "server that logs its garbage collections: no full collection ran in the "
            f"{gc['window_s']:.1f} s window; P99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms."
        )
    return (
        f"**Latency tail.** The {gc['rate']:,} req/s rung once more, against a scout "
        "server that logs its garbage collections (`bench/profiled.py --gc-log`): in "
        f"{gc['window_s']:.1f} s, {gc['full']} full collections paused its event loop, "
        f"the longest {gc['full_max_ms']:.0f} ms ({gc['full_total_ms']:.0f} ms in all; "
        f"up to {gc['collected_max']:,} objects freed at once); P50 {lat['p50']:.1f} ms, "
        f"P99 {lat['p99']:.1f} ms, max {lat['max']:.1f} ms. Of the {gc['slow']} requests "
        f"over 20 ms, {gc['slow_in_full']} were waiting while a full collection ran "
        f"({gc['slow_in_any']} during any logged collection)."
    )


def plot(section: Section, path: Path, caption: str) -> bool:
    """Latency percentiles against offered rate, one panel per backend; False if empty."""
    steps: dict[str, list[dict[str, Any]]] = section.raw.get("steps", {})
    if not any(steps.values()):
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [key for key in BACKENDS if steps.get(key)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 4.6), dpi=110, sharey=True)
    colors = {"p50": "tab:blue", "p95": "tab:orange", "p99": "tab:red"}
    for ax, key in zip([axes] if len(keys) == 1 else axes, keys, strict=True):
        rates = [s["rate"] for s in steps[key]]
        for p, color in colors.items():
            values = [float(s[p]) for s in steps[key]]  # NaN leaves a gap
            ax.plot(rates, values, "-", marker="o", color=color, label=p.upper())
        ax.axhline(P95_LIMIT_MS, color="grey", linewidth=1, linestyle=":")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{BACKENDS[key]}: held {highest_held(steps[key]):,} req/s", fontsize=10)
        ax.set_xlabel("offered rate, req/s (open loop)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    first = axes if len(keys) == 1 else axes[0]
    first.set_ylabel(f"latency from scheduled arrival, ms ({P95_LIMIT_MS:g} ms dotted)")
    fig.suptitle("Load ladder: 100 warm hosts, protocol-only SSH server", fontsize=11)
    fig.text(0.01, 0.01, caption, fontsize=7, color="grey")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return True
