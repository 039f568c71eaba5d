"""The admin listener's JSON and Prometheus pages over real sockets: `/config`,
`/clusters` (at rest and with a request held in flight at the origin) and `/metrics` (parsed with
prometheus_client's parser, pooled connections and retries as the upstream registry counts them), and
the breaker shown open exactly while a new request would get 503 `overflow`."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from sidecar.config.snapshot import content_version

from .apps import Receive, Scope, Send, echo_app
from .conftest import Mesh, SidecarHandle, service
from .test_resilience import FlakyOrigin

SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class HoldingOrigin:
    """Answers "ok" at once, except /hold, which waits until `release` is set; `held` counts the
    /hold requests that arrived."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.held = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await echo_app(scope, receive, send)
            return
        if scope["path"] == "/hold":
            self.held += 1
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def wait_held(self, count: int) -> None:
        with trio.fail_after(5):
            while self.held < count:
                await trio.sleep(0.01)


async def get_json(sc: SidecarHandle, path: str) -> Any:
    async with httpx.AsyncClient(base_url=sc.admin_url) as admin:
        r = await admin.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert int(r.headers["content-length"]) == len(r.content)
    return r.json()


async def scrape(sc: SidecarHandle) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with httpx.AsyncClient(base_url=sc.admin_url) as admin:
        r = await admin.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(r.text)
        for sample in family.samples
    }


