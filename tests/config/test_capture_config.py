"""The config of transparent capture and opaque TCP: the `capture` section, `inbound.tcp_ports`, and
Services with `protocol: tcp` (`addresses`, `ports`, `listen`), with the rules `sidecar check`
applies to them."""

from __future__ import annotations

from sidecar.config import Address

from .conftest import ConfigDir


def test_defaults_are_explicit_capture_and_no_tcp(config_dir: ConfigDir) -> None:
    snapshot = config_dir.with_sidecar().load()
    capture = snapshot.sidecar.capture
    assert (capture.mode, capture.proxy_uid, capture.outbound_policy, capture.detect_timeout) == (
        "explicit",
        1337,
        "allow_any",
        1.0,
    )
    assert capture.opaque_ports == (3306, 5432, 6379, 9092)
    assert capture.exclude_outbound_cidrs == ()


def test_a_transparent_sidecar_and_a_tcp_service_load(config_dir: ConfigDir) -> None:
    config_dir.with_sidecar()
    config_dir.write(
        "more.yaml",
        """
        kind: Service
        name: cache
        protocol: tcp
        addresses: [10.96.0.12, "fd00::12"]
        ports: [6379]
        listen: 127.0.0.1:16379
        endpoints: [{address: 10.1.0.7:6379}]
        """,
    )
    sidecar = (config_dir.path / "sidecar.yaml").read_text()
    sidecar += "capture: {mode: transparent, outbound_policy: registry_only,\n"
    sidecar += "          exclude_outbound_cidrs: [169.254.169.254/32, 'fd00::/8']}\n"
    (config_dir.path / "sidecar.yaml").write_text(sidecar)
    snapshot = config_dir.load()
    assert snapshot.sidecar.capture.exclude_outbound_cidrs == ("169.254.169.254/32", "fd00::/8")
    cache = snapshot.services["cache"]
    assert (cache.protocol, cache.addresses, cache.ports, cache.listen) == (
        "tcp",
        ("10.96.0.12", "fd00::12"),
        (6379,),
        Address("127.0.0.1", 16379),
    )
    assert cache.hosts == ()  # a tcp service is matched by address, never by Host


def test_bad_capture_values_are_reported_with_their_lines(config_dir: ConfigDir) -> None:
    path = config_dir.write(
        "sidecar.yaml",
        """
        kind: Sidecar
        service: frontend
        capture:
          mode: sideways
          exclude_outbound_cidrs: [10.0.0.1/8, nonsense]
          opaque_ports: [0, 70000]
          detect_timeout: 0s
          outbound_policy: deny
        inbound:
          tcp_ports: [eighty]
        """,
    )
    issues = config_dir.issues()
    expected = {
        f"{path}:4: capture.mode: invalid value 'sideways'",
        f"{path}:5: capture.exclude_outbound_cidrs[0]: invalid CIDR '10.0.0.1/8'",
        f"{path}:5: capture.exclude_outbound_cidrs[1]: invalid CIDR 'nonsense'",
        f"{path}:6: capture.opaque_ports[0]: expected a port number 1..65535, got 0",
        f"{path}:6: capture.opaque_ports[1]: expected a port number 1..65535, got 70000",
        f"{path}:7: capture.detect_timeout: must be greater than 0",
        f"{path}:8: capture.outbound_policy: invalid value 'deny'",
        f"{path}:10: inbound.tcp_ports[0]: expected a port number 1..65535, got 'eighty'",
    }
    for line in expected:
        assert any(issue.startswith(line) for issue in issues), (line, issues)


def test_tcp_only_fields_and_http_only_fields_are_refused_where_they_do_not_apply(config_dir: ConfigDir) -> None:
    config_dir.with_sidecar()
    path = config_dir.write(
        "services.yaml",
        """
        kind: Service
        name: web
        listen: 127.0.0.1:18080
        endpoints: [{address: 10.1.0.7:8080}]
        ---
        kind: Service
        name: db
        protocol: tcp
        hosts: [db]
        health_check: {path: /healthz}
        load_balancer: ring_hash
        hash_on: {header: x-user}
        endpoints: [{address: 10.1.0.8:5432}]
        """,
    )
    issues = config_dir.issues()
    assert f"{path}:3: listen: listen applies to protocol tcp only" in issues
    assert any(issue.startswith(f"{path}:9: hosts: a tcp service is matched by address") for issue in issues), issues
    assert any(issue.startswith(f"{path}:12: hash_on: a tcp service can hash on source_ip only") for issue in issues)


def test_routes_cannot_target_tcp_services_and_listen_ports_cannot_be_shared(config_dir: ConfigDir) -> None:
    config_dir.with_sidecar()
    path = config_dir.write(
        "services.yaml",
        """
        kind: Service
        name: cache
        protocol: tcp
        listen: 127.0.0.1:15001
        endpoints: [{address: 10.1.0.7:6379}]
        ---
        kind: Service
        name: db
        protocol: tcp
        listen: 127.0.0.1:15432
        endpoints: [{address: 10.1.0.8:5432}]
        ---
        kind: Service
        name: db2
        protocol: tcp
        listen: 0.0.0.0:15432
        endpoints: [{address: 10.1.0.9:5432}]
        ---
        kind: Route
        host: shop
        rules: [{to: [{service: cache}]}]
        """,
    )
    issues = config_dir.issues()
    assert f"{path}:4: listen: 127.0.0.1:15001 is already taken by the outbound listener" in issues
    assert f"{path}:16: listen: 0.0.0.0:15432 is already taken by service 'db'" in issues
    assert f"{path}:21: rules[0].to[0].service: service 'cache' has protocol tcp: routes carry HTTP only" in issues
