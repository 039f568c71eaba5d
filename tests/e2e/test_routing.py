"""Outbound routing end to end: Host (port and case ignored), absolute-form, Route rules, no_route."""

from __future__ import annotations

import httpx

from .apps import header_values
from .conftest import Mesh, service


async def test_routes_by_host_ignoring_port_and_case(mesh: Mesh) -> None:
    orders = await mesh.origin()
    sc = await mesh.sidecar(services=[service("orders", orders, hosts=["orders", "orders.default.svc"])])
    async with httpx.AsyncClient(base_url=sc.outbound_url) as client:
        for host in ["orders", "ORDERS:8080", "orders.default.svc", "Orders.Default.Svc:80"]:
            r = await client.get("/info?x=1", headers={"host": host})
            assert r.status_code == 200, host
            info = r.json()
            assert info["path"] == "/info" and info["query"] == "x=1"
            assert header_values(info, "host") == [host]  # Host passes through unchanged


async def test_unknown_host_is_no_route(mesh: Mesh) -> None:
    orders = await mesh.origin()
    sc = await mesh.sidecar(services=[service("orders", orders)])
    async with httpx.AsyncClient(base_url=sc.outbound_url) as client:
        r = await client.get("/", headers={"host": "payments"})
    assert r.status_code == 404
    assert r.headers["x-sidecar-reason"] == "no_route"
    assert "127.0.0.1" not in r.text


async def test_absolute_form_as_http_proxy(mesh: Mesh) -> None:
    orders = await mesh.origin()
    sc = await mesh.sidecar(services=[service("orders", orders)])
    async with httpx.AsyncClient(proxy=sc.outbound_url) as client:
        r = await client.get("http://orders/info?q=2")
    assert r.status_code == 200
    info = r.json()
    assert info["path"] == "/info" and info["query"] == "q=2"
    assert header_values(info, "host") == ["orders"]


async def test_route_rules_in_order_with_segment_prefix_exact_path_and_headers(mesh: Mesh) -> None:
    v1 = await mesh.origin()
    v2 = await mesh.origin()
    exact = await mesh.origin()
    names = {v1: "v1", v2: "v2", exact: "exact"}
    sc = await mesh.sidecar(
        services=[service("shop-v1", v1), service("shop-v2", v2), service("shop-exact", exact)],
        routes=[
            {
                "host": "shop",
                "rules": [
                    {"match": {"path": "/exact"}, "to": [{"service": "shop-exact"}]},
                    {"match": {"path_prefix": "/api", "headers": {"x-canary": "1"}}, "to": [{"service": "shop-v2"}]},
                    {"match": {"path_prefix": "/api"}, "to": [{"service": "shop-v1", "weight": 100}]},
                    {"match": {"path_prefix": "/"}, "to": [{"service": "shop-v2", "weight": 100}]},
                ],
            }
        ],
    )
    async with httpx.AsyncClient(base_url=sc.outbound_url) as client:

        async def served_by(path: str, headers: dict[str, str] | None = None) -> str:
            r = await client.get(path, headers={"host": "shop:80", **(headers or {})})
            assert r.status_code == 200, path
            return names[r.json()["server_port"]]

        assert await served_by("/exact") == "exact"
        assert await served_by("/exact/more") == "v2"  # exact means exact: falls through to "/"
        assert await served_by("/api") == "v1"
        assert await served_by("/api/orders?x=1") == "v1"
        assert await served_by("/api/orders", {"x-canary": "1"}) == "v2"
        assert await served_by("/api", {"x-canary": "2"}) == "v1"
        assert await served_by("/apix") == "v2"  # whole path segments only
        assert await served_by("/") == "v2"


async def test_a_route_wins_over_a_service_with_the_same_host_and_splits_by_weight(mesh: Mesh) -> None:
    stable = await mesh.origin()
    canary = await mesh.origin()
    sc = await mesh.sidecar(
        services=[service("shop", stable), service("shop-canary", canary)],
        routes=[
            {
                "host": "shop",
                "rules": [{"to": [{"service": "shop", "weight": 80}, {"service": "shop-canary", "weight": 20}]}],
            }
        ],
    )
    counts = {stable: 0, canary: 0}
    async with httpx.AsyncClient(base_url=sc.outbound_url, headers={"host": "shop"}) as client:
        for _ in range(300):
            r = await client.get("/info")
            counts[r.json()["server_port"]] += 1
    # 20% of 300 is 60; the binomial standard deviation is ~7, so 25..95 cannot fail by chance.
    assert 25 <= counts[canary] <= 95, counts


async def test_route_timeout_overrides_the_service_timeout(mesh: Mesh) -> None:
    origin = await mesh.origin()
    sc = await mesh.sidecar(
        services=[service("slow", origin, timeouts={"request": "10s"})],
        routes=[
            {
                "host": "slow",
                "rules": [{"match": {"path_prefix": "/slow"}, "to": [{"service": "slow"}], "timeout": "200ms"}],
            }
        ],
    )
    async with httpx.AsyncClient(base_url=sc.outbound_url, headers={"host": "slow"}) as client:
        r = await client.get("/slow/2000")
    assert r.status_code == 504
    assert r.headers["x-sidecar-reason"] == "upstream_timeout"
