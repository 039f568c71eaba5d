"""The Prometheus exposition of a real Runtime (built from a config directory, never run): every
documented name with its HELP and TYPE, label sets, values, cumulative histogram buckets, services
present at 0, and one exposition per Runtime, outside prometheus_client's global registry."""

from __future__ import annotations

import re
from pathlib import Path

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.certs import init_ca, issue_workload
from sidecar.config.loader import load_directory
from sidecar.server import Runtime
from sidecar.telemetry.prometheus import render

# The documented names (docs: reference/observability.md), as exposed (`_total` included), and
# their Prometheus types.
EXPECTED_METRICS = {
    "sidecar_requests_total": "counter",
    "sidecar_request_duration_seconds": "histogram",
    "sidecar_upstream_retries_total": "counter",
    "sidecar_upstream_ejections_total": "counter",
    "sidecar_circuit_breaker_open": "gauge",
    "sidecar_upstream_connections_active": "gauge",
    "sidecar_config_reloads_total": "counter",
    "sidecar_tls_handshake_failures_total": "counter",
    "sidecar_spans_dropped_total": "counter",
    "sidecar_tcp_connections_total": "counter",
    "sidecar_tcp_bytes_total": "counter",
}
UPSTREAM_METRICS = (
    "sidecar_upstream_retries_total",
    "sidecar_upstream_ejections_total",
    "sidecar_circuit_breaker_open",
    "sidecar_upstream_connections_active",
)

# The `le` of each bucket of sidecar_request_duration_seconds, as Prometheus spells them.
LE = ["0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0"]
LE += ["10.0", "30.0", "60.0", "+Inf"]

Labels = frozenset[tuple[str, str]]


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ca = tmp_path_factory.mktemp("pki") / "ca"
    init_ca("mesh.local", ca)
    out = ca.parent / "frontend"
    issue_workload(ca, "spiffe://mesh.local/ns/default/sa/frontend", out)
    return out


