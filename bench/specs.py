"""What crosses a process boundary: a load generator's LoadSpec in (JSON on its stdin),
its LoadResult out (a JSON line): one typed shape on both sides (asdict, from_dict)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# The gRPC message bound of the bench's clients and of the gRPC floor: scout's default
# (server/app.py), restated because that one is private and may change.
GRPC_OPTIONS = [(f"grpc.max_{way}_message_length", 64 * 2**20) for way in ("receive", "send")]


@dataclass(frozen=True)
class Host:
    """One SSH endpoint, known to scout by name."""

    name: str
    address: str
    port: int


@dataclass(frozen=True)
class Auth:
    """How the baselines log in: user, key, known_hosts, and the ciphers they offer (scout's
    own preference, server.connector.CIPHERS, so a ratio measures scout, not a cipher)."""

    user: str
    client_key: str
    known_hosts: str
    ciphers: tuple[str, ...]


@dataclass(frozen=True)
class LoadSpec:
    """One measurement: which backend, how the requests come, where they go."""

    backend: str  # scout | raw | raw_cold | naive | pssh | pssh_cold (bench.callers)
    mode: str  # closed | open | burst (bench.loadgen)
    hosts: tuple[Host, ...]
    command: str = "echo ok"
    target: str = ""  # scout: the gRPC target
    channels: int = 1  # scout: gRPC channels (TCP connections), worker w on w % channels
    op: str = "exec"  # scout: exec, stream, stream_raw (not decoded), or many (ExecuteMany)
    auth: Auth | None = None  # the SSH baselines
    per_host: int = 1  # raw: connections per host, opened before the clock
    prewarm: bool = False  # naive: connect every host before the clock
    concurrency: int = 1  # closed: callers; burst: requests
    parallel: int = 0  # raw: at most this many requests at once (0: no bound); many: max_parallel
    rate: float = 0.0  # open: arrivals per second; closed: at most this many starts (0: no pace)
    warmup: float = 0.0  # seconds before the measured window (closed, open)
    duration: float = 1.0  # seconds of the measured window (closed, open)
    timeout: float = 30.0  # per request
    seed: int | None = None  # pick hosts at random with this seed; None: round robin
    server_pid: int = 0  # whose CPU to read over the window (0: none)
    target_pid: int = 0  # the SSH server; its whole process tree is read
    scrape: str = ""  # a /metrics URL to GET every second meanwhile, as Prometheus would
    probe: bool = False  # count the measured process's system calls (bench.procs.Probe)
    keyed: bool = False  # scout: each Execute with an idempotency_key of its own
    measured: str = "OK"  # the outcome whose latencies are measured; others count as errors

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoadSpec:
        """The inverse of dataclasses.asdict."""
        auth = d["auth"] and Auth(**{**d["auth"], "ciphers": tuple(d["auth"]["ciphers"])})
        return cls(**{**d, "hosts": tuple(Host(**h) for h in d["hosts"]), "auth": auth})


@dataclass(frozen=True)
class Latency:
    """Percentiles (nearest rank) of the successful requests, in milliseconds."""

    p50: float = math.nan
    p95: float = math.nan
    p99: float = math.nan
    max: float = math.nan

    @classmethod
    def of(cls, seconds: list[float]) -> Latency:
        """The summary of a sample of latencies in seconds."""
        s, n = sorted(seconds), len(seconds)
        return cls(
            *(1000 * s[max(1, math.ceil(q * n / 100)) - 1] for q in (50, 95, 99, 100)) if s else ()
        )


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
    scrapes: int = 0  # good answers from spec.scrape
    counts: dict[str, float] = field(default_factory=dict)  # per request (bench.procs.Probe)
    seen: dict[str, int] = field(default_factory=dict)  # the fake SSH server's counters
    cipher: str = ""  # the SSH cipher the client negotiated (SSH clients that can tell)

    @property
    def mib_s(self) -> float:
        """Output throughput."""
        return self.nbytes / self.elapsed / 2**20 if self.elapsed > 0 else math.nan

    def brief(self) -> str:
        """One line for the progress log."""
        text = f"makespan {self.elapsed * 1000:.0f} ms, " if self.mode == "burst" else ""
        text += f"{self.mib_s:.0f} MiB/s, " if self.nbytes >= 2**20 else ""
        text += f"{self.throughput:,.0f}/s, p95 {self.latency.p95:.1f} ms"
        return text + (f", errors {self.errors}" if self.errors else "")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoadResult:
        """The inverse of dataclasses.asdict."""
        return cls(**{**d, "latency": Latency(**d["latency"]), "cpu": Cpu(**d["cpu"])})
