"""The sidecar's own counters of finished requests, kept cheap on the request path.

A finished request costs two dict lookups and an integer add or two here: no locks, no label
objects, no string formatting. Everything Prometheus needs (names, label sets, cumulative buckets,
the text format) is produced at scrape time by `telemetry/prometheus.py`, which reads these
counters next to the upstream registry's live state.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable

# Upper bounds of the duration histogram, in seconds: a proxy hop is sub-millisecond, an upstream
# call anywhere from a millisecond to a minute.
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class Histogram:
    """Observations in `DURATION_BUCKETS` (one count per bucket, not cumulative; the last slot is
    +Inf), their sum and their count."""

    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.buckets[bisect_left(DURATION_BUCKETS, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[int]:
        """Counts at or below each bound, +Inf last (Prometheus' `le` buckets)."""
        out = []
        running = 0
        for count in self.buckets:
            running += count
            out.append(running)
        return out


class RequestMetrics:
    """Finished requests by (direction, service, code) and their durations by (direction, service);
    config reloads by result; and, through `dropped_spans_source`, the spans tracing dropped.
    Retries, ejections and connections are the upstream registry's."""

    __slots__ = ("config_reloads", "dropped_spans_source", "durations", "requests", "tcp_bytes", "tcp_connections")

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, int]] = Counter()  # the code as a string only when scraped
        # Opaque TCP: connections taken by (direction, service), and bytes carried by (direction,
        # service, flow), flow "received" from the connection's caller or "sent" back to it; bytes
        # are added as they pass, so a long-lived connection shows what it carried so far.
        self.tcp_connections: Counter[tuple[str, str]] = Counter()
        self.tcp_bytes: Counter[tuple[str, str, str]] = Counter()
        self.durations: dict[tuple[str, str], Histogram] = {}
        self.config_reloads: Counter[str] = Counter({"success": 0, "failure": 0})
        self.dropped_spans_source: Callable[[], int] = lambda: 0  # tracing sets its own counter here

    @property
    def spans_dropped(self) -> int:
        """Spans lost on the way to the collector (a full queue, a failed export)."""
        return self.dropped_spans_source()

    def request_finished(self, direction: str, service: str, status: int, seconds: float) -> None:
        self.requests[(direction, service, status)] += 1
        key = (direction, service)
        histogram = self.durations.get(key)
        if histogram is None:
            histogram = self.durations[key] = Histogram()
        histogram.observe(seconds)
