"""What crosses a process boundary: a load generator's spec in, its result out.

The parent writes a LoadSpec as JSON on the load generator's stdin and reads a LoadResult
back as one JSON line: `dataclasses.asdict` on one side, `from_dict` on the other, so both
processes share one typed shape instead of dictionaries with agreed keys.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# The gRPC message bound of the bench's clients and of the gRPC floor: scout's own default
# (server/app.py), restated rather than imported because that one is private and may change.
MAX_MESSAGE = 64 * 2**20
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
]


@dataclass(frozen=True)
class Host:
    """One SSH endpoint, known to scout by name."""

    name: str
    address: str
    port: int


@dataclass(frozen=True)
class Auth:
    """How scout and the baselines log in: user, key, known_hosts, and the cipher to use."""

    user: str
    client_key: str
    known_hosts: str
    ciphers: tuple[str, ...] = ()  # empty: asyncssh's default preference, as scout's


@dataclass(frozen=True)
class LoadSpec:
    """One measurement: which backend, how the requests come, where they go."""

    backend: str  # scout | raw | raw_cold | naive (bench.callers)
    mode: str  # closed | open | burst (bench.loadgen)
    hosts: tuple[Host, ...]
    command: str = "echo ok"
    target: str = ""  # scout: the gRPC target
    op: str = "exec"  # scout: exec, stream, or many (one ExecuteMany over every host)
    auth: Auth | None = None  # the SSH baselines
    per_host: int = 1  # raw: connections per host, opened before the clock
    prewarm: bool = False  # naive: connect every host before the clock
    concurrency: int = 1  # closed: callers; burst: requests
    parallel: int = 0  # raw: at most this many requests at once (0: no bound); many: max_parallel
    rate: float = 0.0  # open: arrivals per second
    warmup: float = 0.0  # seconds before the measured window (closed, open)
    duration: float = 1.0  # seconds of the measured window (closed, open)
    timeout: float = 30.0  # per request
    seed: int | None = None  # pick hosts at random with this seed; None: round robin
    server_pid: int = 0  # whose CPU to read over the window (0: none)
    target_pid: int = 0  # the SSH server; its whole process tree is read

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoadSpec:
        """The inverse of dataclasses.asdict."""
        auth = d["auth"] and Auth(**{**d["auth"], "ciphers": tuple(d["auth"]["ciphers"])})
        hosts = tuple(Host(**h) for h in d["hosts"])
        return cls(**{**d, "hosts": hosts, "auth": auth})


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest rank on an ascending sequence (a latency some request really had); NaN if empty."""
    if not ordered:
        return math.nan
    return ordered[min(max(1, math.ceil(q / 100 * len(ordered))), len(ordered)) - 1]


@dataclass(frozen=True)
class Latency:
    """Percentiles of the successful requests, in milliseconds."""

    p50: float = math.nan
    p95: float = math.nan
    p99: float = math.nan
    max: float = math.nan
    mean: float = math.nan

    @classmethod
    def of(cls, seconds: list[float]) -> Latency:
        """The summary of a sample of latencies in seconds."""
        s = sorted(seconds)
        if not s:
            return cls()
        p50, p95, p99, top = (1000 * percentile(s, q) for q in (50, 95, 99, 100))
        return cls(p50, p95, p99, top, statistics.fmean(s) * 1000)


@dataclass(frozen=True)
class Cpu:
    """CPU µs per request finished in the window, by process (NaN: not measured)."""

    loadgen: float = math.nan  # the load generator: for the raw baseline, the SSH client work
    server: float = math.nan  # the server under test
    target: float = math.nan  # the SSH server's whole process tree

    @property
    def total(self) -> float:
        """All three processes together."""
        return sum(c for c in (self.loadgen, self.server, self.target) if not math.isnan(c))


@dataclass
class LoadResult:
    """What one load generator run measured."""

    backend: str
    mode: str
    ok: int
    elapsed: float  # the measured window; for a burst, its makespan
    throughput: float  # successful requests per second of the window
    latency: Latency
    cpu: Cpu
    nbytes: int  # output bytes of the successful requests
    errors: dict[str, int] = field(default_factory=dict)  # failed requests by outcome
    error_details: dict[str, str] = field(default_factory=dict)  # the first detail of each
    rss_before: int = 0  # the load generator's RSS before and after its setup
    rss_after: int = 0

    @property
    def mib_s(self) -> float:
        """Output throughput."""
        return self.nbytes / self.elapsed / 2**20 if self.elapsed > 0 else math.nan

    def brief(self) -> str:
        """One line for the progress log."""
        text = f"{self.throughput:,.0f}/s, p95 {self.latency.p95:.1f} ms"
        if self.mode == "burst":
            text = f"makespan {self.elapsed * 1000:.0f} ms, " + text
        if self.nbytes >= 2**20:
            text = f"{self.mib_s:.0f} MiB/s, " + text
        return text + (f", errors {self.errors}" if self.errors else "")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoadResult:
        """The inverse of dataclasses.asdict."""
        return cls(**{**d, "latency": Latency(**d["latency"]), "cpu": Cpu(**d["cpu"])})
