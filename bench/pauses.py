"""Where the load ladder's latency tail comes from: the server's garbage collections.

A full (generation 2) cyclic collection walks every tracked object in the process and
holds the event loop while it does; with many connections that takes tens of
milliseconds, and every request in flight waits. This runs one open-loop rung again
against a scout server whose collections are logged (bench.profiled --gc-log), then
matches the slow requests (over 20 ms from their scheduled arrival) against the pauses.
Both sides use the system's monotonic clock, so the times compare directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .callers import Host
from .rig import Rig, brief, say


@dataclass(frozen=True)
class Pause:
    """One logged collection."""

    start: float
    seconds: float
    generation: int
    collected: int

    @property
    def end(self) -> float:
        """When the collection finished."""
        return self.start + self.seconds


def read_log(path: Path) -> list[Pause]:
    """The collections a gc log lists (see bench.profiled)."""
    pauses = []
    for line in path.read_text(encoding="ascii").splitlines():
        start, seconds, generation, collected = line.split()
        pauses.append(Pause(float(start), float(seconds), int(generation), int(collected)))
    return pauses


def overlapping(slow: list[tuple[float, float]], pauses: list[Pause]) -> int:
    """How many slow requests were waiting while one of the pauses ran."""
    count = 0
    for start, latency in slow:
        if any(p.start < start + latency and p.end > start for p in pauses):
            count += 1
    return count


async def gc_pauses(rig: Rig, hosts: list[Host], rate: int, seconds: float) -> dict[str, Any]:
    """One open-loop run at rate against a gc-logging scout server; what the log shows."""
    log = rig.workdir / f"gc-{rate}.log"
    server = await rig.scout(hosts, rig.fake_login, gc_log=log)
    spec = {
        "hosts": hosts,
        "command": "echo ok",
        "timeout": 10.0,
        "backend": "scout",
        "target": server.target,
        "server_pid": server.pid,
    }
    try:
        await rig.load({**spec, "mode": "burst", "concurrency": len(hosts)})
        result = await rig.load({**spec, "mode": "open", "rate": rate, "warmup": 1.0,
                                 "duration": seconds})  # fmt: skip
    finally:
        await server.stop()
    begin, end = result["window"]
    pauses = [p for p in read_log(log) if p.end > begin and p.start < end]
    full = [p for p in pauses if p.generation == 2]
    slow = [(float(s), float(lat)) for s, lat in result["slow"]]
    found = {
        "rate": rate,
        "result": result,
        "window_s": end - begin,
        "full": len(full),
        "full_max_ms": max((p.seconds for p in full), default=0.0) * 1000,
        "full_total_ms": sum(p.seconds for p in full) * 1000,
        "all_total_ms": sum(p.seconds for p in pauses) * 1000,
        "collected_max": max((p.collected for p in full), default=0),
        "slow": len(slow),
        "slow_in_full": overlapping(slow, full),
        "slow_in_any": overlapping(slow, pauses),
    }
    say(
        f"[s3] gc at {rate}/s: {brief(result)}; {found['full']} full collections, max "
        f"{found['full_max_ms']:.0f} ms; {found['slow_in_full']}/{found['slow']} slow "
        "requests waited on one"
    )
    return found
