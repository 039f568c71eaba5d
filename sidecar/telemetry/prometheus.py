"""The Prometheus exposition of one running sidecar (docs: reference/observability.md): names, help,
label sets, buckets, and the text format (version 0.0.4) they are served in.

Nothing here is counted: at scrape time `Exposition` reads what it was given, the plain counters
the request path keeps (`telemetry/metrics.py`), the upstream registry's live state (retries,
ejections, breakers, pooled connections, as `ClusterStatistics`) and the TLS handshake failures,
and turns them into `Family` values, which `render` writes as text. Each running sidecar makes its
own `Exposition` (`server.Runtime.exposition`), so several sidecars in one process each expose only
their own numbers.

The text is what prometheus_client's `generate_latest` wrote for the same families (the sidecar
used it until its import, about 2.9 MiB of resident memory, was dropped; the tests keep it as the
oracle): a counter family is named with its `_total` and has no `_created` sample, labels are sorted
by name, and numbers are spelled as Go spells them (`go_float`).

The outbound services of the current snapshot are always present, at 0 until something happens, as
are both config reload results and, with an inbound listener, `listener="inbound"`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .metrics import DURATION_BUCKETS

if TYPE_CHECKING:
    from ..upstream.registry import ClusterStatistics
    from .metrics import Histogram, RequestMetrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]  # (name, value) pairs
Sample = tuple[str, Labels, float]  # name suffix ("", "_bucket", "_count", "_sum"), labels, value


def go_float(value: float) -> str:
    """`value` as Prometheus' Go code writes a sample value or a bucket bound: Python's shortest
    `repr`, except `+Inf`/`-Inf`/`NaN`, and positive numbers of seven or more integer digits in
    exponent form (`1e+06`, `1.2345678901e+10`)."""
    value = float(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(value)
    whole, point, fraction = text.partition(".")
    if value > 0 and point and len(whole) > 6:
        mantissa = f"{whole[0]}.{whole[1:]}{fraction}".rstrip("0").rstrip(".")
        return f"{mantissa}e+{len(whole) - 1:02d}"
    return text


# The `le` label of each histogram bucket, as Prometheus spells it.
BUCKET_BOUNDS = (*(go_float(bound) for bound in DURATION_BUCKETS), "+Inf")


@dataclass(slots=True)
class Family:
    """One metric family as exposed: its name (a counter's ends in `_total`, as its samples' do),
    type (`counter`, `gauge` or `histogram`), help text, label names and samples."""

    name: str
    type: str
    help: str
    label_names: tuple[str, ...] = ()
    samples: list[Sample] = field(default_factory=list)

    def add(self, label_values: tuple[str, ...], value: float) -> None:
        """One sample of a counter or a gauge."""
        self.samples.append(("", tuple(zip(self.label_names, label_values, strict=True)), value))

    def add_histogram(self, label_values: tuple[str, ...], histogram: Histogram) -> None:
        """A histogram's cumulative `_bucket`s (one per bound, `+Inf` last), then `_count` and `_sum`."""
        labels = tuple(zip(self.label_names, label_values, strict=True))
        cumulative = histogram.cumulative()
        for bound, count in zip(BUCKET_BOUNDS, cumulative, strict=True):
            self.samples.append(("_bucket", (*labels, ("le", bound)), count))
        self.samples.append(("_count", labels, cumulative[-1]))
        self.samples.append(("_sum", labels, histogram.sum))


def escape_help(text: str) -> str:
    """A `# HELP` text on one line: backslash and newline escaped."""
    return text.replace("\\", r"\\").replace("\n", r"\n")


