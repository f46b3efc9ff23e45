"""Cheap counting: histograms and labelled counters that cost a dict or a bisect per event.

They are fed on the request path whether or not metrics are served, so they must be
cheap and bounded: a histogram is a fixed list of bucket counts and a sum (no samples
kept), a labelled counter a dict keyed by a bounded label value. `server.metrics` reads
them when Prometheus scrapes.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

# Latencies of requests, connects and waits, in seconds.
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Shard-lock waits and holds: microseconds when all is well.
MICROSECONDS = (1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, 1e-1)


class Histogram:
    """Bucket counts (the last one is +Inf) and the sum of what was observed."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float] = SECONDS) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one value."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        """How many values were observed."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, count at or below it) pairs, as Prometheus writes buckets."""
        total, out = 0, []
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


class Tally(dict[str, int]):
    """A counter by one label value (bounded by the code: reasons, results, outcomes)."""

    def add(self, key: str, n: int = 1) -> None:
        """Count n more under key."""
        self[key] = self.get(key, 0) + n
