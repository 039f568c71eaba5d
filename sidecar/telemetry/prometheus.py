"""The Prometheus exposition of one running sidecar (docs: reference/observability.md): names, help,
label sets, buckets.

Nothing here is counted: at scrape time `SidecarCollector` reads what it was given, the plain
counters the request path keeps (`telemetry/metrics.py`), the upstream registry's live state
(retries, ejections, breakers, pooled connections, as `ClusterStatistics`) and the TLS handshake
failures, and turns them into prometheus_client metric families. Each running sidecar gets a
private `CollectorRegistry` (`collector_registry`, which `server.Runtime` calls with its own
numbers), never the process-global one, so several sidecars in one process each expose only their
own numbers.

The outbound services of the current snapshot are always present, at 0 until something happens, as
are both config reload results and, with an inbound listener, `listener="inbound"`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from .metrics import DURATION_BUCKETS

if TYPE_CHECKING:
    from ..upstream.registry import ClusterStatistics
    from .metrics import RequestMetrics

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # text/plain; version=0.0.4; charset=utf-8

# The `le` label of each histogram bucket, as prometheus_client's own histograms spell it.
BUCKET_BOUNDS = (*(floatToGoString(bound) for bound in DURATION_BUCKETS), "+Inf")


class SidecarCollector:
    """A prometheus_client custom collector over one running sidecar: every metric of the sidecar, at
    scrape time.

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

    def describe(self) -> list[Metric]:
        """No names to reserve: the collector lives alone in its sidecar's registry."""
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self._requests()
        yield from self._upstreams()
        yield self._config_reloads()
        yield self._tls_failures()
        yield CounterMetricFamily(
            "sidecar_spans_dropped_total",
            "Trace spans dropped instead of exported (queue full or collector unreachable).",
            value=self.metrics.spans_dropped,
        )

    def _requests(self) -> Iterator[Metric]:
        metrics = self.metrics
        requests = CounterMetricFamily(
            "sidecar_requests_total",
            "Finished requests by direction, service and response status code.",
            labels=("direction", "service", "code"),
        )
        for (direction, service, code), count in sorted(metrics.requests.items()):
            requests.add_metric((direction, service, str(code)), count)
        yield requests
        durations = HistogramMetricFamily(
            "sidecar_request_duration_seconds",
            "Duration of finished requests by direction and service, in seconds.",
            labels=("direction", "service"),
        )
        for (direction, service), histogram in sorted(metrics.durations.items()):
            buckets = list(zip(BUCKET_BOUNDS, histogram.cumulative(), strict=True))
            durations.add_metric((direction, service), buckets, histogram.sum)
        yield durations
        connections = CounterMetricFamily(
            "sidecar_tcp_connections_total",
            "Opaque TCP connections taken, by direction and service.",
            labels=("direction", "service"),
        )
        for (direction, service), count in sorted(metrics.tcp_connections.items()):
            connections.add_metric((direction, service), count)
        yield connections
        carried = CounterMetricFamily(
            "sidecar_tcp_bytes_total",
            "Bytes of opaque TCP connections by direction, service and flow (received from the caller, sent to it).",
            labels=("direction", "service", "flow"),
        )
        for (direction, service, flow), count in sorted(metrics.tcp_bytes.items()):
            carried.add_metric((direction, service, flow), count)
        yield carried

    def _upstreams(self) -> Iterator[Metric]:
        retries = CounterMetricFamily(
            "sidecar_upstream_retries_total", "Retries started to an upstream service.", labels=("service",)
        )
        ejections = CounterMetricFamily(
            "sidecar_upstream_ejections_total",
            "Endpoints of an upstream service ejected by outlier detection.",
            labels=("service",),
        )
        breaker = GaugeMetricFamily(
            "sidecar_circuit_breaker_open",
            "1 while any circuit breaker threshold of an upstream service is full, else 0.",
            labels=("service",),
        )
        connections = GaugeMetricFamily(
            "sidecar_upstream_connections_active",
            "Open connections (busy or pooled idle) to the endpoints of an upstream service.",
            labels=("service",),
        )
        for cluster in self.clusters():
            labels = (cluster.name,)
            retries.add_metric(labels, cluster.retries)
            ejections.add_metric(labels, cluster.ejections)
            breaker.add_metric(labels, 1 if cluster.breaker_open else 0)
            connections.add_metric(labels, cluster.open_connections)
        yield from (retries, ejections, breaker, connections)

    def _config_reloads(self) -> Metric:
        reloads = CounterMetricFamily(
            "sidecar_config_reloads_total", "Config reloads by result (success or failure).", labels=("result",)
        )
        results = Counter({"success": 0, "failure": 0})  # both results, even when never seen
        results.update(self.metrics.config_reloads)
        for result, count in sorted(results.items()):
            reloads.add_metric((result,), count)
        return reloads

    def _tls_failures(self) -> Metric:
        failures = CounterMetricFamily(
            "sidecar_tls_handshake_failures_total",
            "TLS handshakes that failed on a listener (any reason: bad certificate, timeout, ...).",
            labels=("listener",),
        )
        by_listener: Counter[str] = Counter()
        if self.has_inbound():
            by_listener["inbound"] = 0
        for (listener, _reason), count in self.tls_failures.items():
            by_listener[listener] += count
        for listener, count in sorted(by_listener.items()):
            failures.add_metric((listener,), count)
        return failures


def collector_registry(
    metrics: RequestMetrics,
    clusters: Callable[[], Iterable[ClusterStatistics]],
    tls_failures: Counter[tuple[str, str]],
    has_inbound: Callable[[], bool],
) -> CollectorRegistry:
    """A private registry holding only one sidecar's collector (see `SidecarCollector` for the
    arguments); make one per running sidecar and keep it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SidecarCollector(metrics, clusters, tls_failures, has_inbound))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text format (version 0.0.4) of everything in `registry`, now."""
    return generate_latest(registry)
