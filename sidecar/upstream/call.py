"""One upstream exchange for one service: pick an endpoint, take a pooled connection (or open one
within the connect timeout), send, and wait for the response head within the request timeout.

A request that meets a pooled connection the peer closed just before we reused it (not one response
byte came back) is re-sent once on a fresh connection when it is idempotent and has no body: the
keep-alive race never surfaces as a 502.

A WebSocket upgrade always goes on a fresh, dedicated HTTP/1.1 connection (never a pooled or HTTP/2
one, whatever the service's protocol): after a `101` that connection is the tunnel. The request
timeout covers only the wait for the `101`; the tunnel is bounded by the service's idle timeout.
"""

from __future__ import annotations

import trio

from ..http.errors import UpstreamConnectFailure, UpstreamProtocolError, UpstreamReset, UpstreamTimeout
from ..http.message import Request, Response
from ..transport.h1_client import H1ClientConnection
from ..transport.h2_client import H2ClientConnection
from .pool import ConnectionPool
from .registry import Cluster, ClusterSettings

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
# Failures of a try that got no response head: outlier detection counts them as gateway errors.
NO_RESPONSE = (UpstreamConnectFailure, UpstreamReset, UpstreamProtocolError, UpstreamTimeout)


async def call_cluster(cluster: Cluster, request: Request, timeout: float) -> Response:
    """Send `request` to one endpoint of `cluster`; the response body streams afterwards. The
    outcome (the status, or None without a response) goes to the cluster's outlier detection."""
    endpoint = cluster.pick(request)
    try:
        # A bare CancelScope rather than move_on_after: same effect, without a generator per request.
        with trio.CancelScope(relative_deadline=timeout):
            if request.websocket:
                response = await _upgrade(endpoint.pool, request, cluster.settings)
            else:
                response = await _exchange(endpoint.pool, request, cluster.settings.connect_timeout)
            cluster.record(endpoint, response.status)
            return response
        raise UpstreamTimeout(detail=f"{cluster.name}: no response within {timeout}s")
    except NO_RESPONSE:
        cluster.record(endpoint, None)
        raise


async def _connect(pool: ConnectionPool, connect_timeout: float) -> H1ClientConnection | H2ClientConnection:
    with trio.CancelScope(relative_deadline=connect_timeout):
        return await pool.connect()
    raise UpstreamConnectFailure(detail=f"{pool.endpoint.address}: connect timeout")


async def _connect_dedicated(pool: ConnectionPool, connect_timeout: float) -> H1ClientConnection:
    with trio.CancelScope(relative_deadline=connect_timeout):
        return await pool.connect_dedicated_http1()
    raise UpstreamConnectFailure(detail=f"{pool.endpoint.address}: connect timeout")


async def _upgrade(pool: ConnectionPool, request: Request, settings: ClusterSettings) -> Response:
    conn = await _connect_dedicated(pool, settings.connect_timeout)
    pool.endpoint.active_requests += 1
    return await conn.upgrade(request, settings.websocket_idle_timeout)


async def _exchange(pool: ConnectionPool, request: Request, connect_timeout: float) -> Response:
    conn: H1ClientConnection | H2ClientConnection | None = pool.take_h2() or pool.take_idle()
    if conn is None and pool.h2_connecting is not None:
        conn = await pool.take_h2_waiting()
    reused = conn is not None
    if conn is None:
        conn = await _connect(pool, connect_timeout)
    pool.endpoint.active_requests += 1
    try:
        return await conn.send(request)
    except UpstreamReset as exc:
        # Send once more on another connection when the request provably never reached the app
        # (an HTTP/2 stream refused), or met the keep-alive race (idempotent only); bodies are not
        # replayable yet, so only bodiless requests qualify.
        again = exc.refused or (reused and exc.before_response and request.method in IDEMPOTENT)
        if not (again and request.body.length == 0):
            raise
    conn = pool.take_h2() or await _connect(pool, connect_timeout)
    pool.endpoint.active_requests += 1
    return await conn.send(request)
