"""The whole server's /metrics with worker processes: every worker's text, summed.

Each scout series counts or measures one worker's part (its RPCs, its connections, its
share of a limit), so the server's value is the sum over the workers, sample by sample:
counters, gauges and histogram buckets alike (`scout_pool_connection_limit` sums to the
server's max_connections as shared out). The names stay those of one process.

A worker that dies takes its gauges with it, but its counters and histograms are kept as
last read and added from then on, so the server's counters only go up (what it counted
after its last scrape is lost with it); a worker that does not answer in time counts with
its last counters and without gauges. The supervisor adds `scout_workers` (workers
serving now) and `scout_worker_restarts_total`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

Key = tuple[str, tuple[tuple[str, str], ...]]  # a sample's name and its labels
MONOTONIC = frozenset({"counter", "histogram"})  # kept for a worker that is gone


@dataclass
class Family:
    """One metric family being summed."""

    name: str
    documentation: str
    type: str
    samples: dict[Key, float] = field(default_factory=dict)

    def metric(self) -> Metric:
        """The prometheus-client family to write."""
        metric = Metric(self.name, self.documentation, self.type)
        for (name, labels), value in self.samples.items():
            metric.add_sample(name, dict(labels), value)
        return metric


def parse(text: bytes) -> list[Family]:
    """A worker's exposition as families (ValueError if it is not Prometheus text)."""
    return [
        Family(
            m.name,
            m.documentation,
            m.type,
            {(s.name, tuple(s.labels.items())): s.value for s in m.samples},
        )
        for m in text_string_to_metric_families(text.decode())
    ]


def add(total: dict[str, Family], families: Iterable[Family], *, only_monotonic: bool) -> None:
    """Add families into total, sample by sample."""
    for family in families:
        if only_monotonic and family.type not in MONOTONIC:
            continue
        into = total.setdefault(family.name, Family(family.name, family.documentation, family.type))
        for key, value in family.samples.items():
            into.samples[key] = into.samples.get(key, 0.0) + value


class _Fixed(Collector):
    """A collector of families already built."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


class Aggregate:
    """Each worker's last families (by the worker's serial number), and those of workers
    gone, for the server's sum."""

    def __init__(self) -> None:
        self.last: dict[int, list[Family]] = {}
        self.gone: dict[str, Family] = {}
        self.restarts = 0

    def retire(self, serial: int) -> None:
        """A worker exited: keep its counters and histograms as last read."""
        add(self.gone, self.last.pop(serial, []), only_monotonic=True)

    def render(self, texts: dict[int, bytes | None], live: int) -> bytes:
        """The server's exposition from the live workers' texts (None: did not answer)."""
        total: dict[str, Family] = {}
        for serial, text in texts.items():
            fresh = text is not None
            if text is not None:
                try:
                    self.last[serial] = parse(text)
                except ValueError:
                    fresh = False
            add(total, self.last.get(serial, []), only_monotonic=not fresh)
        add(total, self.gone.values(), only_monotonic=True)
        metrics = [f.metric() for f in total.values()]
        metrics.append(GaugeMetricFamily("scout_workers", "worker processes serving", live))
        metrics.append(
            CounterMetricFamily(
                "scout_worker_restarts", "workers started again after they died", self.restarts
            )
        )
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed(metrics))
        return generate_latest(registry)
