"""The project's Prometheus text renderer against prometheus_client, its oracle.

The sidecar used prometheus_client's metric families and `generate_latest` until their import
(about 2.9 MiB of resident memory) was dropped from the running proxy. Here the old way is rebuilt
with prometheus_client from the same live numbers of a populated Runtime (every family with
samples, label values needing escapes, a histogram with observations), and the new renderer must
write the same bytes, which prometheus_client's parser must read back as the same families. Number
spelling and escaping are also checked on generated values, and a fresh interpreter importing the
server must not import prometheus_client at all.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from sidecar.certs import init_ca, issue_workload
from sidecar.server import Runtime
from sidecar.telemetry.metrics import DURATION_BUCKETS
from sidecar.telemetry.prometheus import Family, go_float, render

from .test_prometheus import make_runtime

REPO = Path(__file__).resolve().parents[2]

# Label values with each character the text format escapes (backslash, double quote, newline).
ODD_SERVICE = 'odd "svc"\\one\nline two'
ODD_LISTENER = 'in\\bound "x"\n'


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ca = tmp_path_factory.mktemp("pki") / "ca"
    init_ca("mesh.local", ca)
    issue_workload(ca, "spiffe://mesh.local/ns/default/sa/frontend", ca.parent / "frontend")
    return ca.parent / "frontend"


class OracleCollector:
    """What the sidecar's prometheus_client collector built from a Runtime's numbers, family by
    family, written here with prometheus_client's own metric families and bucket spelling."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        metrics = self.runtime.metrics
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
        bounds = [*(floatToGoString(bound) for bound in DURATION_BUCKETS), "+Inf"]
        for labels, histogram in sorted(metrics.durations.items()):
            durations.add_metric(labels, list(zip(bounds, histogram.cumulative(), strict=True)), histogram.sum)
        yield durations
        yield counter(
            "sidecar_tcp_connections_total",
            "Opaque TCP connections taken, by direction and service.",
            ("direction", "service"),
            sorted(metrics.tcp_connections.items()),
        )
        yield counter(
            "sidecar_tcp_bytes_total",
            "Bytes of opaque TCP connections by direction, service and flow (received from the caller, sent to it).",
            ("direction", "service", "flow"),
            sorted(metrics.tcp_bytes.items()),
        )
        yield from self.upstreams()
        reloads = Counter({"success": 0, "failure": 0})
        reloads.update(metrics.config_reloads)
        yield counter(
            "sidecar_config_reloads_total",
            "Config reloads by result (success or failure).",
            ("result",),
            [((result,), count) for result, count in sorted(reloads.items())],
        )
        by_listener: Counter[str] = Counter({"inbound": 0} if self.runtime.snapshot.sidecar.inbound else {})
        for (listener, _reason), count in self.runtime.tls_failures.items():
            by_listener[listener] += count
        yield counter(
            "sidecar_tls_handshake_failures_total",
            "TLS handshakes that failed on a listener (any reason: bad certificate, timeout, ...).",
            ("listener",),
            [((listener,), count) for listener, count in sorted(by_listener.items())],
        )
        yield CounterMetricFamily(
            "sidecar_spans_dropped_total",
            "Trace spans dropped instead of exported (queue full or collector unreachable).",
            value=metrics.spans_dropped,
        )

    def upstreams(self) -> Iterator[Metric]:
        clusters = list(self.runtime.registry.statistics())
        by_service = [((cluster.name,), cluster) for cluster in clusters]
        yield counter(
            "sidecar_upstream_retries_total",
            "Retries started to an upstream service.",
            ("service",),
            [(name, cluster.retries) for name, cluster in by_service],
        )
        yield counter(
            "sidecar_upstream_ejections_total",
            "Endpoints of an upstream service ejected by outlier detection.",
            ("service",),
            [(name, cluster.ejections) for name, cluster in by_service],
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
        for name, cluster in by_service:
            breaker.add_metric(name, 1 if cluster.breaker_open else 0)
            connections.add_metric(name, cluster.open_connections)
        yield from (breaker, connections)


def counter(name: str, help_text: str, labels: tuple[str, ...], values: list[tuple[tuple[str, ...], int]]) -> Metric:
    family = CounterMetricFamily(name, help_text, labels=labels)
    for label_values, value in values:
        family.add_metric(label_values, value)
    return family


def oracle_text(collector: object) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)  # type: ignore[arg-type]
    return generate_latest(registry)


