"""The loader: which files are read, and every problem reported as FILE:LINE: path: message."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
import trustme

from sidecar.certs import issue_workload
from sidecar.config import (
    Address,
    ConfigError,
    ConfigIssue,
    RouteTarget,
    ServiceTls,
    SidecarTls,
    load_directory,
)
from sidecar.config.loader import format_path

from .conftest import FRONTEND_ID, ConfigDir, tls_section

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------
# Good directories
# ------------------------------------------------------------------------------------------------


def test_example_mesh_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    snapshot = load_directory("mesh-config")
    assert snapshot.files == ("mesh-config/routes.yaml", "mesh-config/services.yaml", "mesh-config/sidecar.yaml")
    assert snapshot.sidecar.service == "frontend"
    assert snapshot.sidecar.inbound is not None
    assert snapshot.sidecar.inbound.app == Address("127.0.0.1", 8080)
    assert (snapshot.sidecar.inbound.mode, snapshot.sidecar.inbound.allow) == (
        "strict",
        ("spiffe://mesh.local/ns/default/sa/*",),
    )
    assert snapshot.sidecar.tls == SidecarTls(
        cert="certs/frontend/cert.pem", key="certs/frontend/key.pem", ca="certs/frontend/ca.pem"
    )
    assert snapshot.identity == "spiffe://mesh.local/ns/default/sa/frontend"
    assert list(snapshot.services) == ["orders", "orders-v2", "cache"]
    assert snapshot.services["cache"].protocol == "tcp"
    assert snapshot.sidecar.capture.mode == "explicit"
    orders = snapshot.services["orders"]
    assert orders.tls == ServiceTls(mode="mutual", identity="spiffe://mesh.local/ns/default/sa/orders")
    assert snapshot.services["orders-v2"].tls == ServiceTls()
    assert [str(e.address) for e in orders.endpoints] == ["127.0.0.1:15106", "127.0.0.1:15206"]
    shop = snapshot.routes["shop"]
    canary, split = shop.rules
    assert canary.match.path_prefix == "/api"
    assert canary.match.headers == (("x-canary", "1"),)
    assert canary.to == (RouteTarget(service="orders-v2", weight=100),)
    assert split.to == (RouteTarget(service="orders", weight=90), RouteTarget(service="orders-v2", weight=10))
    assert split.timeout == 3.0


def test_defaults_are_filled(config_dir: ConfigDir) -> None:
    config_dir.write(
        "all.yaml",
        """
        kind: Sidecar
        service: frontend
        TLS
        ---
        kind: Service
        name: Orders
        endpoints:
          - address: orders.default.svc:15006
        ---
        kind: Route
        host: Shop:8080
        rules:
          - to: [{service: Orders}]
        """.replace("TLS", tls_section(config_dir.workload)),
    )
    snapshot = config_dir.load()
    sidecar = snapshot.sidecar
    assert sidecar.inbound is None  # no section: no inbound listener
    assert sidecar.outbound.listen == Address("127.0.0.1", 15001)
    assert sidecar.admin.listen == Address("127.0.0.1", 15000)
    assert (sidecar.limits.max_request_headers, sidecar.limits.max_request_body) == (65536, 0)
    assert sidecar.limits.header_read_timeout == 10.0
    assert sidecar.drain_timeout == 20.0
    service = snapshot.services["Orders"]
    assert service.hosts == ("orders",)
    assert service.tls == ServiceTls(mode="mutual", identity=None, ca=None, server_name=None)
    assert service.endpoints[0].weight == 1
    assert (service.dns_refresh, service.load_balancer) == (5.0, "least_request")
    assert (service.timeouts.connect, service.timeouts.request, service.timeouts.idle) == (1.0, 15.0, 60.0)
    rule = snapshot.routes["shop"].rules[0]
    assert rule.to[0].weight == 100
    assert (rule.match.path_prefix, rule.match.path, rule.match.headers, rule.timeout) == (None, None, (), None)


def test_empty_inbound_section_runs_with_defaults(config_dir: ConfigDir) -> None:
    config_dir.write("sidecar.yaml", f"kind: Sidecar\nservice: a\ninbound: {{}}\n{tls_section(config_dir.workload)}\n")
    inbound = config_dir.load().sidecar.inbound
    assert inbound is not None
    assert (str(inbound.listen), str(inbound.app)) == ("0.0.0.0:15006", "127.0.0.1:8080")
    assert (inbound.app_protocol, inbound.app_idle_timeout) == ("http1", 4.0)
    assert (inbound.mode, inbound.allow) == ("strict", None)


def test_null_means_default(config_dir: ConfigDir) -> None:
    config_dir.write(
        "all.yaml",
        """
        kind: Sidecar
        service: a
        inbound:
        limits:
        TLS
        ---
        kind: Service
        name: b
        endpoints: [{address: "b:1"}]
        dns_refresh:
        hosts:
        """.replace("TLS", tls_section(config_dir.workload)),
    )
    snapshot = config_dir.load()
    assert snapshot.sidecar.inbound is None
    assert snapshot.sidecar.limits.max_request_headers == 65536
    assert (snapshot.services["b"].dns_refresh, snapshot.services["b"].hosts) == (5.0, ("b",))


def test_multi_document_files_and_empty_documents(config_dir: ConfigDir) -> None:
    config_dir.write(
        "mesh.yml",
        """
        # leading comment
        ---
        kind: Sidecar
        service: a
        TLS
        ---
        ---
        # only a comment
        ---
        kind: Service
        name: b
        endpoints: [{address: "10.0.0.1:80"}]
        ---
        kind: Service
        name: c
        endpoints: [{address: "10.0.0.2:80"}]
        ...
        """.replace("TLS", tls_section(config_dir.workload)),
    )
    config_dir.write("empty.yaml", "")
    snapshot = config_dir.load()
    assert list(snapshot.services) == ["b", "c"]
    assert [os.path.basename(f) for f in snapshot.files] == ["empty.yaml", "mesh.yml"]


def test_skips_dotfiles_subfolders_other_extensions(config_dir: ConfigDir) -> None:
    config_dir.with_sidecar()
    config_dir.write(".hidden.yaml", "this: is: not: yaml")
    config_dir.write("notes.txt", "kind: Nope")
    config_dir.write("README.md", "kind: Nope")
    (config_dir.path / "sub").mkdir()
    config_dir.write("sub/extra.yaml", "kind: Nope")
    (config_dir.path / "folder.yaml").mkdir()
    snapshot = config_dir.load()
    assert [os.path.basename(f) for f in snapshot.files] == ["sidecar.yaml"]


def test_kubernetes_configmap_layout(tmp_path: Path, workload: Path) -> None:
    """A mounted ConfigMap: files are symlinks into ..data, itself a symlink to a timestamped folder."""
    mount = tmp_path / "mount"
    payload = mount / "..2024_05_01_12_00_00.000000001"
    payload.mkdir(parents=True)
    (payload / "sidecar.yaml").write_text(f"kind: Sidecar\nservice: a\n{tls_section(workload)}\n")
    (payload / "services.yaml").write_text("kind: Service\nname: b\nendpoints: [{address: 'b:1'}]\n")
    (mount / "..data").symlink_to(payload.name)
    for name in ("sidecar.yaml", "services.yaml"):
        (mount / name).symlink_to(f"..data/{name}")
    snapshot = load_directory(mount)
    assert snapshot.files == (f"{mount}/services.yaml", f"{mount}/sidecar.yaml")
    assert list(snapshot.services) == ["b"]


def test_symlinked_file_and_directory_followed(tmp_path: Path, config_dir: ConfigDir) -> None:
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text("kind: Sidecar\nservice: linked\n")
    (config_dir.path / "sidecar.yaml").symlink_to(elsewhere)
    assert config_dir.load().sidecar.service == "linked"
    link = tmp_path / "link"
    link.symlink_to(config_dir.path)
    assert load_directory(link).files == (f"{link}/sidecar.yaml",)


def test_file_names_as_given(config_dir: ConfigDir, monkeypatch: pytest.MonkeyPatch) -> None:
    config_dir.write("sidecar.yaml", "kind: Sidecar\n")
    monkeypatch.chdir(config_dir.path.parent)
    spellings = [("mesh", "mesh/sidecar.yaml"), ("mesh/", "mesh/sidecar.yaml"), ("./mesh", "./mesh/sidecar.yaml")]
    for given, shown in spellings:
        with pytest.raises(ConfigError) as caught:
            load_directory(given)
        assert str(caught.value) == f"{shown}:1: service: field required"
    config_dir.with_sidecar()
    assert load_directory("mesh").directory == Path("mesh")
    assert load_directory("./mesh/").files == ("./mesh/sidecar.yaml",)


def test_yaml_merge_keys(config_dir: ConfigDir) -> None:
    config_dir.with_sidecar()
    config_dir.write(
        "services.yaml",
        """
        kind: Service
        name: a
        endpoints:
          - &first {address: "a:1", weight: 3}
          - <<: *first
            address: b:1
          - <<: [{weight: 5}, *first]
            address: c:1
        """,
    )
    endpoints = config_dir.load().services["a"].endpoints
    assert [(str(e.address), e.weight) for e in endpoints] == [("a:1", 3), ("b:1", 3), ("c:1", 5)]


# ------------------------------------------------------------------------------------------------
# One error of each kind, with its exact FILE:LINE: path: message
# ------------------------------------------------------------------------------------------------

SERVICE_ERRORS = [
    (  # unknown field at the top level
        """
        kind: Service
        name: orders
        endpoints: [{address: "10.0.0.1:80"}]
        mirror: {to: shadow}
        """,
        ["4: mirror: unknown field"],
    ),
    (  # retries: a condition that does not exist, and backoff bounds the wrong way round
        """
        kind: Service
        name: orders
        endpoints: [{address: "10.0.0.1:80"}]
        retries:
          on: [connect-failure, timeout]
          backoff: {base: 1s, max: 10ms}
          budget: {percent: 150}
        """,
        [
            "5: retries.on[1]: invalid value 'timeout' (expected 'connect-failure', 'refused-stream', 'reset',"
            " 'gateway-error', '5xx' or 'retriable-status')",
            "6: retries.backoff.max: must be at least base",
            "7: retries.budget.percent: must be at most 100, got 150",
        ],
    ),
    (  # unknown fields one and two levels down
        """
        kind: Service
        name: orders
        endpoints:
          - address: 10.0.0.1:80
            zone: a
        timeouts:
          connect: 1s
          per_retry: 5s
        """,
        ["5: endpoints[0].zone: unknown field", "8: timeouts.per_retry: unknown field (did you mean 'per_try'?)"],
    ),
    (  # a missing key: the line where its parent mapping starts
        """
        kind: Service
        name: orders
        endpoints:
          - address: 10.0.0.1:80
          -
            weight: 2
        """,
        ["6: endpoints[1].address: field required"],
    ),
    (
        """
        kind: Service

        endpoints: [{address: "10.0.0.1:80"}]
        """,
        ["1: name: field required"],
    ),
    (
        """
        kind: Service
        name: orders
        """,
        ["1: endpoints: field required"],
    ),
    (
        """
        kind: Service
        name: orders
        endpoints: []
        """,
        ["3: endpoints: must not be empty"],
    ),
    (
        """
        kind: Service
        name: orders
        endpoints:
          - address: orders
          - address: "::1:80"
          - address: 10.0.0.1:0
        """,
        [
            "4: endpoints[0].address: invalid address 'orders' (expected host:port, e.g. 127.0.0.1:8080)",
            "5: endpoints[1].address: invalid address '::1:80' (put IPv6 addresses in brackets: [::1]:8080)",
            "6: endpoints[2].address: invalid address '10.0.0.1:0' (port must be 1..65535)",
        ],
    ),
    (
        """
        kind: Service
        name: orders
        endpoints:
          - address: 10.0.0.1:80
            weight: 0
          - address: 10.0.0.2:80
            weight: true
        """,
        ["5: endpoints[0].weight: must be at least 1, got 0", "7: endpoints[1].weight: expected an integer, got true"],
    ),
    (
        """
        kind: Service
        name: orders
        endpoints: [{address: "10.0.0.1:80"}]
        dns_refresh: 5 parsecs
        timeouts:
          connect: 1
          idle: 0s
        """,
        [
            "4: dns_refresh: invalid duration '5 parsecs' (use e.g. 250ms, 1s, 2m)",
            "6: timeouts.connect: invalid duration 1 (a duration needs a unit: use e.g. 250ms, 1s, 2m)",
        ],
    ),
    (
        """
        kind: Service
        name: orders
        endpoints: [{address: "10.0.0.1:80"}]
        load_balancer: weighted
        """,
        [
            "4: load_balancer: invalid value 'weighted' "
            "(expected 'round_robin', 'least_request', 'random' or 'ring_hash')"
        ],
    ),
    (  # ring_hash needs its key; a missing one is reported at the document's line
        """
        kind: Service
        name: orders
        endpoints: [{address: "10.0.0.1:80"}]
        load_balancer: ring_hash
        """,
        ["1: hash_on: ring_hash needs hash_on (header, cookie or source_ip)"],
    ),
    (  # a key for another balancer would be ignored: refused
        """
        kind: Service
        name: orders
        endpoints: [{address: "10.0.0.1:80"}]
        hash_on: {header: x-user}
        """,
        ["4: hash_on: hash_on applies to load_balancer ring_hash only"],
    ),
    (
        """
        kind: Service
        name: orders
        endpoints: [{address: "10.0.0.1:80"}]
        load_balancer: ring_hash
        hash_on: {header: x-user, source_ip: true}
        """,
        ["5: hash_on: set exactly one of header, cookie, source_ip: true"],
    ),
    (
        """
        kind: Service
        name: orders
        endpoints: [{address: "10.0.0.1:80"}]
        load_balancer: ring_hash
        hash_on:
          header: "x user"
          cookie: "a;b"
          source_ip: "yes"
          query: id
        """,
        [
            "6: hash_on.header: invalid header name 'x user'",
            "7: hash_on.cookie: invalid cookie name 'a;b'",
            "8: hash_on.source_ip: expected true or false, got 'yes'",
            "9: hash_on.query: unknown field",
        ],
    ),
    (
        """
        kind: Service
        name: orders
        endpoints: [{address: "10.0.0.1:80"}]
        outlier_detection:
          consecutive_5xx: 0
          consecutive_gateway_errors: 1.5
          interval: 0s
          base_ejection: 30
          max_ejection_percent: 101
          success_rate: 90
        """,
        [
            "5: outlier_detection.consecutive_5xx: must be at least 1, got 0",
            "6: outlier_detection.consecutive_gateway_errors: expected an integer, got 1.5",
            "7: outlier_detection.interval: must be greater than 0, got '0s'",
            "8: outlier_detection.base_ejection: invalid duration 30 (a duration needs a unit: use e.g. 250ms, 1s, 2m)",
            "9: outlier_detection.max_ejection_percent: must be at most 100, got 101",
            "10: outlier_detection.success_rate: unknown field",
        ],
    ),
    (
        """
        kind: Service
        name: orders
        endpoints: [{address: "10.0.0.1:80"}]
        health_check:
          path: healthz
          interval: 1s
          timeout: 0ms
          healthy_threshold: 0
          unhealthy_threshold: -1
          port: 8081
        """,
        [
            "5: health_check.path: invalid path 'healthz' (must start with '/')",
            "7: health_check.timeout: must be greater than 0, got '0ms'",
            "8: health_check.healthy_threshold: must be at least 1, got 0",
            "9: health_check.unhealthy_threshold: must be at least 1, got -1",
            "10: health_check.port: unknown field",
        ],
    ),
    (  # the path goes on a request line: no spaces or control characters
        """
        kind: Service
        name: orders
        endpoints: [{address: "10.0.0.1:80"}]
        health_check: {path: "/health z"}
        """,
        ["4: health_check.path: invalid path '/health z' (visible ASCII only, no spaces)"],
    ),
    (
        """
        kind: Service
        name: 123
        hosts: orders
        endpoints: {address: "10.0.0.1:80"}
        """,
        [
            "2: name: expected a string, got 123",
            "3: hosts: expected a list, got 'orders'",
            "4: endpoints: expected a list, got a mapping",
        ],
    ),
]


def test_unknown_fields_get_a_hint_at_every_depth(config_dir: ConfigDir) -> None:
    config_dir.write(
        "sidecar.yaml",
        """
        kind: Sidecar
        service: frontend
        Inbound: {listen: 0.0.0.0:15006}
        limits: {header_read_timout: 5s}
        """,
    )
    config_dir.write(
        "services.yaml",
        """
        kind: Service
        name: orders
        load_balancr: round_robin
        endpoints: [{address: "o:1", wieght: 2}]
        timeouts: {timeout: 1s}
        timeout: 2s
        retries: {backoff: {bse: 10ms}, attempts: 2, attempt: 3}
        mirror: {to: shadow}
        """,
    )
    config_dir.write(
        "routes.yaml",
        """
        kind: Route
        host: shop
        rules: [{match: {path_prefx: /a}, to: [{servce: orders}]}]
        """,
    )
    hints = [issue.split(": ", 1)[1] for issue in config_dir.issues() if "unknown field" in issue]
    assert hints == [
        "rules[0].match.path_prefx: unknown field (did you mean 'path_prefix'?)",
        "rules[0].to[0].servce: unknown field (did you mean 'service'?)",
        "load_balancr: unknown field (did you mean 'load_balancer'?)",
        "endpoints[0].wieght: unknown field (did you mean 'weight'?)",
        "timeouts.timeout: unknown field",  # nothing close: no hint
        "timeout: unknown field",  # 'timeouts' is written already: not offered
        "retries.backoff.bse: unknown field (did you mean 'base'?)",
        "retries.attempt: unknown field",  # 'attempts' is written already
        "mirror: unknown field",
        "Inbound: unknown field (did you mean 'inbound'?)",  # the case differs
        "limits.header_read_timout: unknown field (did you mean 'header_read_timeout'?)",
    ]


@pytest.mark.parametrize(("text", "expected"), SERVICE_ERRORS)
def test_service_errors(config_dir: ConfigDir, text: str, expected: list[str]) -> None:
    file = config_dir.with_sidecar().write("services.yaml", text)
    assert config_dir.issues() == [f"{file}:{line}" for line in expected]


SIDECAR_ERRORS = [
    (
        """
        kind: Sidecar
        service: frontend
        tls: {cert: cert.pem}
        tracing:
          exporter: jaeger
          sample_ratio: 1.5
        """,
        [
            "3: tls.key: field required",
            "3: tls.ca: field required",
            "5: tracing.exporter: invalid value 'jaeger' (expected 'otlp', 'console' or 'none')",
            "6: tracing.sample_ratio: expected a number from 0 to 1, got 1.5",
        ],
    ),
    (
        """
        kind: Sidecar
        service: frontend
        inbound:
          listen: 0.0.0.0:15006
          mode: mtls
          app_protocol: h3
          app_idle_timeout: soon
        limits:
          max_request_headers: 64KB
          max_request_body: -1
          header_read_timeout: 10
          max_connections: 5
        """,
        [
            "1: tls: field required (the inbound listener needs the workload certificate)",
            "5: inbound.mode: invalid value 'mtls' (expected 'strict' or 'permissive')",
            "6: inbound.app_protocol: invalid value 'h3' (expected 'http1' or 'h2c')",
            "7: inbound.app_idle_timeout: invalid duration 'soon' (use e.g. 250ms, 1s, 2m)",
            "9: limits.max_request_headers: invalid size '64KB' (use bytes, or e.g. 64KiB, 1MiB, 2GiB)",
            "10: limits.max_request_body: invalid size -1 (must not be negative)",
            "11: limits.header_read_timeout: invalid duration 10 (a duration needs a unit: use e.g. 250ms, 1s, 2m)",
            "12: limits.max_connections: unknown field",
        ],
    ),
    (
        """
        # the sidecar
        kind: Sidecar
        admin:
          listen: localhost
        outbound: 15001
        drain_timeout: -5s
        """,
        [
            "2: service: field required",
            "4: admin.listen: invalid address 'localhost' (expected host:port, e.g. 127.0.0.1:8080)",
            "5: outbound: expected a mapping, got 15001",
            "6: drain_timeout: invalid duration '-5s' (use e.g. 250ms, 1s, 2m)",
        ],
    ),
    (  # YAML 1.1 would read the key `on` as true: keys are always the text written
        """
        kind: Sidecar
        service: frontend
        on: true
        """,
        ["3: on: unknown field"],
    ),
]


@pytest.mark.parametrize(("text", "expected"), SIDECAR_ERRORS)
def test_sidecar_errors(config_dir: ConfigDir, text: str, expected: list[str]) -> None:
    file = config_dir.write("sidecar.yaml", text)
    assert config_dir.issues() == [f"{file}:{line}" for line in expected]


ROUTE_ERRORS = [
    (
        """
        kind: Route
        host: shop
        rules:
          - match: {path_prefix: /, method: GET}
            to: [{service: orders, weight: 100, mirror: true}]
            retries: {attempts: 1}
        """,
        [
            "4: rules[0].match.method: unknown field",
            "5: rules[0].to[0].mirror: unknown field",
            "6: rules[0].retries: unknown field",
        ],
    ),
    (
        """
        kind: Route
        host: shop
        rules:
          - to:
              - service: orders
                weight: 90
              - service: orders
                weight: 0
        """,
        ["4: rules[0].to: weights add up to 90, must be 100"],
    ),
    (
        """
        kind: Route
        host: shop
        rules:
          - to:
              - {service: orders, weight: 100}
              - {service: orders}
        """,
        ["6: rules[0].to[1].weight: field required (to has several entries)"],
    ),
    (
        """
        kind: Route
        host: shop
        rules:
          - to: [{service: orders, weight: 101}]
          - to: []
          - match: {path: api}
            to: [{service: orders}]
            timeout: 3
          - match:
              path: /a
              path_prefix: /a
            to: [{service: orders}]
          - match:
              headers: {X-Canary: 1}
            to: [{service: orders}]
        """,
        [
            "4: rules[0].to[0].weight: must be at most 100, got 101",
            "5: rules[1].to: must not be empty",
            "6: rules[2].match.path: invalid path 'api' (must start with '/')",
            "8: rules[2].timeout: invalid duration 3 (a duration needs a unit: use e.g. 250ms, 1s, 2m)",
            "9: rules[3].match: set either path or path_prefix, not both",
            '14: rules[4].match.headers.X-Canary: expected a string, got 1 (quote it: "1")',
        ],
    ),
    (
        """
        kind: Route
        rules: []
        """,
        ["1: host: field required", "2: rules: must not be empty"],
    ),
    (
        """
        kind: Route
        host: shop
        rules:
          - to: [{service: orders}]
          - to:
              - {service: nope, weight: 50}
              - {service: orders, weight: 50}
        """,
        ["6: rules[1].to[0].service: route to unknown service 'nope'"],
    ),
]


@pytest.mark.parametrize(("text", "expected"), ROUTE_ERRORS)
def test_route_errors(config_dir: ConfigDir, text: str, expected: list[str]) -> None:
    config_dir.with_sidecar().write("services.yaml", "kind: Service\nname: orders\nendpoints: [{address: 'o:1'}]\n")
    file = config_dir.write("routes.yaml", text)
    assert config_dir.issues() == [f"{file}:{line}" for line in expected]


def test_document_errors(config_dir: ConfigDir) -> None:
    config_dir.with_sidecar()
    file = config_dir.write(
        "odd.yaml",
        """
        kind: Widget
        name: a
        ---
        name: no kind here
        ---
        - a list
        ---
        kind: [Service]
        ---
        just text
        """,
    )
    assert config_dir.issues() == [
        f"{file}:1: kind: unknown kind 'Widget' (expected Sidecar, Service or Route)",
        f"{file}:4: kind: field required",
        f"{file}:6: kind: a document must be a mapping with a kind, not a list",
        f"{file}:8: kind: unknown kind a list (expected Sidecar, Service or Route)",
        f"{file}:10: kind: a document must be a mapping with a kind, not 'just text'",
    ]


def test_duplicate_keys_and_bad_yaml_values(config_dir: ConfigDir) -> None:
    file = config_dir.write(
        "sidecar.yaml",
        """
        kind: Sidecar
        service: a
        service: b
        drain_timeout: !seconds 5
        ? [complex, key]
        : 1
        """,
    )
    issues = config_dir.issues()
    assert issues[0] == f"{file}:3: service: duplicate key (first at line 2)"
    assert issues[1].startswith(f"{file}:4: drain_timeout: unsupported YAML value:")
    assert issues[2] == f"{file}:5: (document): mapping keys must be plain strings"
    assert len(issues) == 3


def test_recursive_alias_reported(config_dir: ConfigDir) -> None:
    file = config_dir.write("sidecar.yaml", "kind: Sidecar\nservice: a\nlimits: &l\n  x: *l\n")
    assert config_dir.issues() == [
        f"{file}:4: limits.x: recursive YAML alias",
        f"{file}:4: limits.x: unknown field",
    ]


def test_alias_bomb_is_an_issue_not_a_hang(config_dir: ConfigDir) -> None:
    lines = ["kind: Sidecar", "service: a", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    file = config_dir.write("sidecar.yaml", "\n".join(lines) + "\n")
    assert config_dir.issues() == [f"{file}:1: yaml: document too large (check aliases)"]  # no echo


# ------------------------------------------------------------------------------------------------
# Problems across documents and files
# ------------------------------------------------------------------------------------------------


def test_duplicate_service_names_and_hosts(config_dir: ConfigDir) -> None:
    config_dir.with_sidecar()
    first = config_dir.write(
        "a.yaml",
        """
        kind: Service
        name: orders
        endpoints: [{address: "o:1"}]
        """,
    )
    second = config_dir.write(
        "b.yaml",
        """
        kind: Service
        name: payments
        hosts: [payments, Orders:80]
        endpoints: [{address: "p:1"}]
        ---
        kind: Service
        name: orders
        endpoints: [{address: "o:2"}]
        ---
        kind: Service
        name: Payments
        endpoints: [{address: "p:2"}]
        """,
    )
    assert config_dir.issues() == [
        f"{second}:3: hosts[1]: host 'orders' already used by service 'orders'",
        f"{second}:7: name: duplicate service name 'orders' (first defined at {first}:2)",
        f"{second}:11: name: host 'payments' already used by service 'payments'",
    ]


def test_route_may_share_a_host_with_a_service(config_dir: ConfigDir) -> None:
    config_dir.with_sidecar()
    config_dir.write("services.yaml", "kind: Service\nname: orders\nendpoints: [{address: 'o:1'}]\n")
    config_dir.write("routes.yaml", "kind: Route\nhost: orders\nrules: [{to: [{service: orders}]}]\n")
    assert list(config_dir.load().routes) == ["orders"]


def test_duplicate_route_hosts(config_dir: ConfigDir) -> None:
    config_dir.with_sidecar()
    config_dir.write("services.yaml", "kind: Service\nname: orders\nendpoints: [{address: 'o:1'}]\n")
    first = config_dir.write("a.yaml", "kind: Route\nhost: shop\nrules: [{to: [{service: orders}]}]\n")
    second = config_dir.write(
        "b.yaml",
        """
        kind: Route
        host: SHOP:8080
        rules: [{to: [{service: orders}]}]
        """,
    )
    assert config_dir.issues() == [f"{second}:2: host: duplicate route for host 'shop' (first defined at {first}:2)"]


def test_more_than_one_sidecar(config_dir: ConfigDir) -> None:
    first = config_dir.write("a.yaml", "kind: Sidecar\nservice: a\n")
    second = config_dir.write("b.yaml", "# another\nkind: Sidecar\nservice: b\n")
    assert config_dir.issues() == [f"{second}:2: kind: more than one Sidecar (first at {first}:1)"]


def test_no_sidecar(config_dir: ConfigDir) -> None:
    config_dir.write("services.yaml", "kind: Service\nname: orders\nendpoints: [{address: 'o:1'}]\n")
    assert config_dir.issues() == [f"{config_dir.path}: no Sidecar found (exactly one is required)"]


def test_empty_directory(config_dir: ConfigDir) -> None:
    assert config_dir.issues() == [f"{config_dir.path}: no Sidecar found (exactly one is required)"]


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as caught:
        load_directory(missing)
    assert caught.value.issues == (ConfigIssue(str(missing), None, "", "config directory not found"),)
    assert str(caught.value) == f"{missing}: config directory not found"


def test_config_path_that_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "mesh.yaml"
    file.write_text("kind: Sidecar\nservice: a\n")
    with pytest.raises(ConfigError) as caught:
        load_directory(file)
    assert str(caught.value) == f"{file}: not a directory (expected the config directory)"


def test_unreadable_file(config_dir: ConfigDir) -> None:
    config_dir.with_sidecar()
    (config_dir.path / "broken.yaml").symlink_to(config_dir.path / "gone.yaml")
    assert config_dir.issues() == [f"{config_dir.path}/broken.yaml: cannot read: No such file or directory"]


def test_yaml_syntax_error_and_other_files_still_checked(config_dir: ConfigDir) -> None:
    config_dir.with_sidecar()
    bad = config_dir.write(
        "a.yaml",
        """
        kind: Service
        name: early
        endpoints: [{address: nowhere}]
        ---
        kind: Service
        name: orders
          endpoints: []
        """,
    )
    other = config_dir.write("b.yaml", "kind: Service\nname: x\nendpoints: [{address: 'x:1'}]\nmirror: 3\n")
    assert config_dir.issues() == [
        f"{bad}:3: endpoints[0].address: invalid address 'nowhere' (expected host:port, e.g. 127.0.0.1:8080)",
        f"{bad}:7: yaml: invalid YAML: mapping values are not allowed here",
        f"{other}:4: mirror: unknown field",
    ]


def test_unclosed_flow_mapping(config_dir: ConfigDir) -> None:
    config_dir.with_sidecar()
    bad = config_dir.write("a.yaml", "kind: Service\nname: a\nendpoints: [{address: a:1\n\n")
    [issue] = config_dir.issues()
    assert issue.startswith(f"{bad}:5: yaml: invalid YAML: ")
    assert "(while parsing a flow mapping at line 3)" in issue


def test_control_characters_and_tabs(config_dir: ConfigDir) -> None:
    config_dir.with_sidecar()
    (config_dir.path / "bell.yaml").write_bytes(b"kind: Service\nname: a\x07\n")
    (config_dir.path / "tab.yaml").write_bytes(b"kind: Service\n\tname: a\n")
    assert config_dir.issues() == [
        f"{config_dir.path}/bell.yaml:2: yaml: invalid YAML: special characters are not allowed (#x0007)",
        f"{config_dir.path}/tab.yaml:2: yaml: invalid YAML: found character '\\t' that cannot start any token",
    ]


def test_not_utf8(config_dir: ConfigDir) -> None:
    config_dir.with_sidecar()
    (config_dir.path / "bad.yaml").write_bytes(b"kind: Service\nname: \xff\n")
    assert config_dir.issues() == [f"{config_dir.path}/bad.yaml:2: yaml: file is not valid UTF-8"]


def test_many_errors_in_many_files_all_reported(config_dir: ConfigDir) -> None:
    sidecar = config_dir.write("sidecar.yaml", "kind: Sidecar\nservice: a\ndrain_timeout: 20\n")
    services = config_dir.write(
        "services.yaml",
        """
        kind: Service
        name: orders
        endpoints: [{address: "o:1"}]
        hosts: [shop]
        ---
        kind: Service
        name: orders
        endpoints: [{address: "o:99999"}]
        """,
    )
    routes = config_dir.write(
        "routes.yaml",
        """
        kind: Route
        host: shop
        rules:
          - to: [{service: orders, weight: 60}, {service: payments, weight: 30}]
          - to: [{service: nope}]
        """,
    )
    with pytest.raises(ConfigError) as caught:
        config_dir.load()
    expected = [
        f"{routes}:4: rules[0].to: weights add up to 90, must be 100",
        f"{routes}:4: rules[0].to[1].service: route to unknown service 'payments'",  # in the same run
        f"{routes}:5: rules[1].to[0].service: route to unknown service 'nope'",
        f"{services}:7: name: duplicate service name 'orders' (first defined at {services}:2)",
        f"{services}:8: endpoints[0].address: invalid address 'o:99999' (port must be 1..65535)",
        f"{sidecar}:1: tls: field required (mutual-TLS service 'orders' needs the workload certificate)",
        f"{sidecar}:3: drain_timeout: invalid duration 20 (a duration needs a unit: use e.g. 250ms, 1s, 2m)",
    ]
    assert str(caught.value) == "\n".join(expected)
    assert [(i.file, i.line, i.path) for i in caught.value.issues] == [
        (routes, 4, "rules[0].to"),
        (routes, 4, "rules[0].to[1].service"),
        (routes, 5, "rules[1].to[0].service"),
        (services, 7, "name"),
        (services, 8, "endpoints[0].address"),
        (sidecar, 1, "tls"),
        (sidecar, 3, "drain_timeout"),
    ]


def test_format_path() -> None:
    assert format_path(("rules", 0, "to", 1, "weight")) == "rules[0].to[1].weight"
    assert format_path(("rules", 0, "match", "headers", "x-canary")) == "rules[0].match.headers.x-canary"
    assert format_path(("limits", "a b", "\n", "x.y")) == 'limits["a b"]["\\n"]["x.y"]'
    assert format_path(()) == "(document)"


def test_no_echo_errors_after_a_yaml_error(config_dir: ConfigDir) -> None:
    bad = config_dir.write("sidecar.yaml", "kind: Sidecar\nservice: [a\n")
    routes = config_dir.write("routes.yaml", "kind: Route\nhost: shop\nrules: [{to: [{service: orders}]}]\n")
    unknown, issue = config_dir.issues()  # not "no Sidecar found": the lost document is one
    assert issue.startswith(f"{bad}:3: yaml: invalid YAML: ")
    assert unknown == f"{routes}:3: rules[0].to[0].service: route to unknown service 'orders'"  # no Service at all


SERVICE = "kind: Service\nname: {name}\nendpoints: [{{address: 'o:1'}}]\n"


def test_a_yaml_error_costs_only_its_own_document(config_dir: ConfigDir) -> None:
    config_dir.with_sidecar()
    file = config_dir.write(
        "services.yaml",
        """
        kind: Service
        name: orders
          endpoints: []
        ---
        kind: Service
        name: payments
        endpoints: [{address: "p:1"}]
        retries: {attempts: 99}
        ---
        kind: Service
        name: stock
        endpoints: [{address: [s:1}]
        ---
        kind: Service
        name: users
        endpoints: [{address: "u:1"}]
        mirror: true
        """,
    )
    issues = config_dir.issues()
    assert issues[0].startswith(f"{file}:3: yaml: invalid YAML: mapping values are not allowed here")
    assert issues[1] == f"{file}:8: retries.attempts: must be at most 10, got 99"
    assert issues[2].startswith(f"{file}:12: yaml: invalid YAML: ")
    assert issues[3] == f"{file}:17: mirror: unknown field"
    assert len(issues) == 4


def test_a_flow_collection_left_open_ends_at_the_next_document(config_dir: ConfigDir) -> None:
    config_dir.with_sidecar()
    file = config_dir.write(
        "services.yaml",
        """
        kind: Service
        name: orders
        endpoints: [{address: "o:1"}
        ---
        kind: Service
        name: payments
        endpoints: [{address: "p:1"}]
        mirror: true
        """,
    )
    issues = config_dir.issues()
    assert issues[0].startswith(f"{file}:4: yaml: invalid YAML: expected ',' or ']', but got '<document start>'")
    assert issues[1:] == [f"{file}:8: mirror: unknown field"]


def test_control_character_in_one_document_of_several(config_dir: ConfigDir) -> None:
    config_dir.with_sidecar()
    text = SERVICE.format(name="a") + "mirror: 1\n---\n" + SERVICE.format(name="b\x07") + "---\n"
    text += SERVICE.format(name="c") + "mirror: 2\n"
    (config_dir.path / "services.yaml").write_text(text)
    file = f"{config_dir.path}/services.yaml"
    assert config_dir.issues() == [
        f"{file}:4: mirror: unknown field",
        f"{file}:7: yaml: invalid YAML: special characters are not allowed (#x0007)",
        f"{file}:13: mirror: unknown field",
    ]


def test_document_nested_too_deeply_for_the_yaml_composer(config_dir: ConfigDir) -> None:
    config_dir.with_sidecar()
    deep = "[" * 5000 + "]" * 5000
    text = (
        SERVICE.format(name="a") + "---\n" + SERVICE.format(name="b") + f"x: {deep}\n---\n" + SERVICE.format(name="c")
    )
    (config_dir.path / "services.yaml").write_text(text + "mirror: 1\n")
    route = "kind: Route\nhost: shop\nrules: [{to: [{service: b, weight: 50}, {service: d, weight: 50}]}]\n"
    config_dir.write("routes.yaml", route)
    file = f"{config_dir.path}/services.yaml"
    assert config_dir.issues() == [
        f"{config_dir.path}/routes.yaml:3: rules[0].to[1].service: route to unknown service 'd'",  # 'b' is read
        f"{file}:4: yaml: document nested too deeply",
        f"{file}:13: mirror: unknown field",
    ]


def test_cross_references_are_checked_over_the_documents_that_loaded(config_dir: ConfigDir) -> None:
    config_dir.write("sidecar.yaml", f"kind: Sidecar\nservice: web\n{tls_section(config_dir.workload)}\nmirror: 1\n")
    services = config_dir.write(
        "services.yaml",
        """
        kind: Service
        name: orders
        endpoints: [{address: "o:1"}]
        timeouts: {request: 5}
        ---
        kind: Service
        name: "payments"  # its document is lost, its name is still read
        endpoints: [{address: [p:1}]
        ---
        kind: Servce
        name: stock
        endpoints: [{address: "s:1"}]
        """,
    )
    routes = config_dir.write(
        "routes.yaml",
        """
        kind: Route
        host: shop
        rules:
          - match: {path_prefx: /}
            to: [{service: orders, weight: 25}, {service: payments, weight: 25}, {service: stock, weight: 25},
                 {service: ordres, weight: 25}, {service: "no such", weight: 0}]
            timeout: 5
        """,
    )
    sidecar = f"{config_dir.path}/sidecar.yaml"
    issues = config_dir.issues()
    assert issues == [
        f"{routes}:4: rules[0].match.path_prefx: unknown field (did you mean 'path_prefix'?)",
        f"{routes}:6: rules[0].to[4].service: invalid name 'no such' (must be non-empty, without spaces)",
        f"{routes}:6: rules[0].to[3].service: route to unknown service 'ordres' (did you mean 'orders'?)",
        f"{routes}:7: rules[0].timeout: invalid duration 5 (a duration needs a unit: use e.g. 250ms, 1s, 2m)",
        f"{services}:4: timeouts.request: invalid duration 5 (a duration needs a unit: use e.g. 250ms, 1s, 2m)",
        issues[5],
        f"{services}:10: kind: unknown kind 'Servce' (expected Sidecar, Service or Route)",
        f"{sidecar}:4: mirror: unknown field",
    ]
    assert issues[5].startswith(f"{services}:8: yaml: invalid YAML: ")


def test_no_sidecar_is_not_reported_while_a_document_may_be_it(config_dir: ConfigDir) -> None:
    config_dir.write("services.yaml", SERVICE.format(name="orders"))
    config_dir.write("sidecar.yaml", "kind: Sidecr\nservice: web\n")
    assert config_dir.issues() == [
        f"{config_dir.path}/sidecar.yaml:1: kind: unknown kind 'Sidecr' (expected Sidecar, Service or Route)"
    ]
    config_dir.write("sidecar.yaml", "service: web\n")
    assert config_dir.issues() == [f"{config_dir.path}/sidecar.yaml:1: kind: field required"]
    config_dir.write("sidecar.yaml", "kind: Sidecar\nservice: [web\n")
    assert len(config_dir.issues()) == 1
    config_dir.write("sidecar.yaml", "kind: Route\nhost: [shop\n")  # a lost Route: the Sidecar is missing
    assert config_dir.issues()[0] == f"{config_dir.path}: no Sidecar found (exactly one is required)"


def test_unknown_service_is_left_out_while_a_service_has_no_readable_name(config_dir: ConfigDir) -> None:
    config_dir.with_sidecar()
    config_dir.write("routes.yaml", "kind: Route\nhost: shop\nrules: [{to: [{service: orders}]}]\n")
    for services in (
        "kind: Service\nendpoints: [{address: 'o:1'}]\n",  # name left out
        "kind: Service\nname: 5\nendpoints: [{address: 'o:1'}]\n",
        "{kind: Service, name: orders, endpoints: [{address: o:1}\n",  # lost, flow style: nothing read
    ):
        config_dir.write("services.yaml", services)
        assert not any("unknown service" in issue for issue in config_dir.issues()), services
    config_dir.write("services.yaml", SERVICE.format(name="payments"))
    assert any("unknown service 'orders'" in issue for issue in config_dir.issues())


def test_a_file_that_is_not_utf8_still_names_its_kinds_and_services(config_dir: ConfigDir) -> None:
    config_dir.with_sidecar()
    (config_dir.path / "services.yaml").write_bytes(
        b"# caf\xe9\nkind: Service\nname: orders\nendpoints: [{address: 'o:1'}]\n---\n" + b"kind: Sidecar\n"
    )
    routes = config_dir.write(
        "routes.yaml", "kind: Route\nhost: shop\nrules: [{to: [{service: orders}]}, {to: [{service: x}]}]"
    )
    assert config_dir.issues() == [
        f"{routes}:3: rules[1].to[0].service: route to unknown service 'x'",
        f"{config_dir.path}/services.yaml:1: yaml: file is not valid UTF-8",
    ]


def test_field_named_file_is_not_mistaken_for_a_lost_file(config_dir: ConfigDir) -> None:
    routes = config_dir.write("routes.yaml", "kind: Route\nhost: shop\nfile: x\nrules: [{to: [{service: nope}]}]\n")
    assert config_dir.issues() == [
        f"{config_dir.path}: no Sidecar found (exactly one is required)",
        f"{routes}:3: file: unknown field",
        f"{routes}:4: rules[0].to[0].service: route to unknown service 'nope'",
    ]


# ------------------------------------------------------------------------------------------------
# Mutual TLS and workload identity
# ------------------------------------------------------------------------------------------------


def test_tls_fields(config_dir: ConfigDir) -> None:
    config_dir.write(
        "sidecar.yaml",
        """
        kind: Sidecar
        service: frontend
        TLS
        inbound:
          mode: permissive
          allow:
            - spiffe://mesh.local/ns/default/sa/*
            - spiffe://mesh.local/ns/*/sa/front*
            - spiffe://mesh.local/ns/default/sa/*
        """.replace("TLS", tls_section(config_dir.workload)),
    )
    config_dir.write(
        "services.yaml",
        """
        kind: Service
        name: orders
        endpoints: [{address: "10.0.0.1:15006"}]
        tls: {identity: spiffe://mesh.local/ns/default/sa/orders}
        ---
        kind: Service
        name: api
        endpoints: [{address: "api.example.com:443"}]
        tls: {mode: simple, server_name: API.Example.com., ca: CA}
        ---
        kind: Service
        name: legacy
        endpoints: [{address: "10.0.0.2:80"}]
        tls: {mode: disabled}
        """.replace("CA", f"{config_dir.workload}/ca.pem"),  # absolute
    )
    snapshot = config_dir.load()
    workload = config_dir.workload
    assert snapshot.sidecar.tls == SidecarTls(
        cert=f"{workload}/cert.pem", key=f"{workload}/key.pem", ca=f"{workload}/ca.pem"
    )
    assert snapshot.identity == FRONTEND_ID
    inbound = snapshot.sidecar.inbound
    assert inbound is not None
    assert inbound.mode == "permissive"
    assert inbound.allow == ("spiffe://mesh.local/ns/default/sa/*", "spiffe://mesh.local/ns/*/sa/front*")
    services = snapshot.services
    assert services["orders"].tls == ServiceTls(mode="mutual", identity="spiffe://mesh.local/ns/default/sa/orders")
    assert services["api"].tls == ServiceTls(mode="simple", server_name="api.example.com", ca=f"{workload}/ca.pem")
    assert snapshot.resolve(f"{workload}/ca.pem") == workload / "ca.pem"
    assert services["legacy"].tls == ServiceTls(mode="disabled")


@pytest.mark.parametrize(("written", "allow"), [("listen: 0.0.0.0:15006", None), ("allow:", None), ("allow: []", ())])
def test_allow_absent_null_or_empty(config_dir: ConfigDir, written: str, allow: tuple[str, ...] | None) -> None:
    config_dir.with_sidecar()
    config_dir.write("sidecar.yaml", (config_dir.path / "sidecar.yaml").read_text() + f"inbound:\n  {written}\n")
    inbound = config_dir.load().sidecar.inbound
    assert inbound is not None and inbound.allow == allow


def test_inbound_mode_and_allow_errors(config_dir: ConfigDir) -> None:
    file = config_dir.write(
        "sidecar.yaml",
        """
        kind: Sidecar
        service: frontend
        TLS
        inbound:
          mode: mtls
          allow:
            - spiffe://mesh.local/ns/default/sa/*
            - spiffe://mesh.local
            - https://mesh.local/ns/a
            - spiffe://*/ns/a
            - spiffe://mesh.local/ns//sa
            - spiffe://mesh.local/ns/a/
            - spiffe://Mesh.Local/ns/a
            - spiffe://mesh.local/ns/../a
            - 5
        """.replace("TLS", tls_section(config_dir.workload)),
    )
    hint = "(expected spiffe://TRUST-DOMAIN/PATH; '*' globs a path segment)"
    assert config_dir.issues() == [
        f"{file}:5: inbound.mode: invalid value 'mtls' (expected 'strict' or 'permissive')",
        f"{file}:8: inbound.allow[1]: invalid SPIFFE ID 'spiffe://mesh.local' {hint}",
        f"{file}:9: inbound.allow[2]: invalid SPIFFE ID 'https://mesh.local/ns/a' {hint}",
        f"{file}:10: inbound.allow[3]: invalid SPIFFE ID 'spiffe://*/ns/a' {hint}",
        f"{file}:11: inbound.allow[4]: invalid SPIFFE ID 'spiffe://mesh.local/ns//sa' {hint}",
        f"{file}:12: inbound.allow[5]: invalid SPIFFE ID 'spiffe://mesh.local/ns/a/' {hint}",
        f"{file}:13: inbound.allow[6]: invalid SPIFFE ID 'spiffe://Mesh.Local/ns/a' {hint}",
        f"{file}:14: inbound.allow[7]: invalid SPIFFE ID 'spiffe://mesh.local/ns/../a' {hint}",
        f"{file}:15: inbound.allow[8]: expected a SPIFFE ID, got 5",
    ]


TLS_SERVICE_ERRORS = [
    (
        """
        kind: Service
        name: orders
        endpoints: [{address: "10.0.0.1:80"}]
        tls:
          mode: simple
          identity: spiffe://mesh.local/ns/default/sa/orders
          server_name: api.example.com
        """,
        ["6: tls.identity: identity applies to mode mutual only"],
    ),
    (  # mutual is the default mode
        """
        kind: Service
        name: orders
        endpoints: [{address: "10.0.0.1:80"}]
        tls:
          ca: ca.pem
          server_name: api.example.com
        """,
        ["5: tls.ca: ca applies to mode simple only", "6: tls.server_name: server_name applies to mode simple only"],
    ),
    (
        """
        kind: Service
        name: orders
        endpoints: [{address: "10.0.0.1:80"}]
        tls: {mode: disabled, identity: "spiffe://mesh.local/ns/a", ca: ca.pem}
        """,
        ["4: tls.identity: identity applies to mode mutual only", "4: tls.ca: ca applies to mode simple only"],
    ),
    (
        """
        kind: Service
        name: orders
        endpoints: [{address: "10.0.0.1:80"}]
        tls:
          identity: spiffe://mesh.local/ns/*
        ---
        kind: Service
        name: payments
        endpoints: [{address: "10.0.0.2:80"}]
        tls:
          identity: payments
        """,
        [
            "5: tls.identity: invalid SPIFFE ID 'spiffe://mesh.local/ns/*' "
            "(one exact ID: '*' patterns belong in inbound.allow)",
            "11: tls.identity: invalid SPIFFE ID 'payments' (expected spiffe://TRUST-DOMAIN/PATH)",
        ],
    ),
    (
        """
        kind: Service
        name: orders
        endpoints: [{address: "10.0.0.1:80"}]
        tls:
          mode: tls
          verify: false
        ---
        kind: Service
        name: api
        endpoints: [{address: "api.example.com:443"}]
        tls:
          mode: simple
          server_name: api.example.com:443
          ca: ""
        ---
        kind: Service
        name: legacy
        endpoints: [{address: "10.0.0.2:80"}]
        tls: disabled
        """,
        [
            "5: tls.mode: invalid value 'tls' (expected 'mutual', 'simple' or 'disabled')",
            "6: tls.verify: unknown field",
            "13: tls.server_name: invalid server name 'api.example.com:443' (expected a host name such as "
            "api.example.com)",
            "14: tls.ca: expected a file path, got ''",
            "19: tls: expected a mapping, got 'disabled'",
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), TLS_SERVICE_ERRORS)
def test_service_tls_errors(config_dir: ConfigDir, text: str, expected: list[str]) -> None:
    file = config_dir.with_sidecar().write("services.yaml", text)
    assert config_dir.issues() == [f"{file}:{line}" for line in expected]


def test_sidecar_tls_section_errors(config_dir: ConfigDir) -> None:
    file = config_dir.write(
        "sidecar.yaml",
        """
        kind: Sidecar
        service: frontend
        tls:
          cert: 5
          key: ""
          ca:
          chain: x.pem
        """,
    )
    assert config_dir.issues() == [
        f"{file}:4: tls.cert: expected a file path, got 5",
        f"{file}:5: tls.key: expected a file path, got ''",
        f"{file}:6: tls.ca: field required",  # null: not set
        f"{file}:7: tls.chain: unknown field",
    ]


# Which Sidecars need tls: the inbound listener, and any Service in mode mutual (the default).

PURE_CLIENT = """
kind: Sidecar
service: client
---
kind: Service
name: legacy
endpoints: [{address: "10.0.0.1:80"}]
tls: {mode: disabled}
---
kind: Service
name: api
endpoints: [{address: "api.example.com:443"}]
tls: {mode: simple}
"""


def test_plaintext_pure_client_needs_no_tls(config_dir: ConfigDir) -> None:
    config_dir.write("all.yaml", PURE_CLIENT)
    snapshot = config_dir.load()
    assert snapshot.sidecar.tls is None and snapshot.sidecar.inbound is None
    assert snapshot.identity is None


@pytest.mark.parametrize(
    ("sidecar", "services", "reason"),
    [
        ("inbound: {}", "tls: {mode: disabled}", "the inbound listener needs"),
        ("inbound:\n  mode: permissive", "tls: {mode: simple}", "the inbound listener needs"),
        ("tls:", "tls: {mode: disabled}", None),
        ("tls:\ninbound:", "tls: {mode: simple}", None),
        ("", "", "mutual-TLS service 'orders' needs"),
        ("", "tls: {mode: mutual}", "mutual-TLS service 'orders' needs"),
        ("", "tls: {identity: 'spiffe://mesh.local/ns/a/sa/orders'}", "mutual-TLS service 'orders' needs"),
        ("", "tls:", "mutual-TLS service 'orders' needs"),
        ("inbound: {}", "", "the inbound listener and mutual-TLS service 'orders' need"),
    ],
)
def test_tls_required(config_dir: ConfigDir, sidecar: str, services: str, reason: str | None) -> None:
    file = config_dir.write("sidecar.yaml", f"# this workload\nkind: Sidecar\nservice: frontend\n{sidecar}\n")
    config_dir.write("services.yaml", f"kind: Service\nname: orders\nendpoints: [{{address: 'o:1'}}]\n{services}\n")
    if reason is None:
        assert config_dir.load().sidecar.tls is None
    else:  # reported where the Sidecar document starts
        assert config_dir.issues() == [f"{file}:2: tls: field required ({reason} the workload certificate)"]


def test_tls_not_required_by_a_service_tls_section_that_is_wrong(config_dir: ConfigDir) -> None:
    config_dir.write("sidecar.yaml", "kind: Sidecar\nservice: frontend\n")
    file = config_dir.write(
        "services.yaml",
        """
        kind: Service
        name: a
        endpoints: [{address: "a:1"}]
        tls: [mutual]
        ---
        kind: Service
        name: b
        endpoints: [{address: "b:1"}]
        tls: {mode: 5}
        """,
    )
    assert config_dir.issues() == [  # no echo: which mode was meant is unknown
        f"{file}:4: tls: expected a mapping, got a list",
        f"{file}:9: tls.mode: invalid value 5 (expected 'mutual', 'simple' or 'disabled')",
    ]


def test_tls_null_is_tls_absent(config_dir: ConfigDir) -> None:
    file = config_dir.write("sidecar.yaml", "kind: Sidecar\nservice: frontend\ninbound: {}\ntls:\n")
    # written as null: reported at its own line
    assert config_dir.issues() == [
        f"{file}:4: tls: field required (the inbound listener needs the workload certificate)"
    ]


def test_tls_required_names_the_mutual_services_and_sees_past_other_errors(config_dir: ConfigDir) -> None:
    sidecar = config_dir.write("sidecar.yaml", "kind: Sidecar\nservice: frontend\ninbound: {}\ndrain_timeout: 5\n")
    services = config_dir.write(
        "services.yaml",
        """
        kind: Service
        name: a
        endpoints: [{address: "a"}]
        ---
        kind: Service
        name: b
        endpoints: [{address: "b:1"}]
        tls: {mode: mutual, identity: nope}
        ---
        kind: Service
        name: c
        endpoints: [{address: "c:1"}]
        tls: {mode: disabled}
        ---
        kind: Service
        name: d
        endpoints: [{address: "d:1"}]
        ---
        kind: Service
        name: e
        endpoints: [{address: "e:1"}]
        """,
    )
    assert config_dir.issues() == [
        f"{services}:3: endpoints[0].address: invalid address 'a' (expected host:port, e.g. 127.0.0.1:8080)",
        f"{services}:8: tls.identity: invalid SPIFFE ID 'nope' (expected spiffe://TRUST-DOMAIN/PATH)",
        f"{sidecar}:1: tls: field required (the inbound listener and mutual-TLS services 'a', 'b', 'd' and 1 more "
        "need the workload certificate)",
        f"{sidecar}:4: drain_timeout: invalid duration 5 (a duration needs a unit: use e.g. 250ms, 1s, 2m)",
    ]


def test_tls_files_relative_to_the_config_directory(
    config_dir: ConfigDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    certs = config_dir.path / "certs"
    certs.mkdir()
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (certs / name).write_bytes((config_dir.workload / name).read_bytes())
    config_dir.write(
        "sidecar.yaml",
        "kind: Sidecar\nservice: frontend\ntls: {cert: certs/cert.pem, key: ./certs/key.pem, ca: certs/ca.pem}\n",
    )
    monkeypatch.chdir(tmp_path)  # not the config directory: paths are not relative to the working directory
    snapshot = load_directory("mesh")
    assert snapshot.sidecar.tls == SidecarTls(cert="certs/cert.pem", key="./certs/key.pem", ca="certs/ca.pem")
    assert snapshot.identity == FRONTEND_ID
    assert snapshot.resolve(snapshot.sidecar.tls.key) == Path("mesh/certs/key.pem")
    assert snapshot.resolve(snapshot.sidecar.tls.key).read_bytes() == (config_dir.workload / "key.pem").read_bytes()


def test_tls_file_problems(config_dir: ConfigDir, mesh_ca: Path, tmp_path: Path) -> None:
    (config_dir.path / "certs").mkdir()
    expired = tmp_path / "expired"
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    issue_workload(mesh_ca, FRONTEND_ID, expired, validity=datetime.timedelta(hours=1), not_before=start)
    file = config_dir.write(
        "sidecar.yaml",
        f"""
        kind: Sidecar
        service: frontend
        drain_timeout: soon
        tls:
          cert: {expired}/cert.pem
          key: certs/missing.pem
          ca: certs
        """,
    )
    assert config_dir.issues() == [
        f"{file}:3: drain_timeout: invalid duration 'soon' (use e.g. 250ms, 1s, 2m)",  # files checked all the same
        f"{file}:5: tls.cert: certificate expired on 2020-01-01T01:00:00Z",
        f"{file}:6: tls.key: cannot read {config_dir.path}/certs/missing.pem: No such file or directory",
        f"{file}:7: tls.ca: cannot read {config_dir.path}/certs: Is a directory",
    ]


def test_tls_key_of_another_workload(config_dir: ConfigDir, mesh_ca: Path, tmp_path: Path) -> None:
    issue_workload(mesh_ca, "spiffe://mesh.local/ns/default/sa/orders", tmp_path / "orders")
    workload = config_dir.workload
    file = config_dir.write(
        "sidecar.yaml",
        f"kind: Sidecar\nservice: frontend\ntls:\n  cert: {workload}/cert.pem\n"
        f"  key: {tmp_path}/orders/key.pem\n  ca: {workload}/ca.pem\n",
    )
    assert config_dir.issues() == [f"{file}:5: tls.key: key does not match tls.cert"]


def test_tls_certificate_without_spiffe_id(config_dir: ConfigDir, tmp_path: Path) -> None:
    ca = trustme.CA()
    issued = ca.issue_cert("example.com")
    issued.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    issued.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    file = config_dir.write(
        "sidecar.yaml",
        f"kind: Sidecar\nservice: frontend\ntls:\n  cert: {tmp_path}/cert.pem\n"
        f"  key: {tmp_path}/key.pem\n  ca: {tmp_path}/ca.pem\n",
    )
    assert config_dir.issues() == [f"{file}:4: tls.cert: certificate has no SPIFFE ID (URI SAN spiffe://...)"]


def test_service_tls_ca_file(config_dir: ConfigDir) -> None:
    config_dir.with_sidecar()
    (config_dir.path / "api-ca.pem").write_bytes((config_dir.workload / "ca.pem").read_bytes())
    (config_dir.path / "junk.pem").write_text("junk")
    file = config_dir.write(
        "services.yaml",
        """
        kind: Service
        name: api
        endpoints: [{address: "api.example.com:443"}]
        tls: {mode: simple, ca: api-ca.pem}
        ---
        kind: Service
        name: missing
        endpoints: [{address: "missing.example.com:443"}]
        tls: {mode: simple, ca: nope.pem}
        ---
        kind: Service
        name: junk
        endpoints: [{address: "junk.example.com:443"}]
        tls:
          mode: simple
          ca: junk.pem
        """,
    )
    assert config_dir.issues() == [
        f"{file}:9: tls.ca: cannot read {config_dir.path}/nope.pem: No such file or directory",
        f"{file}:16: tls.ca: not a PEM certificate bundle (no certificate found)",
    ]
    config_dir.write("services.yaml", (config_dir.path / "services.yaml").read_text().split("---")[0])
    snapshot = config_dir.load()
    tls = snapshot.services["api"].tls
    assert tls.ca == "api-ca.pem" and snapshot.resolve(tls.ca) == config_dir.path / "api-ca.pem"
