"""Active health checks: `GET path` to every endpoint of a service each `interval`.

A check opens a fresh connection through the endpoint's pool (`ConnectionPool.open_stream`): TCP,
then TLS as the service says. For a mesh service that is mutual TLS with this sidecar's workload
certificate, the peer's SPIFFE ID checked as for traffic, so the check goes through the peer
sidecar's inbound listener to its app and the peer's `allow` list applies (a caller it does not allow
gets 403: a failed check). The request is HTTP/1.1 with `Host:` the service's first host name and
`Connection: close`; only the status line and headers are read. It is not counted among the pool's
connections or the endpoint's active requests.

A service with `protocol: tcp` has no HTTP to ask with: its check is a connection made within
`timeout` (`ConnectionPool.open_opaque`: TCP, then TLS with the peer's identity checked and the
tunnel's ALPN selected), closed at once; the app behind a peer sidecar is not reached, as with
Envoy's connect-only TCP checks.

A 2xx answer within `timeout` is a success; any other status, a refused or broken connection, a
malformed answer or no answer in time is a failure. `unhealthy_threshold` consecutive failures make
a healthy endpoint unhealthy, `healthy_threshold` consecutive successes make it healthy again; the
cluster is told (`availability_changed()`, through `CheckedCluster`, what the checker needs of its
cluster), and its balancer leaves out (or takes back) the endpoint. Endpoints start healthy:
a new endpoint takes traffic at once, before its first check. A round checks every endpoint
concurrently, the first round at once; the next starts `interval` after the previous one started
(or when it ended, if it took longer). State lives on each `Endpoint`, so it survives reloads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import trio

from ..http.errors import ProxyError
from ..http.h1 import ProtocolViolation, parse_response_head, request_head_bytes
from ..http.message import Headers
from ..logger import get_logger

if TYPE_CHECKING:
    from ..config.schema import HealthCheck
    from .endpoint import Endpoint
    from .pool import ConnectionPool

log = get_logger("sidecar.upstream")

USER_AGENT = b"sidecar-health-check"
MAX_HEAD = 64 * 1024  # an answer whose head is larger is a failure
_READ_SIZE = 16384
_STREAM_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


def check_request(path: str, host: str) -> bytes:
    """The bytes of one health check request."""
    headers = Headers.of([(b"Host", host.encode()), (b"User-Agent", USER_AGENT), (b"Connection", b"close")])
    return request_head_bytes(b"GET", path.encode("ascii"), headers, 0)


async def probe(pool: ConnectionPool, request: bytes) -> int | None:
    """Send one check over a fresh connection; the answer's status, or None when none came. The
    caller bounds the time."""
    try:
        stream = await pool.open_stream()
    except ProxyError:  # connect failure: refused, TLS handshake, peer identity
        return None
    try:
        await stream.send_all(request)
        return await _read_status(stream)
    except (*_STREAM_ERRORS, ProtocolViolation):
        return None
    finally:
        stream.close_now()


async def probe_connect(pool: ConnectionPool) -> bool:
    """A tcp service's check: whether a connection can be made. The caller bounds the time."""
    try:
        stream = await pool.open_opaque()
    except ProxyError:
        return False
    stream.close_now()
    return True


async def _read_status(stream: trio.abc.Stream) -> int | None:
    """The status of the first final response head on `stream` (1xx heads are skipped)."""
    buf = bytearray()
    while True:
        end = buf.find(b"\r\n\r\n")
        if end > MAX_HEAD or (end < 0 and len(buf) > MAX_HEAD):
            return None
        if end >= 0:
            head = parse_response_head(bytes(buf[:end]))
            del buf[: end + 4]
            if head.status >= 200:
                return head.status
            continue
        data = await stream.receive_some(_READ_SIZE)
        if not data:
            return None
        buf += data


class CheckedCluster(Protocol):
    """What health checks need of their cluster (a `registry.Cluster`)."""

    @property
    def name(self) -> str: ...

    @property
    def endpoints(self) -> Sequence[Endpoint]: ...

    def availability_changed(self) -> None:
        """An endpoint turned healthy or unhealthy: the balancer must be rebuilt."""
        ...


class HealthChecker:
    """Checks the endpoints of one cluster with one policy; replaced when the policy changes."""

    __slots__ = ("cluster", "opaque", "policy", "request")

    def __init__(self, cluster: CheckedCluster, policy: HealthCheck, host: str, *, opaque: bool = False) -> None:
        self.cluster = cluster
        self.policy = policy
        self.request = check_request(policy.path, host)
        self.opaque = opaque  # a tcp service: connect-only checks

    async def run(self) -> None:
        """Check every endpoint each `interval`, for as long as the cluster keeps this policy."""
        while True:
            started = trio.current_time()
            async with trio.open_nursery() as checks:
                for endpoint in self.cluster.endpoints:
                    checks.start_soon(self.check, endpoint)
            await trio.sleep_until(started + self.policy.interval)

    async def check(self, endpoint: Endpoint) -> None:
        status = None
        if self.opaque:
            connected = False
            with trio.move_on_after(self.policy.timeout):
                connected = await probe_connect(endpoint.pool)
            self.observe(endpoint, connected)
            return
        with trio.move_on_after(self.policy.timeout):
            status = await probe(endpoint.pool, self.request)
        self.observe(endpoint, status is not None and 200 <= status < 300, status)

    def observe(self, endpoint: Endpoint, passed: bool, status: int | None = None) -> None:
        """Count one check's outcome; flip the endpoint's health at a threshold."""
        if endpoint.removed:
            return
        policy = self.policy
        if passed:
            endpoint.checks_failed = 0
            endpoint.checks_passed += 1
            if not endpoint.healthy and endpoint.checks_passed >= policy.healthy_threshold:
                endpoint.healthy = True
                log.info("endpoint_healthy", service=self.cluster.name, endpoint=endpoint.address)
                self.cluster.availability_changed()
            return
        endpoint.checks_passed = 0
        endpoint.checks_failed += 1
        if endpoint.healthy and endpoint.checks_failed >= policy.unhealthy_threshold:
            endpoint.healthy = False
            log.warning("endpoint_unhealthy", service=self.cluster.name, endpoint=endpoint.address, status=status)
            self.cluster.availability_changed()
