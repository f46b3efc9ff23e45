"""The gRPC port's HTTP/2 ping policy, as grpc server options.

grpc's defaults suit neither side of a gateway whose calls may be quiet for minutes:
it accepts a caller's ping at most every 5 minutes while no data flows (more often, and
after two such strikes, the connection gets GOAWAY "too many pings": a quiet call dies
UNAVAILABLE, may-have-run), and it pings a caller only after 2 hours (a caller that
vanished mid-call keeps its command running until the command's own timeout).
"""

from __future__ import annotations

from .config import ServerSettings

NEVER_MS = 2**31 - 1  # grpc's "no keepalive pings" (INT_MAX milliseconds)


def _ms(seconds: float) -> int:
    return min(round(seconds * 1000), NEVER_MS)


def ping_options(settings: ServerSettings) -> list[tuple[str, int]]:
    """grpc server options for scout's pings and the pings it accepts."""
    interval = _ms(settings.keepalive_interval) if settings.keepalive_interval > 0 else NEVER_MS
    return [
        ("grpc.keepalive_time_ms", interval),
        ("grpc.keepalive_timeout_ms", _ms(settings.keepalive_timeout)),
        # grpc 1.85 closes a connection whose ping goes unanswered after this one; with
        # keepalive_timeout_ms alone, a vanished caller was still connected 10 s later.
        ("grpc.http2.ping_timeout_ms", _ms(settings.keepalive_timeout)),
        # Keep pinging through a quiet call (grpc stops after 2 pings without data).
        ("grpc.http2.max_pings_without_data", 0),
        # Proxies (Envoy's connection_keepalive) and pooled clients ping idle connections too.
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(settings.min_ping_interval)),
        ("grpc.http2.max_ping_strikes", settings.max_ping_strikes),
    ]
