"""sidecar.pipeline.route: host, path and header matching, rule order, weighted splits."""

from __future__ import annotations

import random
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from sidecar.config.loader import load_directory
from sidecar.config.schema import RouteRule
from sidecar.http.errors import NoRoute
from sidecar.http.message import ConnectionInfo, EmptyBody, Headers, Request
from sidecar.pipeline import route as route_module
from sidecar.pipeline.route import CompiledRule, Destination, Router

CONFIG = """
kind: Sidecar
service: frontend
---
kind: Service
name: orders
hosts: [orders, Orders.Default.svc.cluster.local, shop]
endpoints: [{address: 10.0.0.1:15006}]
tls: {mode: disabled}
---
kind: Service
name: orders-v2
endpoints: [{address: 10.0.0.2:15006}]
tls: {mode: disabled}
---
kind: Service
name: catalog
endpoints: [{address: 10.0.0.3:15006}]
tls: {mode: disabled}
---
kind: Service
name: legacy
hosts: []
endpoints: [{address: 10.0.0.4:15006}]
tls: {mode: disabled}
---
kind: Route
host: Shop
rules:
  - match: {path_prefix: /api, headers: {X-Canary: "1"}}
    to: [{service: orders-v2}]
  - match: {path: /exact}
    to: [{service: catalog}]
    timeout: 250ms
  - match: {path_prefix: /api}
    to: [{service: orders}]
    timeout: 3s
  - match: {path_prefix: /static/}
    to: [{service: catalog}]
  - match: {path_prefix: /}
    to: [{service: orders, weight: 90}, {service: orders-v2, weight: 10}]
---
kind: Route
host: strict
rules:
  - match: {path_prefix: /only}
    to: [{service: legacy}]
---
kind: Route
host: catch-all
rules:
  - to: [{service: catalog, weight: 0}, {service: legacy, weight: 100}]
"""


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Router:
    directory: Path = tmp_path_factory.mktemp("mesh")
    (directory / "mesh.yaml").write_text(textwrap.dedent(CONFIG).lstrip())
    snapshot = load_directory(directory)
    return Router(snapshot.services, snapshot.routes)


def req(authority: bytes | None, target: bytes = b"/", headers: list[tuple[bytes, bytes]] | None = None) -> Request:
    return Request(b"GET", target, authority, Headers.of(headers or []), EmptyBody(), ConnectionInfo("127.0.0.1", 5))


def service(router: Router, authority: bytes, target: bytes = b"/", headers=None) -> str:
    return router.destination(req(authority, target, headers)).service


@pytest.mark.parametrize(
    "authority",
    [
        b"orders",
        b"ORDERS",
        b"orders:8080",
        b"Orders:15001",
        b"orders.default.svc.cluster.local",
        b"ORDERS.DEFAULT.SVC.CLUSTER.LOCAL:80",
        b"orders.",
    ],
)
def test_service_host_ignores_port_and_case(router: Router, authority: bytes) -> None:
    assert router.destination(req(authority)) == Destination("orders", None)


def test_service_default_host_is_its_name(router: Router) -> None:
    assert service(router, b"catalog") == "catalog"
    assert service(router, b"orders-v2:1234") == "orders-v2"


@pytest.mark.parametrize("authority", [b"unknown", b"legacy", b"ordersx", b"order", b"10.0.0.1:15006"])
def test_unknown_host_is_no_route(router: Router, authority: bytes) -> None:
    with pytest.raises(NoRoute) as caught:
        router.destination(req(authority))
    assert (caught.value.status, caught.value.reason) == (404, "no_route")
    assert caught.value.message == NoRoute.default_message


def test_missing_authority_is_no_route(router: Router) -> None:
    with pytest.raises(NoRoute):
        router.destination(req(None))


def test_route_wins_over_service_with_same_host(router: Router) -> None:
    # `shop` is also a host of Service orders, but the Route for shop decides: /static/ goes to catalog.
    assert service(router, b"shop", b"/static/app.js") == "catalog"
    assert service(router, b"SHOP:8443", b"/static/app.js") == "catalog"


def test_rules_tried_in_order_first_match_wins(router: Router) -> None:
    # Rule 0 (prefix /api + header) is before rule 2 (prefix /api).
    assert service(router, b"shop", b"/api/orders", [(b"X-Canary", b"1")]) == "orders-v2"
    assert service(router, b"shop", b"/api/orders", [(b"x-canary", b"1")]) == "orders-v2"
    assert service(router, b"shop", b"/api/orders") == "orders"