def write_config(directory: Path, workload: Path, *, inbound: bool = True, services: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    sidecar = [
        "kind: Sidecar",
        "service: frontend",
        f"tls: {{cert: {workload}/cert.pem, key: {workload}/key.pem, ca: {workload}/ca.pem}}",
        "outbound: {listen: 127.0.0.1:15001}",
        "admin: {listen: 127.0.0.1:15000}",
    ]
    if inbound:
        sidecar.append("inbound: {listen: 127.0.0.1:15006, app: 127.0.0.1:8080}")
    (directory / "sidecar.yaml").write_text("\n".join(sidecar) + "\n")
    if services is None:
        services = """\
kind: Service
name: orders
endpoints: [{address: 10.0.0.1:80}, {address: 10.0.0.2:80}]
tls: {mode: disabled}
circuit_breaker: {max_requests: 2}
---
kind: Service
name: payments
endpoints: [{address: 10.0.0.3:80}]
tls: {mode: disabled}
"""
    (directory / "services.yaml").write_text(services)
    return directory


def make_runtime(tmp_path: Path, workload: Path, *, inbound: bool = True) -> Runtime:
    return Runtime(load_directory(write_config(tmp_path / "config", workload, inbound=inbound)))


class Scrape:
    """One rendered exposition: the raw text, and every sample by name and label set."""

    def __init__(self, runtime: Runtime) -> None:
        self.text = render(runtime.exposition().families()).decode()
        self.families = list(text_string_to_metric_families(self.text))
        self.samples: dict[str, dict[Labels, float]] = {}
        self.order: dict[str, list[dict[str, str]]] = {}
        for family in self.families:
            for sample in family.samples:
                self.samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
                self.order.setdefault(sample.name, []).append(sample.labels)

    def value(self, name: str, **labels: str) -> float:
        return self.samples[name][frozenset(labels.items())]

    def label_sets(self, name: str) -> set[Labels]:
        return set(self.samples.get(name, {}))


def test_every_spec_metric_has_help_and_type_under_its_exact_name(tmp_path: Path, workload: Path) -> None:
    scrape = Scrape(make_runtime(tmp_path, workload))
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", scrape.text, re.MULTILINE))
    helps = dict(re.findall(r"^# HELP (\S+) (.+)$", scrape.text, re.MULTILINE))
    assert types == EXPECTED_METRICS
    assert set(helps) == set(EXPECTED_METRICS)
    assert all(len(text) > 10 and "\n" not in text for text in helps.values())
    assert "_created" not in scrape.text  # no OpenMetrics extras in the 0.0.4 text format


def test_at_rest_every_service_reload_result_and_listener_is_present_at_zero(tmp_path: Path, workload: Path) -> None:
    scrape = Scrape(make_runtime(tmp_path, workload))
    for name in UPSTREAM_METRICS:
        assert scrape.samples[name] == {
            frozenset({("service", "orders")}): 0.0,
            frozenset({("service", "payments")}): 0.0,
        }, name
    assert scrape.samples["sidecar_config_reloads_total"] == {
        frozenset({("result", "success")}): 0.0,
        frozenset({("result", "failure")}): 0.0,
    }
    assert scrape.samples["sidecar_tls_handshake_failures_total"] == {frozenset({("listener", "inbound")}): 0.0}
    assert scrape.samples["sidecar_spans_dropped_total"] == {frozenset(): 0.0}
    assert "sidecar_requests_total" not in scrape.samples  # no request finished yet
    assert "sidecar_request_duration_seconds_bucket" not in scrape.samples
    assert "sidecar_app" not in scrape.text and 'service="app"' not in scrape.text  # outbound services only


def test_finished_requests_by_direction_service_and_code(tmp_path: Path, workload: Path) -> None:
    runtime = make_runtime(tmp_path, workload)
    metrics = runtime.metrics
    metrics.request_finished("outbound", "orders", 200, 0.003)
    metrics.request_finished("outbound", "orders", 200, 0.004)
    metrics.request_finished("outbound", "orders", 503, 0.2)
    metrics.request_finished("inbound", "frontend", 200, 0.0004)
    scrape = Scrape(runtime)
    assert scrape.samples["sidecar_requests_total"] == {
        frozenset({("direction", "outbound"), ("service", "orders"), ("code", "200")}): 2.0,
        frozenset({("direction", "outbound"), ("service", "orders"), ("code", "503")}): 1.0,
        frozenset({("direction", "inbound"), ("service", "frontend"), ("code", "200")}): 1.0,
    }
    assert scrape.label_sets("sidecar_request_duration_seconds_count") == {
        frozenset({("direction", "outbound"), ("service", "orders")}),
        frozenset({("direction", "inbound"), ("service", "frontend")}),
    }


def test_duration_histogram_has_cumulative_le_buckets_ending_in_inf(tmp_path: Path, workload: Path) -> None:
    runtime = make_runtime(tmp_path, workload)
    for seconds in (0.003, 0.005, 0.2, 90.0):  # 0.005 sits on a bound: `le` includes it
        runtime.metrics.request_finished("outbound", "orders", 200, seconds)
    scrape = Scrape(runtime)
    labels = {"direction": "outbound", "service": "orders"}
    buckets = [
        (sample["le"], scrape.value("sidecar_request_duration_seconds_bucket", **sample))
        for sample in scrape.order["sidecar_request_duration_seconds_bucket"]
        if {k: v for k, v in sample.items() if k != "le"} == labels
    ]
    assert [le for le, _ in buckets] == LE
    assert buckets[0] == ("0.0005", 0.0) and ("1.0", 3.0) in buckets
    counts = dict(buckets)
    assert (counts["0.0025"], counts["0.005"], counts["0.1"], counts["0.25"], counts["60.0"]) == (0, 2, 2, 3, 3)
    assert counts["+Inf"] == 4
    assert [count for _, count in buckets] == sorted(count for _, count in buckets)  # cumulative
    assert scrape.value("sidecar_request_duration_seconds_count", **labels) == 4
    assert scrape.value("sidecar_request_duration_seconds_sum", **labels) == pytest.approx(90.208)


def test_upstream_retries_ejections_breaker_and_connections(tmp_path: Path, workload: Path) -> None:
    runtime = make_runtime(tmp_path, workload)
    orders = runtime.registry.clusters["orders"]
    orders.retries += 3
    orders.ejections += 1
    orders.endpoints[0].pool.open_connections = 2
    orders.endpoints[1].pool.open_connections = 1
    for _ in range(2):  # max_requests: 2 in flight fills the breaker
        orders.endpoints[0].started()
    scrape = Scrape(runtime)
    assert scrape.value("sidecar_upstream_retries_total", service="orders") == 3
    assert scrape.value("sidecar_upstream_ejections_total", service="orders") == 1
    assert scrape.value("sidecar_upstream_connections_active", service="orders") == 3
    assert scrape.value("sidecar_circuit_breaker_open", service="orders") == 1
    for name in UPSTREAM_METRICS:
        assert scrape.value(name, service="payments") == 0, name
    orders.endpoints[0].finished()
    assert Scrape(runtime).value("sidecar_circuit_breaker_open", service="orders") == 0


def test_reloads_tls_failures_and_dropped_spans(tmp_path: Path, workload: Path) -> None:
    runtime = make_runtime(tmp_path, workload)
    runtime.metrics.config_reloads["success"] += 2
    runtime.metrics.config_reloads["failure"] += 1
    runtime.tls_failures["inbound", "bad_certificate"] += 2
    runtime.tls_failures["inbound", "timeout"] += 1
    runtime.metrics.dropped_spans_source = lambda: 7
    scrape = Scrape(runtime)
    assert scrape.value("sidecar_config_reloads_total", result="success") == 2
    assert scrape.value("sidecar_config_reloads_total", result="failure") == 1
    assert scrape.samples["sidecar_tls_handshake_failures_total"] == {frozenset({("listener", "inbound")}): 3.0}
    assert scrape.value("sidecar_spans_dropped_total") == 7
    runtime.metrics.config_reloads.clear()  # a result never counted is still listed, at 0
    assert Scrape(runtime).samples["sidecar_config_reloads_total"] == {
        frozenset({("result", "success")}): 0.0,
        frozenset({("result", "failure")}): 0.0,
    }


def test_without_inbound_listener_no_tls_listener_is_listed(tmp_path: Path, workload: Path) -> None:
    scrape = Scrape(make_runtime(tmp_path, workload, inbound=False))
    assert "sidecar_tls_handshake_failures_total" not in scrape.samples
    assert "# TYPE sidecar_tls_handshake_failures_total counter" in scrape.text


def test_services_follow_the_current_snapshot(tmp_path: Path, workload: Path) -> None:
    runtime = make_runtime(tmp_path, workload)
    runtime.registry.clusters["orders"].retries = 5
    exposition = runtime.exposition()
    services = """\
kind: Service
name: orders
endpoints: [{address: 10.0.0.1:80}]
tls: {mode: disabled}
---
kind: Service
name: inventory
endpoints: [{address: 10.0.0.9:80}]
tls: {mode: disabled}
"""
    runtime.apply(load_directory(write_config(tmp_path / "config", workload, services=services)))
    text = render(exposition.families()).decode()  # the same exposition, scraped after the reload
    retries = {
        sample.labels["service"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "sidecar_upstream_retries_total"
    }
    assert retries == {"orders": 5.0, "inventory": 0.0}  # counts survive; payments is gone


def test_each_runtime_has_its_own_exposition_outside_the_global_registry(tmp_path: Path, workload: Path) -> None:
    first = make_runtime(tmp_path / "a", workload)
    second = make_runtime(tmp_path / "b", workload)
    first.registry.clusters["orders"].retries = 4
    assert Scrape(first).value("sidecar_upstream_retries_total", service="orders") == 4
    assert Scrape(second).value("sidecar_upstream_retries_total", service="orders") == 0
    assert b"sidecar_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)