def orders(scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> float:
    return scraped[name, frozenset({("service", "orders")})]


async def wait_for(condition: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not await condition():
            await trio.sleep(0.02)


async def test_config_shows_version_files_effective_config_and_last_error(mesh: Mesh) -> None:
    sc = await mesh.sidecar(services=[service("orders", await mesh.origin())])
    doc = await get_json(sc, "/config")
    assert set(doc) == {"version", "files", "config", "last_error"}
    config_file = mesh.tmp_path / "sidecar1" / "mesh.yaml"
    assert doc["files"] == [str(config_file)]
    assert SHA256_HEX.fullmatch(doc["version"])
    assert doc["version"] == content_version([("mesh.yaml", config_file.read_bytes())])
    assert doc["config"]["sidecar"]["service"] == "client"
    assert [s["name"] for s in doc["config"]["services"]] == ["orders"]
    assert doc["config"]["services"][0]["retries"]["attempts"] == 2  # defaults filled in
    assert doc["last_error"] is None

    sc.runtime.config_error = ("2025-01-02T03:04:05Z", "mesh.yaml:3: endpoints: required")
    doc = await get_json(sc, "/config")
    assert doc["last_error"] == {"time": "2025-01-02T03:04:05Z", "message": "mesh.yaml:3: endpoints: required"}


async def test_head_answers_like_get_without_a_body(mesh: Mesh) -> None:
    sc = await mesh.sidecar(services=[service("orders", await mesh.origin())])
    async with httpx.AsyncClient(base_url=sc.admin_url) as admin:
        for path in ("/config", "/clusters", "/metrics"):
            got = await admin.get(path)
            head = await admin.head(path)
            assert head.status_code == 200, path
            assert head.content == b"", path
            assert head.headers["content-type"] == got.headers["content-type"], path
            assert int(head.headers["content-length"]) > 0, path
        assert (await admin.post("/clusters")).status_code == 405


async def test_clusters_show_endpoints_at_rest_and_requests_in_flight(mesh: Mesh) -> None:
    origin = HoldingOrigin()
    port = await mesh.origin(origin)
    sc = await mesh.sidecar(service="frontend", services=[service("orders", port)], inbound_app=port)
    endpoint = {"address": f"127.0.0.1:{port}", "healthy": True, "ejected": False, "active_requests": 0}

    doc = await get_json(sc, "/clusters")
    assert [(s["name"], s["direction"]) for s in doc["services"]] == [("orders", "outbound")]  # upstreams only
    assert (doc["app"]["name"], doc["app"]["direction"]) == ("frontend", "inbound")  # the local app, apart
    for entry in [*doc["services"], doc["app"]]:
        assert entry["breaker_open"] is False
        assert [{key: e[key] for key in endpoint} for e in entry["endpoints"]] == [endpoint]
        assert all(type(e[key]) is type(value) for e in entry["endpoints"] for key, value in endpoint.items())

    async def active(direction: str) -> int:
        doc = await get_json(sc, "/clusters")
        (entry,) = [s for s in [*doc["services"], doc["app"]] if s["direction"] == direction]
        return int(entry["endpoints"][0]["active_requests"])

    async def call_outbound() -> None:
        async with httpx.AsyncClient(base_url=sc.outbound_url, headers={"host": "orders"}, timeout=10) as client:
            assert (await client.get("/hold")).status_code == 200

    async def call_inbound() -> None:
        async with httpx.AsyncClient(base_url=sc.inbound_url, verify=mesh.pki.client_context(), timeout=10) as client:
            assert (await client.get("/hold")).status_code == 200

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call_outbound)
        await origin.wait_held(1)
        assert await active("outbound") >= 1
        assert await active("inbound") == 0
        nursery.start_soon(call_inbound)
        await origin.wait_held(2)
        assert await active("inbound") >= 1
        origin.release.set()

    async def both_idle() -> bool:
        return await active("outbound") == 0 and await active("inbound") == 0

    await wait_for(both_idle)


async def test_metrics_count_pooled_connections_and_retries(mesh: Mesh) -> None:
    origin = FlakyOrigin(failures=1)
    sc = await mesh.sidecar(services=[service("orders", await mesh.origin(origin))])
    at_rest = await scrape(sc)
    assert orders(at_rest, "sidecar_upstream_connections_active") == 0
    assert orders(at_rest, "sidecar_upstream_retries_total") == 0
    assert orders(at_rest, "sidecar_circuit_breaker_open") == 0
    assert orders(at_rest, "sidecar_upstream_ejections_total") == 0
    assert at_rest["sidecar_config_reloads_total", frozenset({("result", "success")})] == 0

    async with httpx.AsyncClient(base_url=sc.outbound_url, headers={"host": "orders"}, timeout=10) as client:
        r = await client.get("/x")  # 503, then retried: 200
    assert r.status_code == 200 and len(origin.seen) == 2
    after = await scrape(sc)
    assert orders(after, "sidecar_upstream_retries_total") == 1
    assert orders(after, "sidecar_upstream_connections_active") >= 1  # kept alive in the pool
    assert orders(after, "sidecar_circuit_breaker_open") == 0


async def test_metrics_and_pages_of_two_sidecars_are_their_own(mesh: Mesh) -> None:
    port = await mesh.origin(FlakyOrigin(failures=1))
    first = await mesh.sidecar(services=[service("orders", port)])
    second = await mesh.sidecar(services=[service("payments", port)])
    async with httpx.AsyncClient(base_url=first.outbound_url, headers={"host": "orders"}, timeout=10) as client:
        assert (await client.get("/x")).status_code == 200
    assert orders(await scrape(first), "sidecar_upstream_retries_total") == 1
    second_metrics = await scrape(second)
    assert not [key for key in second_metrics if ("service", "orders") in key[1]]
    assert second_metrics["sidecar_upstream_retries_total", frozenset({("service", "payments")})] == 0
    assert [s["name"] for s in (await get_json(second, "/clusters"))["services"]] == ["payments"]
    assert Path((await get_json(second, "/config"))["files"][0]).parent.name == "sidecar2"


async def test_metrics_of_ejections_open_breakers_and_refused_handshakes_move(mesh: Mesh) -> None:
    from .conftest import free_port

    holding = HoldingOrigin()
    dead = free_port()  # nothing listens: the first connect fails and ejects it
    outlier = {"consecutive_gateway_errors": 1}
    b = await mesh.sidecar(service="orders", inbound_app=await mesh.origin())
    sc = await mesh.sidecar(
        services=[
            service("orders", dead, await mesh.origin(holding), load_balancer="round_robin", outlier_detection=outlier),
            service("narrow", await mesh.origin(holding), circuit_breaker={"max_requests": 1}),
        ]
    )
    async with httpx.AsyncClient(base_url=sc.outbound_url, timeout=10) as client:
        for _ in range(2):
            assert (await client.get("/x", headers={"host": "orders"})).status_code == 200
        scraped = await scrape(sc)
        assert orders(scraped, "sidecar_upstream_ejections_total") == 1
        assert scraped["sidecar_circuit_breaker_open", frozenset({("service", "narrow")})] == 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(client.get, "/hold", headers={"host": "narrow"}))
            await holding.wait_held(1)
            scraped = await scrape(sc)  # the one request allowed is in flight: the breaker is full
            assert scraped["sidecar_circuit_breaker_open", frozenset({("service", "narrow")})] == 1
            holding.release.set()
        scraped = await scrape(sc)
        assert scraped["sidecar_circuit_breaker_open", frozenset({("service", "narrow")})] == 0
        counts = [scraped[key] for key in scraped if key[0] == "sidecar_requests_total"]
        assert sum(counts) == 3

    tls_failures = ("sidecar_tls_handshake_failures_total", frozenset({("listener", "inbound")}))
    assert (await scrape(b))[tls_failures] == 0
    async with httpx.AsyncClient() as plain:  # plaintext to a strict mutual-TLS listener
        with contextlib.suppress(httpx.HTTPError):
            await plain.get(f"http://127.0.0.1:{b.inbound}/")
    await wait_for(lambda: _at_least(b, tls_failures, 1))


