"""What a scenario hands to the report: a table, its targets met or not, and notes.

Scenarios compute; the report only lays out. Keeping the shape here lets a scenario be
tested (or rerun alone) without the Markdown writer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .stats import median_of, merged_errors


@dataclass
class Verdict:
    """One issue-5 target: what was asked, what was measured, met or not."""

    scenario: str
    target: str
    figure: str
    met: bool | None  # None: could not be measured

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

    def verdict(self, target: str, figure: str, met: bool | None) -> None:
        """Record a target's outcome."""
        self.verdicts.append(Verdict(self.title, target, figure, met))


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