def populated_runtime(tmp_path: Path, workload: Path) -> Runtime:
    """A Runtime with a sample in every family, odd label values, and large and fractional numbers."""
    runtime = make_runtime(tmp_path, workload)
    metrics = runtime.metrics
    for seconds in (0.0002, 0.005, 0.0371, 1.0, 75.5):  # on a bound, between bounds, beyond the last
        metrics.request_finished("outbound", "orders", 200, seconds)
    metrics.request_finished("outbound", "orders", 503, 0.25)
    metrics.request_finished("outbound", ODD_SERVICE, 404, 0.001)
    metrics.request_finished("inbound", "frontend", 200, 0.0004)
    metrics.tcp_connections["outbound", ODD_SERVICE] += 2
    metrics.tcp_connections["inbound", "frontend"] += 1
    metrics.tcp_bytes["outbound", ODD_SERVICE, "received"] += 12_345_678_901  # 1.2345678901e+10
    metrics.tcp_bytes["outbound", ODD_SERVICE, "sent"] += 1_000_000  # 1e+06
    metrics.tcp_bytes["inbound", "frontend", "sent"] += 999_999
    metrics.config_reloads["success"] += 3
    runtime.tls_failures["inbound", "timeout"] += 2
    runtime.tls_failures[ODD_LISTENER, "bad_certificate"] += 1
    metrics.dropped_spans_source = lambda: 7
    orders = runtime.registry.clusters["orders"]
    orders.retries += 4
    orders.ejections += 1
    orders.endpoints[0].pool.open_connections = 2
    for _ in range(2):  # max_requests: 2 in flight fills the breaker
        orders.endpoints[0].started()
    return runtime


def test_a_populated_sidecar_renders_as_prometheus_client_rendered_it(tmp_path: Path, workload: Path) -> None:
    runtime = populated_runtime(tmp_path, workload)
    text = render(runtime.exposition().families())
    expected = oracle_text(OracleCollector(runtime))
    assert text.decode().splitlines() == expected.decode().splitlines()  # a readable diff first
    assert text == expected
    assert b"1.2345678901e+10" in text and b"1e+06" in text and b"999999.0" in text
    assert b'service="odd \\"svc\\"\\\\one\\nline two"' in text  # escaped on a single line


def test_the_parser_reads_back_every_family_and_sample(tmp_path: Path, workload: Path) -> None:
    runtime = populated_runtime(tmp_path, workload)
    parsed = list(text_string_to_metric_families(render(runtime.exposition().families()).decode()))
    expected = list(OracleCollector(runtime).collect())
    assert [(f.name, f.type, f.documentation) for f in parsed] == [(f.name, f.type, f.documentation) for f in expected]
    for got, want in zip(parsed, expected, strict=True):
        assert [(s.name, s.labels, float(s.value)) for s in got.samples] == [
            (s.name, s.labels, float(s.value)) for s in want.samples
        ], got.name
    assert all(family.samples for family in parsed)  # every family had something to compare
    assert not [s for family in parsed for s in family.samples if s.name.endswith("_created")]
    requests = next(family for family in parsed if family.name == "sidecar_requests")
    assert {"direction": "outbound", "service": ODD_SERVICE, "code": "404"} in [s.labels for s in requests.samples]


@given(st.floats() | st.integers(min_value=0, max_value=2**64))
@example(1_000_000)
@example(999_999.0)
@example(1234567.5)
@example(1e16)
@example(-1e7)
@example(0.0005)
@example(float("-inf"))
@example(float("nan"))
def test_numbers_are_spelled_as_prometheus_client_spells_them(value: float) -> None:
    assert go_float(value) == floatToGoString(value)


TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)  # any text UTF-8 can encode


@given(label_value=TEXT, help_text=TEXT)
@example(label_value='a\\b"c\nd', help_text="back\\slash\nnew line")
def test_label_values_and_help_are_escaped_as_prometheus_client_escapes_them(label_value: str, help_text: str) -> None:
    ours = Family("sample_total", "counter", help_text, ("label",))
    ours.add((label_value,), 1)
    theirs = CounterMetricFamily("sample_total", help_text, labels=("label",))
    theirs.add_metric((label_value,), 1)

    class One:
        def collect(self) -> Iterator[Metric]:
            yield theirs

    assert render([ours]) == oracle_text(One())


def test_importing_the_server_leaves_prometheus_client_out() -> None:
    """prometheus_client (with wsgiref, http.server, email, gzip...) costs about 2.9 MiB of RSS."""
    script = (
        "import sys\n"
        "import sidecar.server, sidecar.cli\n"
        "print(sidecar.server.__file__)\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'prometheus_client'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    imported_from, prometheus_modules = result.stdout.splitlines()[-2:]
    assert Path(imported_from).is_relative_to(REPO / "sidecar")
    assert prometheus_modules == "[]"