def narrow(scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str) -> float:
    return scraped[name, frozenset({("service", "narrow")})]


async def narrow_cluster(sc: SidecarHandle) -> Any:
    (entry,) = [s for s in (await get_json(sc, "/clusters"))["services"] if s["name"] == "narrow"]
    return entry


def assert_overflow(r: httpx.Response) -> None:
    assert r.status_code == 503 and r.headers["x-sidecar-reason"] == "overflow"
    assert r.headers["x-sidecar-overloaded"] == "true"


async def test_idle_pooled_connections_at_max_connections_leave_the_breaker_closed(mesh: Mesh) -> None:
    holding = HoldingOrigin()
    sc = await mesh.sidecar(
        services=[service("narrow", await mesh.origin(holding), circuit_breaker={"max_connections": 2})]
    )
    async with httpx.AsyncClient(base_url=sc.outbound_url, headers={"host": "narrow"}, timeout=10) as client:
        held: list[int] = []

        async def hold() -> None:
            held.append((await client.get("/hold")).status_code)

        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(hold)
            await holding.wait_held(2)  # two connections, both carrying a request: a third must open one
            entry = await narrow_cluster(sc)
            assert (entry["open_connections"], entry["breaker_open"]) == (2, True)
            assert narrow(await scrape(sc), "sidecar_circuit_breaker_open") == 1
            assert_overflow(await client.get("/x"))
            holding.release.set()
        assert held == [200, 200]

        async def both_back_in_the_pool() -> bool:
            return (await narrow_cluster(sc))["endpoints"][0]["active_requests"] == 0

        await wait_for(both_back_in_the_pool)
        entry = await narrow_cluster(sc)
        assert (entry["open_connections"], entry["breaker_open"]) == (2, False)  # two idle: nothing refused
        scraped = await scrape(sc)
        assert narrow(scraped, "sidecar_upstream_connections_active") == 2
        assert narrow(scraped, "sidecar_circuit_breaker_open") == 0
        for _ in range(3):
            r = await client.get("/x")
            assert r.status_code == 200 and r.text == "ok"  # served on a pooled connection
        assert (await narrow_cluster(sc))["open_connections"] == 2


async def test_breaker_open_while_a_request_at_max_requests_is_in_flight(mesh: Mesh) -> None:
    holding = HoldingOrigin()
    sc = await mesh.sidecar(
        services=[service("narrow", await mesh.origin(holding), circuit_breaker={"max_requests": 1})]
    )
    async with httpx.AsyncClient(base_url=sc.outbound_url, headers={"host": "narrow"}, timeout=10) as client:
        assert (await client.get("/x")).status_code == 200  # leaves an idle pooled connection
        assert narrow(await scrape(sc), "sidecar_circuit_breaker_open") == 0
        held: list[int] = []

        async def hold() -> None:
            held.append((await client.get("/hold")).status_code)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hold)
            await holding.wait_held(1)
            assert (await narrow_cluster(sc))["breaker_open"] is True
            assert narrow(await scrape(sc), "sidecar_circuit_breaker_open") == 1
            assert_overflow(await client.get("/x"))
            holding.release.set()
        assert held == [200]

        async def closed() -> bool:
            return narrow(await scrape(sc), "sidecar_circuit_breaker_open") == 0

        await wait_for(closed)
        assert (await narrow_cluster(sc))["breaker_open"] is False
        assert (await client.get("/x")).status_code == 200


async def _at_least(sc: SidecarHandle, key: tuple[str, frozenset[tuple[str, str]]], value: float) -> bool:
    return (await scrape(sc))[key] >= value


async def test_clusters_of_a_sidecar_without_inbound_has_no_app(mesh: Mesh) -> None:
    sc = await mesh.sidecar(services=[service("orders", await mesh.origin())])
    doc = await get_json(sc, "/clusters")
    assert doc["app"] is None and [s["name"] for s in doc["services"]] == ["orders"]
