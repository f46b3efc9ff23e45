"""`python -m bench`: start the rig, run the scenarios, write BENCHMARKS.md and the plot.

Every scenario is one entry in SCENARIOS: a function that takes the rig and returns its
report Section (a later one may read the sections before it, in `rig.sections`). A
scenario that fails is reported as failed and the others still run; the rig (SSH
targets, scout servers, load generators) is always torn down. Raw results, every run of
every backend, go to bench/results/<time>.json (not committed).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shlex
import shutil
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

from .connects import bounded, cold_hosts
from .cost import cost
from .fanout import fan_out
from .ladder import ladder
from .report import Report, load_average, machine, render
from .results import Section
from .rig import FULL, QUICK, SMOKE, Rig, say, start_rig
from .throughput import openssh_host, single_host, stream

ROOT = Path(__file__).resolve().parent.parent

Scenario = Callable[[Rig], Awaitable[Section]]
SCENARIOS: dict[int, Scenario] = {
    1: single_host,
    2: cold_hosts,
    3: ladder,
    4: openssh_host,
    5: bounded,
    6: stream,
    7: cost,
    8: fan_out,
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
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, configs)")
    args = parser.parse_args(argv)
    args.chosen = sorted({int(n) for n in args.only.split(",")}) if args.only else [*SCENARIOS]
    if unknown := [n for n in args.chosen if n not in SCENARIOS]:
        parser.error(f"unknown scenario(s) {unknown}; there are {sorted(SCENARIOS)}")
    return args


async def run(args: argparse.Namespace) -> Report:
    """Every chosen scenario, in order, on one rig; the report."""
    mode = FULL if args.full else SMOKE if args.smoke else QUICK
    command = "python -m bench " + shlex.join(sys.argv[1:] or ["--quick"])
    started, load_start, about = time.time(), load_average(), machine()
    say(f"bench: {mode.name} mode, scenarios {args.chosen}")
    rig = await start_rig(mode)
    rig.caption = f"{about['CPU']}, {about['CPUs (lscpu / nproc)']} CPUs; {command}"
    failures: list[str] = []
    try:
        await rig.learn_scout_cipher()
        for n in args.chosen:
            say(f"bench: scenario {n}")
            try:
                rig.sections[n] = await SCENARIOS[n](rig)
            except Exception as exc:
                traceback.print_exc()
                failures.append(f"scenario {n}: {type(exc).__name__}: {exc}".splitlines()[0])
    finally:
        await rig.close()
        if args.keep:
            say(f"bench: work dir kept: {rig.workdir}")
        else:
            shutil.rmtree(rig.workdir, ignore_errors=True)
    about["SSH cipher (scout and baselines)"] = rig.scout_cipher or "?"
    return Report(
        mode.name,
        command,
        started,
        time.time(),
        about,
        load_start,
        load_average(),
        list(rig.sections.values()),
        failures,
    )


def write(report: Report, out: Path) -> None:
    """BENCHMARKS.md and the raw results (every run of every backend)."""
    out.write_text(render(report), encoding="utf-8")
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(report.started))
    raw = ROOT / "bench" / "results" / f"{stamp}-{report.mode}.json"
    raw.parent.mkdir(exist_ok=True)
    runs = {
        s.title: {label: [dataclasses.asdict(r) for r in rs] for label, rs in s.runs.items()}
        for s in report.sections
    }
    raw.write_text(json.dumps({"machine": report.machine, **runs}, indent=1), encoding="utf-8")
    say(f"bench: wrote {out} and {raw}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m bench`."""
    args = parse_args(argv)
    report = asyncio.run(run(args))
    write(report, args.out)
    if report.failures:
        sys.exit(1)
