"""A scenario's report Section (a table of medians over runs, targets met or not, notes,
every run), and the medians and cells it is made of; the report only lays it out."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter

from .specs import LoadResult


def median(values: Sequence[float]) -> float:
    """The median, ignoring NaN; NaN when nothing is left."""
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) if kept else math.nan


class Runs(list[LoadResult]):
    """One configuration's runs; tables show their medians."""

    def median(self, of: Callable[[LoadResult], float]) -> float:
        """The median over runs of one number."""
        return median([of(r) for r in self])

    @property
    def rate(self) -> float:
        """Median throughput, requests per second."""
        return self.median(attrgetter("throughput"))

    @property
    def makespan_ms(self) -> float:
        """Median makespan of bursts (their measured window), ms."""
        return self.median(attrgetter("elapsed")) * 1000

    def latency(self, p: str) -> float:
        """Median of one latency percentile ("p50", "p95", "p99", "max"), ms."""
        return self.median(attrgetter(f"latency.{p}"))

    def most(self, counter: str) -> int:
        """The highest of a counter of the fake SSH server over runs (0: none)."""
        return max((r.seen[counter] for r in self), default=0)

    def cpu(self, process: str) -> float:
        """Median CPU µs per request of one process ("loadgen", "server", "target") or "total"."""
        return self.median(attrgetter(f"cpu.{process}"))

    @property
    def errors(self) -> dict[str, int]:
        """Error counts by outcome, summed over runs."""
        return dict(sum((Counter(r.errors) for r in self), Counter[str]()))

    def errors_text(self) -> str:
        """Errors summed over runs, by outcome: "0" or "UNAVAILABLE 3, TIMEOUT 1"."""
        return ", ".join(f"{code} {n}" for code, n in sorted(self.errors.items())) or "0"

    def latency_cells(self) -> list[str]:
        """Median P50, P95, P99 and max over runs, in ms."""
        return [num(self.latency(p), 1) for p in ("p50", "p95", "p99", "max")]

    def cpu_cells(self) -> list[str]:
        """Median CPU µs per request: load generator, server, SSH server, all three."""
        return [num(self.cpu(p)) for p in ("loadgen", "server", "target", "total")]


def ratio(a: float, b: float) -> float:
    """a / b, NaN when either is missing or b is zero."""
    return math.nan if math.isnan(a) or math.isnan(b) or b == 0 else a / b


def met(value: float, ok: bool) -> bool | None:
    """Whether a target was met (ok); None when its value could not be measured."""
    return None if math.isnan(value) else ok


def num(value: float, digits: int = 0) -> str:
    """A number for a table; an em dash when missing."""
    return "—" if math.isnan(value) else f"{value:,.{digits}f}"


def times(value: float) -> str:
    """A ratio as "0.62x"."""
    return "—" if math.isnan(value) else f"{value:.2f}x"


def percent(value: float) -> str:
    """A fraction as "62 %"."""
    return "—" if math.isnan(value) else f"{100 * value:.0f} %"


@dataclass
class Verdict:
    """One target: what was asked, what was measured, met or not."""

    scenario: str
    target: str
    figure: str
    met: bool | None  # None: could not be measured
    why: str = ""  # for a missed target: what the measurements say about the cause

    @property
    def mark(self) -> str:
        """MET, MISSED or n/a."""
        return "n/a" if self.met is None else "MET" if self.met else "MISSED"


@dataclass
class Section:
    """One scenario's results: its table, targets, notes and every run behind them."""

    number: int
    title: str
    what: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    runs: dict[str, Runs] = field(default_factory=dict)  # by label, for the raw results file

    def verdict(self, target: str, figure: str, met: bool | None, why: str = "") -> None:
        """Record a target's outcome (and, when missed, the measured reason)."""
        self.verdicts.append(Verdict(self.title, target, figure, met, why if met is False else ""))
