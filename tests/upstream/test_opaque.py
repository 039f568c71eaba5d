"""sidecar.upstream.opaque.connect_opaque: a refused connection takes nothing away for good."""

from __future__ import annotations

import pytest

from sidecar.config.schema import Address
from sidecar.http.errors import Overflow, UpstreamConnectFailure
from sidecar.http.message import ConnectionInfo
from sidecar.upstream.breaker import Thresholds
from sidecar.upstream.opaque import connect_opaque
from sidecar.upstream.registry import Cluster, ClusterSettings

CALLER = ConnectionInfo("10.0.0.9", 40000)


def cluster(**thresholds: int) -> Cluster:
    limits = {"max_connections": 100, "max_pending": 100, "max_requests": 100, "max_retries": 3, **thresholds}
    settings = ClusterSettings(
        connect_timeout=5.0,
        request_timeout=15.0,
        idle_timeout=60.0,
        dns_refresh=5.0,
        targets=((Address("127.0.0.1", 9), 1),),  # discard: nothing listens there
        load_balancer="round_robin",
        protocol="tcp",
        thresholds=Thresholds(**limits),
    )
    return Cluster("cache", settings)


def at_rest(service: Cluster) -> bool:
    (endpoint,) = service.endpoints
    counts = (endpoint.active_requests, service.breaker.requests, service.breaker.pending)
    return counts == (0, 0, 0) and endpoint.pool.open_connections == 0


async def test_a_full_max_pending_refuses_before_anything_is_taken() -> None:
    service = cluster(max_pending=1)
    service.breaker.pending = 1  # another connection's connect is under way
    with pytest.raises(Overflow):
        await connect_opaque(service, CALLER)
    service.breaker.pending = 0  # ... and it is over
    assert at_rest(service)


async def test_a_refused_connect_gives_back_its_places() -> None:
    service = cluster()
    with pytest.raises(UpstreamConnectFailure):
        await connect_opaque(service, CALLER)
    assert at_rest(service)