def test_header_match_is_exact_value(router: Router) -> None:
    assert service(router, b"shop", b"/api", [(b"X-Canary", b"2")]) == "orders"
    assert service(router, b"shop", b"/api", [(b"X-Canary", b"1 ")]) == "orders"
    assert service(router, b"shop", b"/api", [(b"X-Canary-Other", b"1")]) == "orders"


@pytest.mark.parametrize("target", [b"/api", b"/api/", b"/api/x", b"/api/x/y", b"/api?q=1", b"/api/?q=1"])
def test_path_prefix_matches_whole_segments(router: Router, target: bytes) -> None:
    assert router.destination(req(b"shop", target)) == Destination("orders", 3.0)


@pytest.mark.parametrize("target", [b"/apix", b"/api-v2", b"/apix/y", b"/ap", b"/API", b"/x/api"])
def test_path_prefix_does_not_match_partial_segments(router: Router, target: bytes) -> None:
    # These fall through to the weighted catch-all (no timeout), never rule 2 (timeout 3s).
    assert router.destination(req(b"shop", target)).timeout is None


def test_prefix_with_trailing_slash_matches_segments(router: Router) -> None:
    assert service(router, b"shop", b"/static") == "catalog"
    assert service(router, b"shop", b"/static/") == "catalog"
    assert service(router, b"shop", b"/static/css/a.css") == "catalog"
    assert router.destination(req(b"shop", b"/staticfiles")).timeout is None


def test_exact_path(router: Router) -> None:
    assert router.destination(req(b"shop", b"/exact")) == Destination("catalog", 0.25)
    assert router.destination(req(b"shop", b"/exact?x=1")) == Destination("catalog", 0.25)
    assert router.destination(req(b"shop", b"/exact/")).timeout is None
    assert router.destination(req(b"shop", b"/exact/more")).timeout is None
    assert router.destination(req(b"shop", b"/exactly")).timeout is None


def test_per_rule_timeout_carried(router: Router) -> None:
    assert router.destination(req(b"shop", b"/api/v1")).timeout == 3.0
    assert router.destination(req(b"shop", b"/exact")).timeout == 0.25
    assert router.destination(req(b"shop", b"/static/x")).timeout is None


def test_no_rule_matches_is_no_route(router: Router) -> None:
    assert service(router, b"strict", b"/only/this") == "legacy"
    assert service(router, b"strict", b"/only") == "legacy"
    for target in (b"/", b"/onlyx", b"/other"):
        with pytest.raises(NoRoute):
            router.destination(req(b"strict", target))


def test_root_prefix_matches_everything(router: Router) -> None:
    random.seed(1)
    for target in (b"/", b"/anything", b"/a/b/c?d=e", b"/apix"):
        assert service(router, b"shop", target) in {"orders", "orders-v2"}


def test_service_only_reachable_through_route(router: Router) -> None:
    assert service(router, b"catch-all", b"/whatever") == "legacy"


def test_zero_weight_target_never_picked(router: Router) -> None:
    random.seed(7)
    assert {service(router, b"catch-all", b"/x") for _ in range(500)} == {"legacy"}


def test_weighted_split_roughly_90_10(router: Router) -> None:
    random.seed(12345)
    counts = Counter(service(router, b"shop", b"/home") for _ in range(20_000))
    assert set(counts) == {"orders", "orders-v2"}
    assert 17_600 <= counts["orders"] <= 18_400  # 90% ± 2%
    assert 1_600 <= counts["orders-v2"] <= 2_400


def test_compiled_rule_pick_edges(monkeypatch: pytest.MonkeyPatch) -> None:
    rule = CompiledRule(
        RouteRule.model_validate(
            {"to": [{"service": "a", "weight": 50}, {"service": "b", "weight": 50}], "timeout": "1500ms"}
        )
    )
    assert rule.destinations == [Destination("a", 1.5), Destination("b", 1.5)]
    assert rule.cum_weights == [50, 100]
    random.seed(3)
    counts = Counter(rule.pick().service for _ in range(10_000))
    assert 4_700 <= counts["a"] <= 5_300
    # random.random() is in [0, 1): the bisect never runs past the last destination.
    for value, expected in ((0.9999999999999999, "b"), (0.0, "a"), (0.4999, "a"), (0.5, "b")):
        monkeypatch.setattr(route_module.random, "random", lambda value=value: value)
        assert rule.pick() == Destination(expected, 1.5)
