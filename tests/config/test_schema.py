"""Value notations (durations, sizes, addresses) and the models of each kind, without files."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.config import (
    Address,
    EndpointConfig,
    HashOn,
    HealthCheck,
    InboundConfig,
    Limits,
    OutlierDetection,
    RouteConfig,
    RouteMatch,
    RouteRule,
    RouteTarget,
    ServiceConfig,
    ServiceTls,
    SidecarConfig,
    SidecarTls,
    Timeouts,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)
from sidecar.config.notation import parse_server_name, parse_spiffe_id
from sidecar.config.schema import FILE_CONTEXT, ValidationError

# ------------------------------------------------------------------------------------------------
# Durations
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("0ms", 0.0),
        ("1s", 1.0),
        ("0s", 0.0),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("2m", 120.0),
        ("1.5m", 90.0),
        ("1h", 3600.0),
        ("4s", 4.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5 parsecs", "invalid duration '5 parsecs' (use e.g. 250ms, 1s, 2m)"),
        ("-1s", "invalid duration '-1s' (use e.g. 250ms, 1s, 2m)"),
        ("1", "invalid duration '1' (use e.g. 250ms, 1s, 2m)"),
        ("1 s", "invalid duration '1 s' (use e.g. 250ms, 1s, 2m)"),
        ("1S", "invalid duration '1S' (use e.g. 250ms, 1s, 2m)"),
        ("1d", "invalid duration '1d' (use e.g. 250ms, 1s, 2m)"),
        ("s", "invalid duration 's' (use e.g. 250ms, 1s, 2m)"),
        ("", "invalid duration '' (use e.g. 250ms, 1s, 2m)"),
        (5, "invalid duration 5 (a duration needs a unit: use e.g. 250ms, 1s, 2m)"),
        (1.5, "invalid duration 1.5 (a duration needs a unit: use e.g. 250ms, 1s, 2m)"),
        (True, "invalid duration true (use e.g. 250ms, 1s, 2m)"),
        (None, "invalid duration null (use e.g. 250ms, 1s, 2m)"),
        ("9" * 400 + "h", "invalid duration '" + "9" * 400 + "h' (too large)"),
    ],
)
def test_parse_duration_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(value)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.25, "250ms"), (0.001, "1ms"), (0.0, "0s"), (1.0, "1s"), (1.5, "1.5s"), (60.0, "60s"), (1e-5, "0.00001s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@given(st.floats(min_value=0, allow_nan=False, allow_infinity=False))
def test_duration_round_trip(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=10**12), st.sampled_from(["ms", "s", "m", "h"]))
def test_duration_units(number: int, unit: str) -> None:
    expected = {"ms": number / 1000, "s": float(number), "m": number * 60.0, "h": number * 3600.0}[unit]
    assert parse_duration(f"{number}{unit}") == expected


@given(st.one_of(st.text(), st.from_regex(r"-?[0-9.]{0,8}(ms|s|m|h|d)?", fullmatch=True)))
def test_parse_duration_never_crashes(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        assert str(exc).startswith("invalid duration ")
    else:
        assert math.isfinite(seconds) and seconds >= 0


# ------------------------------------------------------------------------------------------------
# Sizes
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (0, 0),
        (1024, 1024),
        ("1024", 1024),
        ("0", 0),
        ("64KiB", 65536),
        ("1MiB", 1 << 20),
        ("2GiB", 2 << 30),
        ("64 KiB", 65536),
    ],
)
def test_parse_size(value: object, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("64KB", "invalid size '64KB' (use bytes, or e.g. 64KiB, 1MiB, 2GiB)"),
        ("1.5MiB", "invalid size '1.5MiB' (use bytes, or e.g. 64KiB, 1MiB, 2GiB)"),
        ("-1", "invalid size '-1' (use bytes, or e.g. 64KiB, 1MiB, 2GiB)"),
        (-1, "invalid size -1 (must not be negative)"),
        (1.5, "invalid size 1.5 (use bytes, or e.g. 64KiB, 1MiB, 2GiB)"),
        (True, "invalid size true (use bytes, or e.g. 64KiB, 1MiB, 2GiB)"),
        ("KiB", "invalid size 'KiB' (use bytes, or e.g. 64KiB, 1MiB, 2GiB)"),
        ("1" * 5000, "invalid size '" + "1" * 5000 + "' (too large)"),
    ],
)
def test_parse_size_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_size(value)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("size", "text"), [(0, "0"), (1000, "1000"), (1024, "1KiB"), (65536, "64KiB"), (3 << 20, "3MiB"), (2 << 30, "2GiB")]
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


@given(st.integers(min_value=0, max_value=2**64))
def test_size_round_trip(size: int) -> None:
    assert parse_size(format_size(size)) == size
    assert parse_size(str(size)) == size
    assert parse_size(size) == size


@given(st.one_of(st.text(), st.from_regex(r"-?[0-9. ]{0,6}(KiB|MiB|GiB|KB|B)?", fullmatch=True)))
def test_parse_size_never_crashes(text: str) -> None:
    try:
        size = parse_size(text)
    except ValueError as exc:
        assert str(exc).startswith("invalid size ")
    else:
        assert size >= 0


# ------------------------------------------------------------------------------------------------
# Addresses
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port", "shown"),
    [
        ("127.0.0.1:8080", "127.0.0.1", 8080, "127.0.0.1:8080"),
        ("0.0.0.0:15006", "0.0.0.0", 15006, "0.0.0.0:15006"),
        ("orders.default.svc.cluster.local:15006", "orders.default.svc.cluster.local", 15006, None),
        ("Orders-Headless:1", "orders-headless", 1, "orders-headless:1"),
        ("localhost:65535", "localhost", 65535, None),
        ("[::1]:8080", "::1", 8080, "[::1]:8080"),
        ("[2001:DB8::1]:443", "2001:db8::1", 443, "[2001:db8::1]:443"),
    ],
)
def test_address_parse(text: str, host: str, port: int, shown: str | None) -> None:
    address = Address.parse(text)
    assert (address.host, address.port) == (host, port)
    assert str(address) == (shown or text)
    assert Address.parse(str(address)) == address


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("orders", "expected host:port, e.g. 127.0.0.1:8080"),
        ("orders:0", "port must be 1..65535"),
        ("orders:65536", "port must be 1..65535"),
        ("orders:http", "port must be 1..65535"),
        ("orders:" + "1" * 5000, "port must be 1..65535"),
        ("orders:", "port must be 1..65535"),
        (":8080", "missing host, e.g. 127.0.0.1:8080"),
        ("::1:80", "put IPv6 addresses in brackets: [::1]:8080"),
        ("[::1]", "expected [IPv6]:port, e.g. [::1]:8080"),
        ("[zz::1]:80", "bad IPv6 address 'zz::1'"),
        ("10.0.0.256:80", "bad IPv4 address '10.0.0.256'"),
        ("bad_-host-:80", "bad host name 'bad_-host-'"),
        ("a b:80", "bad host name 'a b'"),
        (8080, "expected host:port, e.g. 127.0.0.1:8080"),
    ],
)
def test_address_rejects(value: object, reason: str) -> None:
    with pytest.raises(ValueError) as caught:
        Address.parse(value)
    assert str(caught.value).endswith(f"({reason})")


def test_address_is_frozen_and_hashable() -> None:
    address = Address("10.0.0.1", 80)
    assert {address: 1}[Address.parse("10.0.0.1:80")] == 1
    with pytest.raises(AttributeError):
        address.port = 81  # type: ignore[misc]
    with pytest.raises(ValueError):
        Address("10.0.0.1", 0)


@given(st.text(max_size=40))
def test_address_parse_never_crashes(text: str) -> None:
    try:
        address = Address.parse(text)
    except ValueError as exc:
        assert str(exc).startswith("invalid address ")
    else:
        assert Address.parse(str(address)) == address


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------


def test_sidecar_defaults() -> None:
    sidecar = SidecarConfig(service="frontend")
    assert sidecar.inbound is None
    assert str(sidecar.outbound.listen) == "127.0.0.1:15001"
    assert str(sidecar.admin.listen) == "127.0.0.1:15000"
    assert sidecar.limits == Limits(max_request_headers=65536, max_request_body=0, header_read_timeout=10.0)
    assert sidecar.drain_timeout == 20.0
    assert sidecar.tls is None
    inbound = InboundConfig()
    assert (str(inbound.listen), str(inbound.app)) == ("0.0.0.0:15006", "127.0.0.1:8080")
    assert (inbound.app_protocol, inbound.app_idle_timeout) == ("http1", 4.0)
    assert (inbound.mode, inbound.allow) == ("strict", None)


def test_service_defaults() -> None:
    service = ServiceConfig.model_validate({"name": "Orders", "endpoints": [{"address": "10.0.0.1:80"}]})
    assert service.hosts == ("orders",)
    assert service.endpoints == (EndpointConfig(address=Address("10.0.0.1", 80), weight=1),)
    assert service.dns_refresh == 5.0
    assert service.load_balancer == "least_request"
    assert service.timeouts == Timeouts(connect=1.0, request=15.0, idle=60.0)
    assert service.tls == ServiceTls()
    assert service.hash_on is None
    assert service.health_check is None  # no active checks unless configured
    assert service.outlier_detection == OutlierDetection(
        consecutive_5xx=5, consecutive_gateway_errors=5, interval=10.0, base_ejection=30.0, max_ejection_percent=50
    )
    assert (service.tls.mode, service.tls.identity, service.tls.ca, service.tls.server_name) == (
        "mutual",
        None,
        None,
        None,
    )


def test_service_hosts_normalized() -> None:
    service = ServiceConfig.model_validate(
        {"name": "orders", "hosts": ["Orders", "orders:8080", "ORDERS.svc"], "endpoints": [{"address": "a:1"}]}
    )
    assert service.hosts == ("orders", "orders.svc")
    routes_only = ServiceConfig.model_validate({"name": "v2", "hosts": [], "endpoints": [{"address": "a:1"}]})
    assert routes_only.hosts == ()


def test_models_are_frozen_and_strict() -> None:
    sidecar = SidecarConfig.model_validate({"service": "frontend"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        sidecar.service = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match=r"tracing\.collector: unknown field"):
        SidecarConfig.model_validate({"service": "frontend", "tracing": {"collector": "x"}})
    with pytest.raises(ValidationError):
        EndpointConfig.model_validate({"address": "a:1", "weight": True})
    with pytest.raises(ValidationError):
        EndpointConfig.model_validate({"address": "a:1", "weight": "2"})


def test_null_means_unset() -> None:
    sidecar = SidecarConfig.model_validate({"service": "frontend", "inbound": None, "limits": None})
    assert sidecar.inbound is None and sidecar.limits == Limits()
    with pytest.raises(ValidationError):
        SidecarConfig.model_validate({"service": None})


def test_route_single_target_defaults_to_100() -> None:
    rule = RouteRule.model_validate({"to": [{"service": "orders"}]})
    assert rule.to == (RouteTarget(service="orders", weight=100),)
    assert rule.match == RouteMatch(path_prefix=None, path=None, headers=())
    assert rule.timeout is None


def test_route_weights() -> None:
    rule = RouteRule.model_validate({"to": [{"service": "a", "weight": 90}, {"service": "b", "weight": 10}]})
    assert [t.weight for t in rule.to] == [90, 10]
    with pytest.raises(ValidationError, match="weights add up to 90, must be 100"):
        RouteRule.model_validate({"to": [{"service": "a", "weight": 90}, {"service": "b", "weight": 0}]})
    with pytest.raises(ValidationError, match="weights add up to 50, must be 100"):
        RouteRule.model_validate({"to": [{"service": "a", "weight": 50}]})
    with pytest.raises(ValidationError, match="field required"):
        RouteRule.model_validate({"to": [{"service": "a", "weight": 100}, {"service": "b"}]})


def test_route_match() -> None:
    match = RouteMatch.model_validate({"path_prefix": "/api", "headers": {"X-Canary": "1", "x-user": "bob"}})
    assert match.headers == (("x-canary", "1"), ("x-user", "bob"))
    assert match.to_json()["headers"] == {"x-canary": "1", "x-user": "bob"}
    with pytest.raises(ValidationError, match="must start with '/'"):
        RouteMatch.model_validate({"path": "api"})
    with pytest.raises(ValidationError, match="not both"):
        RouteMatch.model_validate({"path": "/a", "path_prefix": "/a"})
    with pytest.raises(ValidationError, match="listed twice"):
        RouteMatch.model_validate({"headers": {"X-A": "1", "x-a": "2"}})
    with pytest.raises(ValidationError, match="invalid header name"):
        RouteMatch.model_validate({"headers": {"x a": "1"}})


def test_route_host_lower_case_without_port() -> None:
    route = RouteConfig.model_validate({"host": "Shop.Example:8080", "rules": [{"to": [{"service": "a"}]}]})
    assert route.host == "shop.example"


def test_code_may_pass_seconds_but_files_need_units() -> None:
    assert Timeouts(connect=0.5).connect == 0.5
    assert Timeouts.model_validate({"connect": "500ms"}, context=FILE_CONTEXT).connect == 0.5
    with pytest.raises(ValidationError, match="a duration needs a unit"):
        Timeouts.model_validate({"connect": 1}, context=FILE_CONTEXT)
    with pytest.raises(ValidationError):
        Timeouts(connect=-1.0)


def test_only_ascii_digits() -> None:
    with pytest.raises(ValueError):
        parse_duration("\u0661s")  # ARABIC-INDIC DIGIT ONE
    with pytest.raises(ValueError):
        parse_size("\u0661KiB")


# ------------------------------------------------------------------------------------------------
# TLS and SPIFFE IDs
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "spiffe://mesh.local/ns/default/sa/frontend",
        "spiffe://example.org/a",
        "spiffe://td_1-x.y/path/with.dots-and_under~",
    ],
)
def test_spiffe_id(text: str) -> None:
    assert parse_spiffe_id(text) == text
    assert parse_spiffe_id(text, pattern=True) == text


@pytest.mark.parametrize(
    "text", ["spiffe://mesh.local/ns/*/sa/*", "spiffe://mesh.local/*", "spiffe://mesh.local/ns/default/sa/front*"]
)
def test_spiffe_pattern(text: str) -> None:
    assert parse_spiffe_id(text, pattern=True) == text
    with pytest.raises(ValueError, match=r"one exact ID: '\*' patterns belong in inbound.allow"):
        parse_spiffe_id(text)


@pytest.mark.parametrize(
    "value",
    [
        "spiffe://mesh.local",
        "spiffe://mesh.local/",
        "spiffe:///ns/a",
        "spiffe://mesh.local//a",
        "spiffe://mesh.local/a/",
        "spiffe://mesh.local/./a",
        "spiffe://MESH.local/a",
        "spiffe://*/a",
        "spiffe://mesh.local:8080/a",
        "SPIFFE://mesh.local/a",
        "spiffe://mesh.local/a b",
        "spiffe://mesh.local/a?b",
        " spiffe://mesh.local/a",
        "",
    ],
)
def test_spiffe_id_rejects(value: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_spiffe_id(value, pattern=True)
    assert str(caught.value) == (
        f"invalid SPIFFE ID {value!r} (expected spiffe://TRUST-DOMAIN/PATH; '*' globs a path segment)"
    )
    with pytest.raises(ValueError, match=r"expected spiffe://TRUST-DOMAIN/PATH\)$"):
        parse_spiffe_id(value)
    with pytest.raises(ValueError, match=r"^expected a SPIFFE ID, got 5$"):
        parse_spiffe_id(5)


@pytest.mark.parametrize(
    ("value", "name"),
    [("api.example.com", "api.example.com"), ("API.Example.COM.", "api.example.com"), ("10.0.0.1", "10.0.0.1")],
)
def test_server_name(value: str, name: str) -> None:
    assert parse_server_name(value) == name
    assert parse_server_name("2001:DB8::1") == "2001:db8::1"


@pytest.mark.parametrize("value", ["api.example.com:443", "https://api.example.com", "a b", "", "-bad-.com", "."])
def test_server_name_rejects(value: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_server_name(value)
    assert str(caught.value) == f"invalid server name {value!r} (expected a host name such as api.example.com)"


def test_sidecar_tls_needs_all_three_files() -> None:
    tls = SidecarTls(cert="certs/cert.pem", key="/abs/key.pem", ca="ca.pem")
    assert tls.to_json() == {"cert": "certs/cert.pem", "key": "/abs/key.pem", "ca": "ca.pem"}
    with pytest.raises(ValidationError) as caught:
        SidecarTls.model_validate({"cert": "cert.pem"})
    assert str(caught.value) == "key: field required\nca: field required"
    with pytest.raises(ValidationError, match=r"invalid file path 'a\\x00b' \(contains a NUL character\)"):
        SidecarTls(cert="a\0b", key="k", ca="c")
    sidecar = SidecarConfig.model_validate({"service": "a", "tls": {"cert": "c", "key": "k", "ca": "b"}})
    assert sidecar.tls == SidecarTls(cert="c", key="k", ca="b")
    assert sidecar.to_json()["tls"] == {"cert": "c", "key": "k", "ca": "b"}


def test_inbound_allow() -> None:
    inbound = InboundConfig.model_validate({"allow": ["spiffe://a/x/*", "spiffe://a/y", "spiffe://a/x/*"]})
    assert inbound.allow == ("spiffe://a/x/*", "spiffe://a/y")  # repeats dropped
    assert inbound.to_json()["allow"] == ["spiffe://a/x/*", "spiffe://a/y"]
    assert InboundConfig.model_validate({"allow": []}).allow == ()  # nobody
    assert InboundConfig.model_validate({"allow": None}).allow is None  # any mesh identity
    assert InboundConfig().to_json()["allow"] is None
    assert InboundConfig(mode="permissive").mode == "permissive"
    with pytest.raises(ValidationError) as caught:
        InboundConfig.model_validate({"mode": "STRICT", "allow": "spiffe://a/b"})
    assert str(caught.value) == (
        "mode: invalid value 'STRICT' (expected 'strict' or 'permissive')\nallow: expected a list, got 'spiffe://a/b'"
    )


@pytest.mark.parametrize(
    ("data", "errors"),
    [
        ({"mode": "simple", "identity": "spiffe://a/b"}, ["identity: identity applies to mode mutual only"]),
        ({"mode": "disabled", "identity": "spiffe://a/b"}, ["identity: identity applies to mode mutual only"]),
        ({"ca": "ca.pem"}, ["ca: ca applies to mode simple only"]),
        ({"mode": "disabled", "server_name": "a.example"}, ["server_name: server_name applies to mode simple only"]),
        (
            {"mode": "disabled", "identity": "spiffe://a/b", "ca": "ca.pem", "server_name": "a.example"},
            [
                "identity: identity applies to mode mutual only",
                "ca: ca applies to mode simple only",
                "server_name: server_name applies to mode simple only",
            ],
        ),
        ({"mode": "mtls"}, ["mode: invalid value 'mtls' (expected 'mutual', 'simple' or 'disabled')"]),
    ],
)
def test_service_tls_rules(data: dict[str, str], errors: list[str]) -> None:
    with pytest.raises(ValidationError) as caught:
        ServiceTls.model_validate(data)
    assert str(caught.value).splitlines() == errors


def test_service_tls_modes() -> None:
    assert ServiceTls(identity="spiffe://a/b").mode == "mutual"
    simple = ServiceTls(mode="simple", ca="certs/api.pem", server_name="API.example.com")
    assert simple.server_name == "api.example.com"
    assert simple.to_json() == {
        "mode": "simple",
        "identity": None,
        "ca": "certs/api.pem",
        "server_name": "api.example.com",
    }
    assert ServiceTls(mode="disabled") != ServiceTls()
    service = ServiceConfig.model_validate(
        {"name": "api", "endpoints": [{"address": "api.example.com:443"}], "tls": {"mode": "simple"}}
    )
    assert service.tls == ServiceTls(mode="simple")
    assert service.to_json()["tls"] == {"mode": "simple", "identity": None, "ca": None, "server_name": None}
    with pytest.raises(ValidationError, match="identity applies to mode mutual only"):
        ServiceTls(mode="simple", identity="spiffe://a/b")


# ------------------------------------------------------------------------------------------------
# Resilience: outlier detection, health checks, ring hash
# ------------------------------------------------------------------------------------------------


def test_health_check_defaults_and_json() -> None:
    check = HealthCheck()
    assert (check.path, check.interval, check.timeout) == ("/healthz", 5.0, 1.0)
    assert (check.healthy_threshold, check.unhealthy_threshold) == (1, 3)
    service = ServiceConfig.model_validate(
        {"name": "a", "endpoints": [{"address": "a:1"}], "health_check": {"path": "/ready?deep=1", "interval": "2s"}},
        context=FILE_CONTEXT,
    )
    assert service.health_check == HealthCheck(path="/ready?deep=1", interval=2.0)
    assert service.to_json()["health_check"] == {
        "path": "/ready?deep=1",
        "interval": "2s",
        "timeout": "1s",
        "healthy_threshold": 1,
        "unhealthy_threshold": 3,
    }
    assert service.to_json()["outlier_detection"]["base_ejection"] == "30s"


def test_hash_on_one_key() -> None:
    assert HashOn(header="X-User").header == "x-user"  # header names are matched lower-case
    assert HashOn(cookie="Session").cookie == "Session"  # cookie names are case-sensitive
    assert HashOn(source_ip=True).to_json() == {"header": None, "cookie": None, "source_ip": True}
    for data in ({}, {"source_ip": False}, {"header": "a", "cookie": "b"}):
        with pytest.raises(ValidationError, match="set exactly one of header, cookie, source_ip"):
            HashOn.model_validate(data)
    service = ServiceConfig.model_validate(
        {"name": "a", "endpoints": [{"address": "a:1"}], "load_balancer": "ring_hash", "hash_on": {"cookie": "sid"}}
    )
    assert (service.load_balancer, service.hash_on) == ("ring_hash", HashOn(cookie="sid"))


def test_outlier_detection_bounds() -> None:
    assert OutlierDetection(max_ejection_percent=0).max_ejection_percent == 0  # never eject
    assert OutlierDetection(max_ejection_percent=100).max_ejection_percent == 100
    with pytest.raises(ValidationError, match="max_ejection_percent: must be at most 100"):
        OutlierDetection(max_ejection_percent=101)
    with pytest.raises(ValidationError, match="base_ejection: must be greater than 0"):
        OutlierDetection(base_ejection=0)
