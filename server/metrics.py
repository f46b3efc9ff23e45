"""Prometheus metrics: read from scout's own counters when scraped, served on the event loop.

Counting happens on the request path in `server.counters` (a dict or a bisect per event,
whether or not anyone scrapes); this collector turns those counters, and the pool's and
the budget's current sizes, into Prometheus families at scrape time. `/metrics` is
served by a small HTTP responder on scout's own event loop, not by prometheus-client's
thread, so a scrape never reads a dict the loop is changing. With worker processes, each
worker hands its text to the supervisor, which serves their sum (`server.workermetrics`).

Cardinality: every label is bounded by the code (method, status code, state, reason,
outcome, stream) or by the config (caller names), except the per-host series
(`scout_host_*{host}`), which grow with the inventory: fine for hundreds of hosts; set
`[metrics] per_host = false` for thousands.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .counters import Histogram

if TYPE_CHECKING:
    from .audit import AuditLog
    from .callers import Gate
    from .durable import Durable
    from .live import LiveConfig
    from .output import OutputBudget
    from .pool import Pool
    from .rpc import RpcStats

log = logging.getLogger(__name__)

REQUEST_LIMIT = 8192  # bytes of an HTTP request head we read
REQUEST_TIMEOUT = 5.0  # seconds a scraper has to send it
WRITE_TIMEOUT = 10.0  # seconds it has to take the answer (Prometheus' default scrape_timeout)
MAX_CONNECTIONS = 16  # served at once (Prometheus uses one per scrape); more get a 503 at
#                      once, so idle connections cannot pile up to scout's open-file limit
BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def _histogram(
    name: str, doc: str, series: Histogram | Mapping[str, Histogram], label: str | None = None
) -> HistogramMetricFamily:
    """One histogram, or one per value of label."""
    family = HistogramMetricFamily(name, doc, labels=[label] if label else [])
    items = {"": series} if isinstance(series, Histogram) else series
    for value, h in items.items():
        values = [value] if label else []
        family.add_metric(list(values), buckets=h.cumulative(), sum_value=h.sum)
    return family


def _counter(
    name: str, doc: str, series: dict[str, int] | int, label: str | None = None
) -> CounterMetricFamily:
    if isinstance(series, int):
        return CounterMetricFamily(name, doc, value=series)
    family = CounterMetricFamily(name, doc, labels=[label] if label else [])
    for value, count in sorted(series.items()):
        family.add_metric([value], count)
    return family


@dataclass(frozen=True)
class Sources:
    """What the metrics read: each the object its owner counts in, read at scrape time."""

    live: LiveConfig  # `[metrics] per_host`, as in force
    rpcs: RpcStats
    gate: Gate  # calls in flight by caller
    pool: Pool[Any]
    budget: OutputBudget
    audit: AuditLog
    durable: Durable | None = None


class ScoutCollector(Collector):
    """Every scout_* family, from the running server's counters."""

    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        yield from self._rpcs()
        yield from self._pool()
        yield from self._commands()
        if self.sources.durable is not None:
            yield from self._durable(self.sources.durable)
        if self.sources.live.current.metrics.per_host:
            yield from self._hosts()

    def _rpcs(self) -> Iterator[Metric]:
        rpcs = self.sources.rpcs
        total = CounterMetricFamily("scout_rpcs_total", "RPCs finished", labels=["method", "code"])
        for (method, code), count in sorted(rpcs.finished.items()):
            total.add_metric([method, code], count)
        yield total
        yield _histogram("scout_rpc_duration_seconds", "RPC durations", rpcs.durations, "method")
        yield _gauges(
            "scout_rpcs_in_flight", "RPCs running now", rpcs.in_flight_by_method, "method"
        )
        yield _gauges(
            "scout_caller_rpcs_in_flight",
            "RPCs running now",
            self.sources.gate.in_flight,
            "caller",
        )

    def _pool(self) -> Iterator[Metric]:
        pool = self.sources.pool
        stats, gauges = pool.stats, pool.gauges()
        states = {s: gauges[f"connections_{s}"] for s in ("open", "opening", "idle", "draining")}
        yield _gauges("scout_pool_connections", "SSH connections by state", states, "state")
        for name, doc, value in (
            ("channels_in_use", "channels reserved on SSH connections", gauges["channels_in_use"]),
            ("waiters", "callers waiting for a channel", gauges["waiters"]),
            ("connection_limit", "max_connections", pool.settings.max_connections),
        ):
            yield GaugeMetricFamily(f"scout_pool_{name}", doc, value=value)
        for name, doc, count in (
            ("checkouts", "channel reservations asked for", stats.checkouts),
            ("reuses", "reservations a warm connection served at once", stats.reuses),
            ("channel_refusals", "channels the server refused", stats.refusals),
            ("retries", "requests retried before their command started", stats.retries),
            ("settles", "places handed to a waiter after a round trip", stats.settles),
        ):
            yield _counter(f"scout_pool_{name}_total", doc, count)
        yield _counter("scout_pool_connects_total", "SSH connects", stats.connects, "result")
        yield _counter(
            "scout_pool_evictions_total", "connections closed", stats.evictions, "reason"
        )
        connects, waits = stats.connect_seconds, stats.wait_seconds
        yield _histogram("scout_pool_connect_duration_seconds", "SSH connect durations", connects)
        yield _histogram("scout_pool_wait_duration_seconds", "waits for a channel", waits)
        wait, hold = (
            _merged([s.timings.wait for s in pool.shards]),
            _merged([s.timings.hold for s in pool.shards]),
        )
        yield _histogram("scout_shard_lock_wait_seconds", "waits for a shard lock", wait)
        yield _histogram("scout_shard_lock_hold_seconds", "shard lock held", hold)

    def _commands(self) -> Iterator[Metric]:
        rpcs, budget = self.sources.rpcs, self.sources.budget
        yield _counter("scout_commands_total", "commands that ran", rpcs.commands, "outcome")
        yield _counter(
            "scout_command_output_bytes_total", "bytes commands wrote", rpcs.output_bytes, "stream"
        )
        yield GaugeMetricFamily(
            "scout_output_buffered_bytes", "Execute output held", value=budget.used
        )
        yield GaugeMetricFamily(
            "scout_output_buffer_limit_bytes", "max_buffered_output_bytes", value=budget.limit
        )
        yield _counter("scout_audit_lines_total", "audit lines written", self.sources.audit.lines)
        yield _counter(
            "scout_file_bytes_total", "bytes of files moved", rpcs.file_bytes, "direction"
        )
        transfers = CounterMetricFamily(
            "scout_file_transfers_total", "file transfers", labels=["direction", "code"]
        )
        for (direction, code), count in sorted(rpcs.file_transfers.items()):
            transfers.add_metric([direction, code], count)
        yield transfers

    def _durable(self, durable: Durable) -> Iterator[Metric]:
        settings = durable.settings
        held = sum(run.log.held for run in durable.runs.values())
        for name, doc, value in (
            ("running", "keyed commands running in this process", len(durable.runs)),
            ("detached", "keyed commands running with nobody attached", durable.detached),
            ("detached_limit", "max_detached", settings.max_detached),
            ("replay_buffer_bytes", "output held for attach, all keyed commands", held),
            (
                "replay_buffer_limit_bytes",
                "replay_buffer_bytes, per command",
                settings.replay_buffer_bytes,
            ),
            ("records", "unexpired records in the store (last count)", durable.records),
            ("records_limit", "max_records", settings.max_records),
        ):
            yield GaugeMetricFamily(f"scout_durable_{name}", doc, value=value)
        for name, doc, count in (
            ("runs", "keyed commands started", durable.started),
            ("replayed", "answers given from an earlier run", self.sources.rpcs.replayed),
            ("store_errors", "durable store operations that failed", durable.store_errors),
        ):
            yield _counter(f"scout_durable_{name}_total", doc, count)
        yield _counter(
            "scout_durable_refused_total",
            "keyed calls refused at a limit",
            durable.refused,
            "limit",
        )

    def _hosts(self) -> Iterator[Metric]:
        pool, rpcs = self.sources.pool, self.sources.rpcs
        views = {state.name: pool.host_view(state.name) for state in pool.hosts()}
        connections = {name: view[0] for name, view in views.items()}
        channels = {name: view[1] for name, view in views.items()}
        yield _gauges("scout_host_connections", "SSH connections open", connections, "host")
        yield _gauges("scout_host_channels_in_use", "channels in use", channels, "host")
        commands = CounterMetricFamily(
            "scout_host_commands_total", "commands that ran", labels=["host", "outcome"]
        )
        for (host, outcome), count in sorted(rpcs.host_commands.items()):
            commands.add_metric([host, outcome], count)
        yield commands


