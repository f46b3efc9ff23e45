"""Two scout servers under the same load at the same time: B's CPU per Execute over A's.

`python -m bench.pair [--rounds N] [--seconds S] [--rate R] A B`: the bench's rig (one
warm protocol-only host), two scout-servers, each loaded by its own generator with
scenario 1's callers paced at R requests a second (default 200), both over the same S
seconds (default 5, after 1 s of warm-up), N rounds (default 6); per round each
server's CPU per Execute and B's over A's, then the median and the spread of the ratios.

A and B are each `[TREE:]KIND`. KIND is `plain` (no keys) or `sqlite` (a new
idempotency key per Execute, the SQLite store). TREE is a directory that holds another
checkout's `server/` and `scout/` packages (`git archive HEAD server scout | tar -x -C
DIR`), which that server imports before this one's: so one invocation compares two
versions of the code, or a change, in the same seconds of the same machine. Loads run
one after another swing with the machine's drift by as much as the few percent a
change is worth here (scenario 14's rounds went 0.95x-1.26x that way; at once,
1.09x-1.15x).

Not a scenario of `make bench`: a tool for measuring a change to the Execute path.
Scenario 14 runs its pairs the same way (Rig.at_once).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from dataclasses import replace
from pathlib import Path

from scout.allocator import keep_freed_memory

from .procs import Child
from .rig import Mode, Rig, start_rig
from .specs import LoadSpec

CALLERS, CHANNELS = 16, 4
KINDS = ("plain", "sqlite")


def side(text: str) -> tuple[Path | None, str]:
    """`[TREE:]KIND` as (tree, kind)."""
    tree, _, kind = text.rpartition(":")
    if kind not in KINDS:
        raise argparse.ArgumentTypeError(f"{text!r}: KIND must be one of {', '.join(KINDS)}")
    if tree and not (Path(tree) / "server").is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: {tree} holds no server/ package")
    return (Path(tree).resolve() if tree else None), kind


async def start(rig: Rig, which: str, tree: Path | None, kind: str) -> Child:
    """A scout server for the rig's first host, from tree, with the store kind needs."""
    store = f"sqlite:{rig.workdir / f'{which}.sqlite3'}" if kind == "sqlite" else ""
    return await rig.scout([rig.fake_hosts[0]], rig.fake_auth(), durable=store, tree=tree)


async def run(args: argparse.Namespace) -> list[float]:
    """The rounds; B's ratios to A."""
    mode = Mode("pair", runs=args.rounds, warmup=1.0, duration=args.seconds, ladder_step=1.0,
                ladder_runs=1, stream_bytes=0, rss_runs=1)  # fmt: skip
    rig = await start_rig(mode)
    try:
        (tree_a, kind_a), (tree_b, kind_b) = args.a, args.b
        a = await start(rig, "a", tree_a, kind_a)
        b = await start(rig, "b", tree_b, kind_b)
        spec = LoadSpec("scout", "closed", (rig.fake_hosts[0],), channels=CHANNELS, rate=args.rate)
        load = rig.closed(spec, CALLERS)
        ratios = []
        for done in range(args.rounds):
            ra, rb = await rig.at_once(
                a.aim(replace(load, keyed=kind_a == "sqlite")),
                b.aim(replace(load, keyed=kind_b == "sqlite")),
            )
            ratios.append(rb.cpu.server / ra.cpu.server)
            print(f"round {done + 1}/{args.rounds}: A {ra.cpu.server:,.0f} µs/req "
                  f"({ra.brief()}), B {rb.cpu.server:,.0f} µs/req ({rb.brief()}): "
                  f"B/A {ratios[-1]:.3f}", flush=True)  # fmt: skip
        await a.stop()
        await b.stop()
        return ratios
    finally:
        await rig.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pair", description=__doc__.split("\n")[0]
    )
    parser.add_argument("a", type=side, help="[TREE:]KIND of server A (KIND: plain or sqlite)")
    parser.add_argument("b", type=side, help="[TREE:]KIND of server B")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured window per round")
    parser.add_argument("--rate", type=float, default=200.0, help="requests a second, each")
    args = parser.parse_args()
    keep_freed_memory()
    ratios = asyncio.run(run(args))
    print(f"B/A median {statistics.median(ratios):.3f}, rounds {min(ratios):.3f}-{max(ratios):.3f}")


if __name__ == "__main__":
    main()
