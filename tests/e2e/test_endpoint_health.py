"""Outlier detection and active health checks end to end: real origins (hypercorn), real sidecars,
mutual TLS between them. What the caller sees, what each replica saw, what the registry says."""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx
import trio

from .conftest import Mesh, free_port, mesh_service, service, spiffe_id


class Replica:
    """An origin replica (ASGI, served by hypercorn) whose answers the test sets: `status` for every
    path but `/healthz`, which answers `healthz` (0: never answer). Counts requests; keeps the health
    checks' headers."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.status = 200
        self.healthz = 200
        self.hits = 0
        self.attempts: list[str] = []  # x-sidecar-attempt of each request but health checks
        self.checks: list[dict[str, str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        while (await receive()).get("more_body"):
            pass
        if scope["path"] == "/healthz":
            self.checks.append({k.decode(): v.decode() for k, v in scope["headers"]})
            status = self.healthz
        else:
            self.hits += 1
            self.attempts.append(dict(scope["headers"]).get(b"x-sidecar-attempt", b"").decode())
            status = self.status
        if not status:
            await trio.sleep_forever()
        body = self.name.encode()
        await send(
            {"type": "http.response.start", "status": status, "headers": [(b"content-length", b"%d" % len(body))]}
        )
        await send({"type": "http.response.body", "body": body})


async def replicas(mesh: Mesh, *names: str) -> tuple[list[Replica], list[int]]:
    apps = [Replica(name) for name in names]
    return apps, [await mesh.origin(app) for app in apps]


async def wait_until(condition: Any, timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.02)


async def served(client: httpx.AsyncClient, count: int = 10) -> Counter[str]:
    """Which replica answered each of `count` requests."""
    return Counter([(await client.get("/work")).text for _ in range(count)])


def endpoint_state(sidecar: Any, service_name: str, port: int) -> Any:
    cluster = sidecar.runtime.registry.clusters[service_name]
    (state,) = [e for e in cluster.statistics().endpoints if e.address == f"127.0.0.1:{port}"]
    return state


# --------------------------------------------------------------------------------------------------
# Outlier detection
# --------------------------------------------------------------------------------------------------


async def test_a_replica_answering_500_is_ejected_while_the_other_serves_and_returns_later(mesh: Mesh) -> None:
    (sick, well), (sick_port, well_port) = await replicas(mesh, "sick", "well")
    sick.status = 500
    outlier = {"consecutive_5xx": 3, "interval": "50ms", "base_ejection": "1s"}
    a = await mesh.sidecar(
        services=[service("orders", sick_port, well_port, load_balancer="round_robin", outlier_detection=outlier)]
    )
    cluster = a.runtime.registry.clusters["orders"]
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}) as client:
        answers = [(r.status_code, r.text) for r in [await client.get("/work") for _ in range(20)]]
        assert answers.count((500, "sick")) == 3  # the threshold; then the caller sees only the healthy one
        assert answers[6:] == [(200, "well")] * 14
        assert sick.hits == 3 and well.hits == 17
        state = endpoint_state(a, "orders", sick_port)
        assert (state.ejected, state.healthy, state.times_ejected) == (True, True, 1)
        assert cluster.ejections == 1
        ejected_until = cluster.endpoints[0].ejected_until

        # After base_ejection (and the next review) it takes traffic again: still failing, it is
        # ejected a second time, for twice as long.
        while sick.hits == 3:
            before = trio.current_time()
            assert (await client.get("/work")).status_code in (200, 500)
            assert sick.hits == 3 or before >= ejected_until - 0.05
            await trio.sleep(0.05)
        with trio.fail_after(5):
            while cluster.ejections < 2:  # two more 500s
                await client.get("/work")
        assert sick.hits == 6
        assert endpoint_state(a, "orders", sick_port).times_ejected == 2
        second = cluster.endpoints[0].ejected_until - trio.current_time()
        assert 1.0 < second <= 2.0  # twice base_ejection, less the time since

        sick.status = 200  # recovered: back after its ejection, and it stays
        await wait_until(lambda: not endpoint_state(a, "orders", sick_port).ejected, timeout=4)
        assert await served(client, 20) == {"sick": 10, "well": 10}


async def test_a_replica_refusing_connections_is_ejected(mesh: Mesh) -> None:
    (well,), (well_port,) = await replicas(mesh, "well")
    closed_port = free_port()  # nothing listens: every connection is refused
    outlier = {"consecutive_gateway_errors": 2, "base_ejection": "30s"}
    a = await mesh.sidecar(
        services=[service("orders", closed_port, well_port, load_balancer="round_robin", outlier_detection=outlier)]
    )
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}) as client:
        answers = [await client.get("/work") for _ in range(12)]
        # The first request met the refusing replica and was retried on the other; for a second after
        # that refusal, picks pass the replica over, so the next requests go straight to the healthy one.
        assert well.attempts == ["2"] + ["1"] * 11
        assert not endpoint_state(a, "orders", closed_port).ejected  # one failure: not ejected yet
        await trio.sleep(1.1)
        for _ in range(4):  # then it is tried again (round robin's turn), refuses again: ejected
            answers.append(await client.get("/work"))
            if well.attempts[-1] == "2":
                break
    assert [(r.status_code, r.text) for r in answers] == [(200, "well")] * len(answers)  # all retried
    assert well.attempts.count("2") == 2
    assert endpoint_state(a, "orders", closed_port).ejected


async def test_replies_of_the_peer_sidecar_count_against_its_endpoint(mesh: Mesh) -> None:
    # B's app is down: B answers 502 upstream_connect_failure itself. A counts it against B.
    (well,), (well_port,) = await replicas(mesh, "well")
    b = await mesh.sidecar(service="orders", inbound_app=free_port())
    c = await mesh.sidecar(service="orders", inbound_app=well_port)
    outlier = {"consecutive_gateway_errors": 2}
    a = await mesh.sidecar(
        services=[mesh_service("orders", b, c, load_balancer="round_robin", outlier_detection=outlier)]
    )
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}) as client:
        answers = [await client.get("/work") for _ in range(10)]
        assert [r.text for r in answers] == ["well"] * 10  # B's 502s are gateway errors: retried on C
        assert well.attempts == ["2", "2"] + ["1"] * 8
        assert endpoint_state(a, "orders", b.inbound).ejected
        without_retries = await mesh.sidecar(
            services=[mesh_service("orders", b, load_balancer="round_robin", retries={"attempts": 0})]
        )
        r = await client.get(f"{without_retries.outbound_url}/work")
    assert (r.status_code, r.headers["x-sidecar-reason"]) == (502, "upstream_connect_failure")  # made by B


async def test_a_try_cut_by_the_request_timeout_counts_against_its_endpoint(mesh: Mesh) -> None:
    (stuck, well), ports = await replicas(mesh, "stuck", "well")
    stuck.status = 0  # never answers
    outlier = {"consecutive_gateway_errors": 1}
    a = await mesh.sidecar(
        services=[
            service(
                "orders",
                *ports,
                load_balancer="round_robin",
                timeouts={"request": "300ms"},  # no per_try: the request timeout cuts the only try
                outlier_detection=outlier,
            )
        ]
    )
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}) as client:
        answers = [await client.get("/work") for _ in range(4)]
    assert [r.status_code for r in answers].count(504) == 1
    assert endpoint_state(a, "orders", ports[0]).ejected
    assert [r.text for r in answers if r.status_code == 200] == ["well"] * 3
    assert (stuck.hits, well.hits) == (1, 3)


# --------------------------------------------------------------------------------------------------
# Active health checks
# --------------------------------------------------------------------------------------------------

FAST_CHECKS = {"path": "/healthz", "interval": "100ms", "timeout": "500ms", "unhealthy_threshold": 2}


async def test_traffic_leaves_a_replica_whose_healthz_fails_and_comes_back(mesh: Mesh) -> None:
    (flaky, steady), (flaky_port, steady_port) = await replicas(mesh, "flaky", "steady")
    a = await mesh.sidecar(
        services=[service("orders", flaky_port, steady_port, load_balancer="round_robin", health_check=FAST_CHECKS)]
    )
    await wait_until(lambda: len(flaky.checks) >= 2)
    assert flaky.checks[0]["host"] == "orders"
    assert flaky.checks[0]["user-agent"] == "sidecar-health-check"
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}) as client:
        assert await served(client) == {"flaky": 5, "steady": 5}

        flaky.healthz = 500
        await wait_until(lambda: not endpoint_state(a, "orders", flaky_port).healthy)
        hits = flaky.hits
        assert await served(client) == {"steady": 10}
        assert flaky.hits == hits and steady.hits == 15
        assert endpoint_state(a, "orders", flaky_port).ejected is False

        flaky.healthz = 200
        await wait_until(lambda: endpoint_state(a, "orders", flaky_port).healthy)
        assert await served(client) == {"flaky": 5, "steady": 5}


async def test_health_checks_go_through_the_peer_sidecar_over_mutual_tls(mesh: Mesh, hop: str) -> None:
    """Health checks go through the peer sidecar to its app, over mTLS with this sidecar's identity, on
    either hop; when no endpoint is healthy the reply is 503 `no_healthy_upstream`."""
    (app,), (app_port,) = await replicas(mesh, "orders-app")
    b = await mesh.sidecar(service="orders", inbound_app=app_port, inbound={"allow": [spiffe_id("frontend")]})
    a = await mesh.sidecar(
        service="frontend", services=[mesh_service("orders", b, protocol=hop, health_check=FAST_CHECKS)]
    )
    await wait_until(lambda: len(app.checks) >= 2)
    check = app.checks[0]
    assert check["host"] == "orders"
    assert check["x-forwarded-proto"] == "https"  # it came to B over TLS
    assert f"URI={spiffe_id('frontend')}" in check["x-forwarded-client-cert"]  # with A's identity
    assert endpoint_state(a, "orders", b.inbound).healthy

    app.healthz = 503  # B passes the app's answer back: A marks B's endpoint unhealthy
    await wait_until(lambda: not endpoint_state(a, "orders", b.inbound).healthy)
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}) as client:
        started = trio.current_time()
        r = await client.get("/work")
        assert trio.current_time() - started < 0.5  # at once, nothing waited for
        assert (r.status_code, r.headers["x-sidecar-reason"]) == (503, "no_healthy_upstream")
        assert app.hits == 0
        app.healthz = 200
        await wait_until(lambda: endpoint_state(a, "orders", b.inbound).healthy)
        r = await client.get("/work")
        assert (r.status_code, r.text) == (200, "orders-app")


async def test_a_caller_the_peer_does_not_allow_fails_its_checks(mesh: Mesh) -> None:
    (app,), (app_port,) = await replicas(mesh, "orders-app")
    b = await mesh.sidecar(service="orders", inbound_app=app_port, inbound={"allow": [spiffe_id("billing")]})
    a = await mesh.sidecar(service="frontend", services=[mesh_service("orders", b, health_check=FAST_CHECKS)])
    await wait_until(lambda: not endpoint_state(a, "orders", b.inbound).healthy)  # B answers 403
    assert app.checks == []  # refused at B's inbound, never reached the app
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}) as client:
        r = await client.get("/work")
    assert (r.status_code, r.headers["x-sidecar-reason"]) == (503, "no_healthy_upstream")


async def test_all_endpoints_down_is_503_no_healthy_upstream_at_once(mesh: Mesh) -> None:
    apps, ports = await replicas(mesh, "one", "two")
    for app in apps:
        app.healthz = 500
    a = await mesh.sidecar(services=[service("orders", *ports, health_check=FAST_CHECKS)])
    await wait_until(lambda: not any(e.available for e in a.runtime.registry.clusters["orders"].endpoints))
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}) as client:
        for _ in range(5):
            started = trio.current_time()
            r = await client.get("/work")
            assert trio.current_time() - started < 0.5
            assert (r.status_code, r.headers["x-sidecar-reason"]) == (503, "no_healthy_upstream")
    assert [app.hits for app in apps] == [0, 0]