def escape_label_value(value: str) -> str:
    """A label value inside double quotes: backslash, newline and double quote escaped."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def label_set(labels: Labels) -> str:
    """`{name="value",...}` sorted by label name, or nothing without labels."""
    if not labels:
        return ""
    return "{" + ",".join(f'{name}="{escape_label_value(value)}"' for name, value in sorted(labels)) + "}"


def render(families: Iterable[Family]) -> bytes:
    """The Prometheus text format (version 0.0.4) of `families`: HELP, TYPE, then the samples."""
    lines = []
    for family in families:
        lines.append(f"# HELP {family.name} {escape_help(family.help)}\n")
        lines.append(f"# TYPE {family.name} {family.type}\n")
        for suffix, labels, value in family.samples:
            lines.append(f"{family.name}{suffix}{label_set(labels)} {go_float(value)}\n")
    return "".join(lines).encode()


class Exposition:
    """Every metric family of one running sidecar, read when scraped (`families`).

    `metrics`: its request, reload and dropped-span counts; `clusters`: the statistics of its upstream
    services now (config order); `tls_failures`: TLS handshake failures by (listener, reason);
    `has_inbound`: whether its current config has an inbound listener (listed at 0 when it does)."""

    def __init__(
        self,
        metrics: RequestMetrics,
        clusters: Callable[[], Iterable[ClusterStatistics]],
        tls_failures: Counter[tuple[str, str]],
        has_inbound: Callable[[], bool],
    ) -> None:
        self.metrics = metrics
        self.clusters = clusters
        self.tls_failures = tls_failures
        self.has_inbound = has_inbound

    def families(self) -> Iterator[Family]:
        yield from self._requests()
        yield from self._upstreams()
        yield self._config_reloads()
        yield self._tls_failures()
        yield self._spans_dropped()

    def _requests(self) -> Iterator[Family]:
        metrics = self.metrics
        requests = Family(
            "sidecar_requests_total",
            "counter",
            "Finished requests by direction, service and response status code.",
            ("direction", "service", "code"),
        )
        for (direction, service, code), count in sorted(metrics.requests.items()):
            requests.add((direction, service, str(code)), count)
        yield requests
        durations = Family(
            "sidecar_request_duration_seconds",
            "histogram",
            "Duration of finished requests by direction and service, in seconds.",
            ("direction", "service"),
        )
        for (direction, service), histogram in sorted(metrics.durations.items()):
            durations.add_histogram((direction, service), histogram)
        yield durations
        connections = Family(
            "sidecar_tcp_connections_total",
            "counter",
            "Opaque TCP connections taken, by direction and service.",
            ("direction", "service"),
        )
        for (direction, service), count in sorted(metrics.tcp_connections.items()):
            connections.add((direction, service), count)
        yield connections
        carried = Family(
            "sidecar_tcp_bytes_total",
            "counter",
            "Bytes of opaque TCP connections by direction, service and flow (received from the caller, sent to it).",
            ("direction", "service", "flow"),
        )
        for (direction, service, flow), count in sorted(metrics.tcp_bytes.items()):
            carried.add((direction, service, flow), count)
        yield carried

    def _upstreams(self) -> Iterator[Family]:
        retries = Family(
            "sidecar_upstream_retries_total", "counter", "Retries started to an upstream service.", ("service",)
        )
        ejections = Family(
            "sidecar_upstream_ejections_total",
            "counter",
            "Endpoints of an upstream service ejected by outlier detection.",
            ("service",),
        )
        breaker = Family(
            "sidecar_circuit_breaker_open",
            "gauge",
            "1 while any circuit breaker threshold of an upstream service is full, else 0.",
            ("service",),
        )
        connections = Family(
            "sidecar_upstream_connections_active",
            "gauge",
            "Open connections (busy or pooled idle) to the endpoints of an upstream service.",
            ("service",),
        )
        for cluster in self.clusters():
            labels = (cluster.name,)
            retries.add(labels, cluster.retries)
            ejections.add(labels, cluster.ejections)
            breaker.add(labels, 1 if cluster.breaker_open else 0)
            connections.add(labels, cluster.open_connections)
        yield from (retries, ejections, breaker, connections)

    def _config_reloads(self) -> Family:
        reloads = Family(
            "sidecar_config_reloads_total", "counter", "Config reloads by result (success or failure).", ("result",)
        )
        results = Counter({"success": 0, "failure": 0})  # both results, even when never seen
        results.update(self.metrics.config_reloads)
        for result, count in sorted(results.items()):
            reloads.add((result,), count)
        return reloads

    def _tls_failures(self) -> Family:
        failures = Family(
            "sidecar_tls_handshake_failures_total",
            "counter",
            "TLS handshakes that failed on a listener (any reason: bad certificate, timeout, ...).",
            ("listener",),
        )
        by_listener: Counter[str] = Counter()
        if self.has_inbound():
            by_listener["inbound"] = 0
        for (listener, _reason), count in self.tls_failures.items():
            by_listener[listener] += count
        for listener, count in sorted(by_listener.items()):
            failures.add((listener,), count)
        return failures

    def _spans_dropped(self) -> Family:
        dropped = Family(
            "sidecar_spans_dropped_total",
            "counter",
            "Trace spans dropped instead of exported (queue full or collector unreachable).",
        )
        dropped.add((), self.metrics.spans_dropped)
        return dropped
