"""The inbound listener's stack: calls from other sidecars in, forwarded to the local app.

observe       the request's telemetry record: metrics, access log, the SERVER span
local_reply   local replies (x-sidecar-reason) for every failure below
forwarding    hop-by-hop, x-forwarded-*, x-request-id (x-sidecar-attempt passes unchanged)
call          the local app's pooled connections (closed after app_idle_timeout), request timeout
              capped by a gRPC caller's grpc-timeout; under transparent capture, the app port the
              caller dialed on this pod's address (its original destination) instead of `inbound.app`

The stack is given what it reads, not the runtime: the upstream registry (its `app`), and getters
for what a reload replaces (the telemetry, the allow list, this workload's SPIFFE ID).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..http.errors import NoHealthyUpstream
from ..http.grpc import capped_timeout
from ..http.message import Request, Response
from ..pipeline.authz import authorize, forward_client_cert
from ..pipeline.forwarding import forwarding
from ..pipeline.handler import Handler, compose
from ..pipeline.local_reply import local_reply
from ..pipeline.observe import observe
from ..telemetry.record import INBOUND, Telemetry
from ..upstream.call import call_cluster

if TYPE_CHECKING:
    from ..tls import AllowList
    from ..upstream.registry import UpstreamRegistry


def inbound_handler(
    *,
    registry: UpstreamRegistry,
    telemetry: Callable[[], Telemetry],
    allow: Callable[[], AllowList | None],
    identity: Callable[[], str | None],
) -> Handler:
    async def to_app(request: Request) -> Response:
        app = registry.app
        if app is None:
            raise NoHealthyUpstream(detail="no inbound app configured")
        original = request.conn.original_dst
        if original is not None:  # transparent capture: the app port the caller dialed, on this pod
            app = registry.destination(original[0], original[1], app.settings.protocol)
        return await call_cluster(app, request, capped_timeout(app.settings.request_timeout, request.headers))

    return compose(
        observe(INBOUND, telemetry),
        local_reply,
        authorize(allow),
        forwarding,
        forward_client_cert(identity),
        terminal=to_app,
    )
