"""One opaque TCP connection's way to a service: breakers, an endpoint picked per connection, the
connection opened within the connect timeout, and the outcome told to outlier detection.

What applies to TCP of a service's policies, and how:
- `circuit_breaker.max_connections` counts the service's open connections (TCP ones among them);
  each open TCP connection also counts as one exchange in flight (`max_requests`, and the
  endpoint's `active_requests` that `least_request` balances on). A full one refuses the connection
  (reason `overflow`).
- The balancer picks an endpoint per connection; `ring_hash` hashes the caller's IP (`source_ip`,
  the only key a TCP connection has).
- `timeouts.connect` bounds TCP and TLS together; a connect that fails or runs out counts as a
  gateway error for outlier detection, a connection made as a success; the endpoint is passed over
  for a moment, as for HTTP.
- With `connect-failure` among `retries.on`, a failed connect is tried again on another endpoint,
  up to `retries.attempts` more times (nothing has been sent yet, so this is always safe).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import trio

from ..http.errors import UpstreamConnectFailure
from ..transport.tcp import TcpStream
from ..transport.tls_socket import TlsStream
from .call import CONNECT_FAILURE_PAUSE

if TYPE_CHECKING:
    from ..http.message import ConnectionInfo, Request
    from .endpoint import Endpoint
    from .registry import Cluster

CONNECTED = 200  # what a connection made counts as for outlier detection: a success


class _ByCaller:
    """What the balancers read of a request, for a TCP connection: its caller (ring_hash source_ip)."""

    __slots__ = ("conn",)

    def __init__(self, conn: ConnectionInfo) -> None:
        self.conn = conn


async def connect_opaque(cluster: Cluster, conn: ConnectionInfo) -> tuple[Endpoint, TcpStream | TlsStream]:
    """An endpoint of `cluster` and a fresh connection to it, counted as one exchange in flight
    (`endpoint.started()`) and one open connection from before its connect starts; the caller ends
    it with `release()`. Raises the `ProxyError` of the
    last failure (`overflow`, `no_healthy_upstream`, `upstream_connect_failure`)."""
    breaker = cluster.breaker
    policy = cluster.settings.retry
    tries = 1 + (policy.attempts if policy is not None and "connect-failure" in policy.conditions else 0)
    key = cast("Request", _ByCaller(conn))
    avoid: Endpoint | None = None
    failure: UpstreamConnectFailure | None = None
    for _ in range(tries):
        # Checked and taken with no await between: connections opened at the same moment each see
        # the others' places already taken (the connect itself is what takes time).
        breaker.check_requests(cluster.name)
        breaker.check_connections(cluster.name, cluster.open_connections)
        endpoint = cluster.pick(key, avoid=avoid)
        breaker.open_pending(cluster.name)  # may refuse (overflow): before anything is taken
        endpoint.started()
        endpoint.pool.opaque_opening()
        try:
            stream = await _open(cluster, endpoint)
        except BaseException as error:
            endpoint.pool.opaque_closed()
            endpoint.finished()
            if not isinstance(error, UpstreamConnectFailure):
                raise
            endpoint.refused_until = trio.current_time() + CONNECT_FAILURE_PAUSE
            cluster.record(endpoint, None)
            failure, avoid = error, endpoint
            continue
        finally:
            breaker.close_pending()
        endpoint.refused_until = 0.0
        cluster.record(endpoint, CONNECTED)
        return endpoint, stream
    assert failure is not None
    raise failure


async def _open(cluster: Cluster, endpoint: Endpoint) -> TcpStream | TlsStream:
    with trio.CancelScope(relative_deadline=cluster.settings.connect_timeout):
        return await endpoint.pool.open_opaque()
    raise UpstreamConnectFailure(detail=f"{endpoint.address}: connect timeout")


def release(endpoint: Endpoint, stream: Any) -> None:
    """The connection from `connect_opaque` is over: close it and count it out."""
    endpoint.pool.opaque_closed(stream)
    stream.close_now()
    endpoint.finished()
