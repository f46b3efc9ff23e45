"""`python -m bench`: start the rig, run the scenarios, write BENCHMARKS.md and the plot.

A scenario that fails is reported as failed and the others still run; the rig (SSH
targets, scout servers, load generators) is always torn down. Raw results, every run of
every backend, go to bench/results/<time>.json (not committed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shlex
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .connects import bounded, cold_hosts
from .cost import cost, profile
from .ladder import ladder, plot
from .report import Report, load_average, machine, render
from .results import Section
from .rig import FULL, QUICK, SMOKE, Mode, Rig, remove_workdir, say, start_rig
from .throughput import openssh_host, single_host, stream

ROOT = Path(__file__).resolve().parent.parent
FAKE_HOSTS = 200
DELAY_MS = 10.0

Scenario = Callable[[Rig, Mode], Awaitable[Section]]
SCENARIOS: dict[int, Scenario] = {
    1: single_host,
    2: cold_hosts,
    3: ladder,
    4: openssh_host,
    5: bounded,
    6: stream,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--quick", action="store_true", help="short windows, 3 runs (default)")
    how.add_argument("--full", action="store_true", help="longer windows, 5 runs")
    how.add_argument("--smoke", action="store_true", help="seconds per scenario: checks the rig")
    parser.add_argument("--only", help="comma-separated scenario numbers, e.g. 1,3,7")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md", help="report path")
    parser.add_argument(
        "--profile",
        choices=("auto", "always", "never"),
        default="auto",
        help="profile the server under scenario 1's load: when a scenario-1 target is missed",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, configs)")
    return parser.parse_args(argv)


def _selected(only: str | None) -> list[int]:
    if not only:
        return [*SCENARIOS, 7]
    chosen = sorted({int(part) for part in only.split(",") if part.strip()})
    unknown = [n for n in chosen if n not in SCENARIOS and n != 7]
    if unknown:
        raise SystemExit(f"unknown scenario(s): {unknown}; there are 1 to 7")
    return chosen


def _jsonable(value: Any) -> Any:
    """Results as strict JSON: NaN becomes null, tuples lists, keys strings."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


async def run(args: argparse.Namespace) -> Report:
    """Every selected scenario, then the optional profile; the report."""
    mode = FULL if args.full else SMOKE if args.smoke else QUICK
    chosen = _selected(args.only)
    command = "python -m bench " + shlex.join(sys.argv[1:] or ["--quick"])
    started, load_start = time.time(), load_average()
    say(f"bench: {mode.name} mode, scenarios {chosen}")
    rig = await start_rig(FAKE_HOSTS, DELAY_MS)
    sections: dict[str, Section] = {}
    failures: list[str] = []
    prof: dict[str, Any] | None = None
    try:
        await rig.learn_scout_cipher()
        for n in chosen:
            say(f"bench: scenario {n}")
            try:
                if n == 7:
                    section = await cost(rig, mode, sections)
                else:
                    section = await SCENARIOS[n](rig, mode)
                sections[section.key] = section
            except Exception as exc:
                traceback.print_exc()
                failures.append(f"scenario {n}: {type(exc).__name__}: {exc}".splitlines()[0])
        s1 = sections.get("s1")
        missed = s1 is not None and any(v.met is False for v in s1.verdicts)
        if args.profile == "always" or (args.profile == "auto" and missed):
            say("bench: profiling the server under scenario 1's load")
            try:
                cpu_us = s1.raw.get("cpu_us", math.nan) if s1 is not None else math.nan
                prof = await profile(rig, mode, cpu_us)
            except Exception as exc:
                traceback.print_exc()
                failures.append(f"profile: {type(exc).__name__}: {exc}".splitlines()[0])
    finally:
        await rig.close()
        if args.keep:
            say(f"bench: work dir kept: {rig.workdir}")
        else:
            remove_workdir(rig)
    return Report(
        mode=mode.name,
        command=command,
        started=started,
        finished=time.time(),
        machine={**machine(), "SSH cipher (scout and baselines)": rig.scout_cipher or "?"},
        load_start=load_start,
        load_end=load_average(),
        sections=list(sections.values()),
        profile=prof,
        failures=failures,
    )


def write(report: Report, out: Path) -> None:
    """BENCHMARKS.md, the ladder plot beside the code, the raw results."""
    s3 = next((s for s in report.sections if s.key == "s3"), None)
    if s3 is not None:
        caption = f"{report.machine['CPU']}, {report.machine['CPUs (lscpu / nproc)']} CPUs"
        plot(s3, ROOT / "bench" / "ladder.png", f"{caption}; {report.command}")
    out.write_text(render(report), encoding="utf-8")
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(report.started))
    dump = {s.key: s.raw for s in report.sections}
    dump["machine"] = report.machine
    if report.profile is not None:
        dump["profile"] = report.profile
    (results / f"{stamp}-{report.mode}.json").write_text(
        json.dumps(_jsonable(dump), indent=1), encoding="utf-8"
    )
    say(f"bench: wrote {out} and {results}/{stamp}-{report.mode}.json")


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m bench`."""
    args = parse_args(argv)
    report = asyncio.run(run(args))
    write(report, args.out)
    if report.failures:
        sys.exit(1)
