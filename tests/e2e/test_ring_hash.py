"""ring_hash end to end: requests with the same key land on the same replica, keys spread over the
replicas, and a replica that fails its health checks hands its keys to the others and takes them back."""

from __future__ import annotations

from collections import defaultdict

import httpx

from .conftest import Mesh, service
from .test_endpoint_health import FAST_CHECKS, endpoint_state, replicas, wait_until


async def answered_by(client: httpx.AsyncClient, **headers: str) -> str:
    r = await client.get("/work", headers=headers)
    assert r.status_code == 200
    return r.text


async def test_a_header_keeps_its_requests_on_one_replica(mesh: Mesh) -> None:
    apps, ports = await replicas(mesh, "r1", "r2", "r3")
    a = await mesh.sidecar(
        services=[service("orders", *ports, load_balancer="ring_hash", hash_on={"header": "x-user"})]
    )
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}) as client:
        homes: dict[str, set[str]] = defaultdict(set)
        for _ in range(3):
            for user in range(30):
                homes[f"user-{user}"].add(await answered_by(client, **{"x-user": f"user-{user}"}))
        assert all(len(replica) == 1 for replica in homes.values())  # every key on one replica
        assert len(set().union(*homes.values())) == 3  # and the keys spread over all three
        without_key = {await answered_by(client) for _ in range(30)}
        assert len(without_key) >= 2  # no key: a random replica each time
    assert sum(app.hits for app in apps) == 120


async def test_a_cookie_key_and_an_unhealthy_replica(mesh: Mesh) -> None:
    apps, ports = await replicas(mesh, "r1", "r2", "r3")
    a = await mesh.sidecar(
        services=[
            service(
                "orders", *ports, load_balancer="ring_hash", hash_on={"cookie": "session"}, health_check=FAST_CHECKS
            )
        ]
    )
    async with httpx.AsyncClient(base_url=a.outbound_url, headers={"host": "orders"}) as client:
        sessions = [f"s{i}" for i in range(30)]
        before = {s: await answered_by(client, cookie=f"theme=dark; session={s}") for s in sessions}
        sick = next(app for app in apps if app.name in before.values())
        sick.healthz = 500
        await wait_until(lambda: not endpoint_state(a, "orders", ports[apps.index(sick)]).healthy)
        during = {s: await answered_by(client, cookie=f"session={s}") for s in sessions}
        for s in sessions:
            if before[s] == sick.name:
                assert during[s] != sick.name  # moved away
            else:
                assert during[s] == before[s]  # nobody else's keys move
        sick.healthz = 200
        await wait_until(lambda: endpoint_state(a, "orders", ports[apps.index(sick)]).healthy)
        assert {s: await answered_by(client, cookie=f"session={s}") for s in sessions} == before
