"""Percentiles of one run and medians across runs.

Percentiles use the nearest-rank rule on the sorted sample (no interpolation), so P99 of
a run is a latency some request really had.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def percentile(ordered: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of an ascending sequence; NaN when empty."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """P50/P95/P99/max/mean in milliseconds."""
    ordered = sorted(seconds)
    out = {
        "p50": percentile(ordered, 50),
        "p95": percentile(ordered, 95),
        "p99": percentile(ordered, 99),
        "max": ordered[-1] if ordered else math.nan,
        "mean": statistics.fmean(ordered) if ordered else math.nan,
    }
    return {k: v * 1000 for k, v in out.items()}


def median(values: Sequence[float]) -> float:
    """The median, ignoring NaN; NaN when nothing is left."""
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) if kept else math.nan


def get(result: dict[str, Any], path: str) -> float:
    """A number inside a nested result, by a dotted path ("latency.p95"); NaN if absent."""
    value: Any = result
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return math.nan
        value = value[part]
    return float(value) if isinstance(value, int | float) else math.nan


def median_of(results: list[dict[str, Any]], path: str) -> float:
    """The median over runs of one number."""
    return median([get(r, path) for r in results])


def merged_errors(results: list[dict[str, Any]]) -> dict[str, int]:
    """Error counts by outcome, summed over runs."""
    total: dict[str, int] = {}
    for r in results:
        for code, n in r.get("errors", {}).items():
            total[code] = total.get(code, 0) + n
    return total


def ratio(a: float, b: float) -> float:
    """a / b, NaN when either is missing or b is zero."""
    if math.isnan(a) or math.isnan(b) or b == 0:
        return math.nan
    return a / b
