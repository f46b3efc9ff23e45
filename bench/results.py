"""Results: percentiles of one run, medians across runs, and a scenario's report section.

Percentiles use the nearest-rank rule on the sorted sample (no interpolation), so P99 of
a run is a latency some request really had. Scenarios compute a `Section` (a table, its
targets met or not, notes); the report only lays sections out.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
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


@dataclass
class Verdict:
    """One issue-5 target: what was asked, what was measured, met or not."""

    scenario: str
    target: str
    figure: str
    met: bool | None  # None: could not be measured
    why: str = ""  # for a missed target: what the measurements say about the cause

    @property
    def mark(self) -> str:
        """MET, MISSED or n/a."""
        return {True: "MET", False: "MISSED", None: "n/a"}[self.met]


@dataclass
class Section:
    """One scenario's results."""

    key: str
    title: str
    what: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def verdict(self, target: str, figure: str, met: bool | None, why: str = "") -> None:
        """Record a target's outcome (and, when missed, the measured reason)."""
        self.verdicts.append(Verdict(self.title, target, figure, met, why if met is False else ""))


def num(value: float, digits: int = 0) -> str:
    """A number for a table; an em dash when missing."""
    if value is None or math.isnan(value):
        return "—"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def times(value: float) -> str:
    """A ratio as "0.62x"."""
    return "—" if math.isnan(value) else f"{value:.2f}x"


def errors_text(results: list[dict[str, Any]]) -> str:
    """Errors summed over runs, by outcome: "0" or "UNAVAILABLE 3, TIMEOUT 1"."""
    merged = merged_errors(results)
    if not merged:
        return "0"
    return ", ".join(f"{code} {n}" for code, n in sorted(merged.items()))


def error_count(results: list[dict[str, Any]]) -> int:
    """Errors summed over runs."""
    return sum(merged_errors(results).values())


def latency_cells(results: list[dict[str, Any]]) -> list[str]:
    """Median P50, P95, P99 and max over runs, in ms."""
    return [num(median_of(results, f"latency.{p}"), 1) for p in ("p50", "p95", "p99", "max")]
