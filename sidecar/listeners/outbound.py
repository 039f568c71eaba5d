"""The outbound listener's stack: the local app's plain HTTP in, routed to upstream services.

observe       the request's telemetry record: metrics, access log, a CLIENT span per try
local_reply   local replies (x-sidecar-reason) for every failure below
forwarding    hop-by-hop, x-forwarded-*, x-request-id
route         host (+ path, headers) -> service, weighted split, route timeout
call          endpoint pick, pooled connection, request timeout (capped by a gRPC caller's grpc-timeout)

Under transparent capture a request whose host no Service or Route names is routed by the address
the app dialed (`ConnectionInfo.original_dst`): the Service with that endpoint or virtual address,
else `capture.outbound_policy` decides (allow_any: sent on to that address as it is, as service
`passthrough`; registry_only: 404 no_route).

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
    *,
    router: Callable[[], Router],
    registry: UpstreamRegistry,
    telemetry: Callable[[], Telemetry],
    outbound_policy: Callable[[], str] = lambda: "allow_any",
) -> Handler:
    async def route_and_call(request: Request) -> Response:
        try:
            destination = router().destination(request)
        except NoRoute:
            original = request.conn.original_dst
            if original is None:
                raise
            return await by_original_destination(request, original)
        if request.observer is not None:
            request.observer.service = destination.service
        cluster = registry.clusters.get(destination.service)
        if cluster is None:
            raise NoRoute(detail=f"service {destination.service!r} is not configured")
        request.headers.set(b"x-sidecar-attempt", FIRST_ATTEMPT)
        timeout = capped_timeout(destination.timeout or cluster.settings.request_timeout, request.headers)
        return await call_cluster(cluster, request, timeout)

    async def by_original_destination(request: Request, original: tuple[str, int]) -> Response:
        """Transparent capture, no Service by host: the Service the app dialed by address, else the
        outbound policy (allow_any: to that address as it is; registry_only: 404 no_route)."""
        cluster = registry.match_destination(*original)
        if cluster is not None and cluster.settings.protocol == "tcp":  # a config swapped since the connection came
            raise NoRoute(detail=f"{original[0]}:{original[1]} is an opaque TCP service")
        if cluster is None:
            if outbound_policy() != "allow_any":
                raise NoRoute(detail=f"host {request.host!r} at {original[0]}:{original[1]} (registry_only)")
            protocol = "http2" if request.http_version == "2" else "http1"
            cluster = registry.destination(original[0], original[1], protocol)
        if request.observer is not None:
            request.observer.service = cluster.name
        request.headers.set(b"x-sidecar-attempt", FIRST_ATTEMPT)
        return await call_cluster(cluster, request, capped_timeout(cluster.settings.request_timeout, request.headers))

    return compose(observe(OUTBOUND, telemetry), local_reply, forwarding, terminal=route_and_call)