def _gauges(name: str, doc: str, series: dict[str, int], label: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for value, count in sorted(series.items()):
        family.add_metric([value], count)
    return family


def _merged(parts: list[Histogram]) -> Histogram:
    """One histogram of every shard's."""
    total = Histogram(parts[0].bounds)
    for part in parts:
        total.counts = [a + b for a, b in zip(total.counts, part.counts, strict=True)]
        total.sum += part.sum
    return total


def exposition(sources: Sources) -> Callable[[], bytes]:
    """The Prometheus text of the metrics, read anew at each call."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ScoutCollector(sources))
    return lambda: generate_latest(registry)


def served(text: Callable[[], bytes]) -> Callable[[], Awaitable[bytes]]:
    """A MetricsServer's render of a text read on the spot."""

    async def render() -> bytes:
        return text()

    return render


class MetricsServer:
    """`GET /metrics` on scout's event loop; `render` gives the body of each answer."""

    def __init__(
        self, render: Callable[[], Awaitable[bytes]], *, write_timeout: float = WRITE_TIMEOUT
    ) -> None:
        self.render = render
        self.write_timeout = write_timeout
        self._server: asyncio.Server | None = None
        self.port = 0
        self.connections = 0  # being served now

    async def start(self, listen: str) -> None:
        """Listen on HOST:PORT (port 0: the kernel picks)."""
        host, _, port = listen.rpartition(":")
        self._server = await asyncio.start_server(
            self._handle, host.strip("[]"), int(port), limit=REQUEST_LIMIT
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics on http://%s:%d/metrics", host, self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= MAX_CONNECTIONS:
            writer.write(BUSY)
            writer.close()
            return
        self.connections += 1
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            method, path, *_ = head.split(b"\r\n", 1)[0].split(b" ")
            if method == b"GET" and path.split(b"?")[0] == b"/metrics":
                status, kind, body = "200 OK", CONTENT_TYPE_LATEST, await self.render()
            else:
                status, kind, body = "404 Not Found", "text/plain", b"scout: GET /metrics\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n".encode()
                + body
            )
            async with asyncio.timeout(self.write_timeout):
                await writer.drain()
        except TimeoutError:
            writer.transport.abort()  # what it did not take is dropped, the socket with it
        except (
            ValueError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
        ):
            pass  # a scraper that went away or spoke nonsense: nothing to answer
        finally:
            self.connections -= 1
            writer.close()

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
