"""The outbound listener's stack: the local app's plain HTTP in, routed to upstream services.

observe       the request's telemetry record: metrics, access log, a CLIENT span per try
local_reply   SPEC §5 replies for every failure below
forwarding    hop-by-hop, x-forwarded-*, x-request-id
route         host (+ path, headers) -> service, weighted split, route timeout
call          endpoint pick, pooled connection, request timeout (capped by a gRPC caller's grpc-timeout)

The stack is given what it reads, not the runtime: the upstream registry (its clusters), and getters
for what a reload replaces (the router, the telemetry).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..http.errors import NoRoute
from ..http.grpc import capped_timeout
from ..http.message import Request, Response
from ..pipeline.forwarding import forwarding
from ..pipeline.handler import Handler, compose
from ..pipeline.local_reply import local_reply
from ..pipeline.observe import observe
from ..telemetry.record import OUTBOUND, Telemetry
from ..upstream.call import call_cluster

if TYPE_CHECKING:
    from ..pipeline.route import Router
    from ..upstream.registry import UpstreamRegistry

FIRST_ATTEMPT = b"1"


def outbound_handler(
    *, router: Callable[[], Router], registry: UpstreamRegistry, telemetry: Callable[[], Telemetry]
) -> Handler:
    async def route_and_call(request: Request) -> Response:
        destination = router().destination(request)
        if request.observer is not None:
            request.observer.service = destination.service
        cluster = registry.clusters.get(destination.service)
        if cluster is None:
            raise NoRoute(detail=f"service {destination.service!r} is not configured")
        request.headers.set(b"x-sidecar-attempt", FIRST_ATTEMPT)
        timeout = capped_timeout(destination.timeout or cluster.settings.request_timeout, request.headers)
        return await call_cluster(cluster, request, timeout)

    return compose(observe(OUTBOUND, telemetry), local_reply, forwarding, terminal=route_and_call)
