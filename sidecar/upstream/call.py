"""One upstream call for one service: breakers, then tries until one answers or the policy says stop.

Each try picks an available endpoint (a retry another one, when there is one), takes a pooled
connection (or opens one within the connect timeout), sends, and waits for the response head within
the per-try timeout, then reports its outcome to the service's outlier detection;
`timeouts.request` bounds all tries together, backoff included. What may be retried, and how often,
is `retry.RetryPolicy`'s decision, within the service's retry budget and `max_retries`. A retried
request's body is replayed from `retry.ReplayBuffer`. Nothing is retried once the response is handed
on: the caller gets the first response the policy accepts, and its body streams afterwards.

A request that meets a pooled connection the peer closed just before we reused it (not one response
byte came back) is re-sent once on a fresh connection when it is idempotent and has no body: the
keep-alive race never surfaces as a 502, whatever the retry policy.

A WebSocket upgrade always goes on a fresh, dedicated HTTP/1.1 connection (never a pooled or HTTP/2
one, whatever the service's protocol): after a `101` that connection is the tunnel. The request
timeout covers only the wait for the `101`; the tunnel is bounded by the service's idle timeout.
"""

from __future__ import annotations

import trio

from ..http.errors import ProxyError, UpstreamConnectFailure, UpstreamProtocolError, UpstreamReset, UpstreamTimeout
from ..http.message import EMPTY_BODY, Request, Response
from ..transport.h1_client import H1ClientConnection
from ..transport.h2_client import H2ClientConnection
from .endpoint import Endpoint
from .pool import ConnectionPool
from .registry import Cluster, ClusterSettings
from .retry import IDEMPOTENT, ReplayBuffer, ReplayView, RetryPolicy, TryTimedOut

CONNECT_FAILURE_PAUSE = 1.0  # seconds an endpoint that failed to connect is passed over, if another is up

# Failures of a try that got no response head: outlier detection counts them as gateway errors.
NO_RESPONSE = (UpstreamConnectFailure, UpstreamReset, UpstreamProtocolError, UpstreamTimeout, TryTimedOut)


async def call_cluster(cluster: Cluster, request: Request, timeout: float) -> Response:
    """Send `request` to `cluster`, retrying as its policy allows; the response body streams afterwards."""
    cluster.breaker.check_requests(cluster.name)
    deadline = trio.current_time() + timeout
    policy = cluster.settings.retry
    if policy is None or request.websocket:
        return await _try(cluster, cluster.pick(request), request, deadline)
    return await _tries(cluster, request, policy, deadline)


async def _tries(cluster: Cluster, request: Request, policy: RetryPolicy, deadline: float) -> Response:
    original = request.body
    replay = ReplayBuffer(original, policy.buffer) if original is not EMPTY_BODY else None
    method = request.method
    endpoint = cluster.pick(request)
    attempt = 1
    try:
        while True:
            view: ReplayView | None = None
            if replay is not None:
                view = replay.view()
                request.body = view
            failure: ProxyError | None = None
            response: Response | None = None
            try:
                response = await _try(cluster, endpoint, request, deadline, attempt)
            except ProxyError as error:
                failure = error
            if response is not None:
                if not policy.retries_status(method, response.status) or not _may_try_again(
                    cluster, policy, attempt, replay
                ):
                    return response
                with trio.CancelScope(deadline=deadline):
                    await response.body.aclose()  # not handed on: this answer is replaced by a retry's
                if request.observer is not None:
                    request.observer.try_abandoned(response.status)
            elif failure is not None and not (
                policy.retries_error(method, failure) and _may_try_again(cluster, policy, attempt, replay)
            ):
                raise failure
            if view is not None:
                view.abandon()  # the failed try's body pump stops
            await trio.sleep_until(min(trio.current_time() + policy.backoff(attempt), deadline))
            if trio.current_time() >= deadline:  # the request timeout ran out, in the backoff or the try
                raise _request_timeout(cluster)
            endpoint = cluster.pick(request, avoid=endpoint)  # another one when one is available
            attempt += 1
            cluster.retries += 1
            request.headers.set(b"x-sidecar-attempt", str(attempt).encode())
    finally:
        request.body = original  # the downstream server judges what was read of the real body


def _may_try_again(cluster: Cluster, policy: RetryPolicy, attempt: int, replay: ReplayBuffer | None) -> bool:
    """Whether another try may follow: attempts left, the body replayable, `max_retries` not full and
    the budget willing (both apply: docs behaviour/resilience.md)."""
    if attempt > policy.attempts or (replay is not None and not replay.replayable):
        return False
    breaker = cluster.breaker
    if not breaker.retry_allowed():
        return False
    return cluster.budget.allows(policy, breaker.requests + 1, trio.current_time())  # + this request


def _request_timeout(cluster: Cluster) -> UpstreamTimeout:
    return UpstreamTimeout(detail=f"{cluster.name}: no response before the request timeout ran out")


async def _try(cluster: Cluster, endpoint: Endpoint, request: Request, deadline: float, attempt: int = 1) -> Response:
    """Try number `attempt`, which must have its response head by `deadline` (the request
    timeout's); a retry counts in the budget and `max_retries` meanwhile. Its outcome goes to
    outlier detection: the status, or None when no response head came (a caller that went away is
    not counted), and to the request's telemetry record."""
    breaker = cluster.breaker
    budget = cluster.budget
    retry = attempt > 1
    if retry:
        breaker.retries += 1
        budget.started()
    observer = request.observer
    if observer is not None:
        observer.try_started(cluster, endpoint, attempt)
    try:
        response = await _send(cluster, endpoint, request, deadline)
    except ProxyError as error:
        if isinstance(error, NO_RESPONSE):  # a full breaker, say, is no fault of the endpoint
            cluster.record(endpoint, None)
        if observer is not None:
            observer.try_failed(error)
        raise
    finally:
        if retry:
            breaker.retries -= 1
            budget.finished()
    cluster.record(endpoint, response.status)
    return response


async def _send(cluster: Cluster, endpoint: Endpoint, request: Request, deadline: float) -> Response:
    """The exchange of one try (a WebSocket upgrade, or a request) in one cancel scope, whose deadline
    is the earlier of the per-try timeout's and the request timeout's: a per-try timeout is
    `TryTimedOut` (another try may follow), the request timeout `UpstreamTimeout` (the last word).
    One scope rather than two nested ones: each costs a few microseconds a request."""
    per_try = None if request.websocket else cluster.settings.per_try_timeout
    try_deadline = deadline if per_try is None else min(deadline, trio.current_time() + per_try)
    with trio.CancelScope(deadline=try_deadline):
        if request.websocket:
            return await _upgrade(endpoint, request, cluster.settings)
        return await _exchange(cluster, endpoint, request)
    if try_deadline < deadline:
        raise TryTimedOut(detail=f"{cluster.name}: {endpoint.address} gave no response within {per_try}s")
    raise _request_timeout(cluster)


async def _connect(cluster: Cluster, endpoint: Endpoint) -> H1ClientConnection | H2ClientConnection:
    breaker = cluster.breaker
    breaker.check_connections(cluster.name, cluster.open_connections)
    breaker.open_pending(cluster.name)
    try:
        with trio.CancelScope(relative_deadline=cluster.settings.connect_timeout):
            conn = await endpoint.pool.connect()
            endpoint.refused_until = 0.0
            return conn
        raise UpstreamConnectFailure(detail=f"{endpoint.address}: connect timeout")
    except UpstreamConnectFailure:
        # Fail fast: the next picks pass this endpoint over for a moment (not an ejection; outlier
        # detection counts the failure as usual), so a replica that just died costs few retries.
        endpoint.refused_until = trio.current_time() + CONNECT_FAILURE_PAUSE
        raise
    finally:
        breaker.close_pending()


async def _shared_h2(cluster: Cluster, pool: ConnectionPool) -> H2ClientConnection | None:
    """Wait for the HTTP/2 connection being opened to the endpoint (a pending request meanwhile)."""
    breaker = cluster.breaker
    breaker.open_pending(cluster.name)
    try:
        return await pool.take_h2_waiting()
    finally:
        breaker.close_pending()


async def _connect_dedicated(pool: ConnectionPool, connect_timeout: float) -> H1ClientConnection:
    with trio.CancelScope(relative_deadline=connect_timeout):
        return await pool.connect_dedicated_http1()
    raise UpstreamConnectFailure(detail=f"{pool.endpoint.address}: connect timeout")


async def _upgrade(endpoint: Endpoint, request: Request, settings: ClusterSettings) -> Response:
    conn = await _connect_dedicated(endpoint.pool, settings.connect_timeout)
    endpoint.started()
    return await conn.upgrade(request, settings.websocket_idle_timeout)


async def _exchange(cluster: Cluster, endpoint: Endpoint, request: Request) -> Response:
    pool = endpoint.pool
    conn: H1ClientConnection | H2ClientConnection | None = pool.take_h2() or pool.take_idle()
    if conn is None and pool.h2_connecting is not None:
        conn = await _shared_h2(cluster, pool)
    reused = conn is not None
    if conn is None:
        conn = await _connect(cluster, endpoint)
    endpoint.started()
    try:
        return await conn.send(request)
    except UpstreamReset as exc:
        # Sent once more at once, outside the retry policy, when the request provably never reached the app
        # (an HTTP/2 stream refused or past a GOAWAY), or met the keep-alive race (a reused connection the
        # peer had closed, not one response byte back; idempotent only: a closed keep-alive connection never
        # shows up as a 502). Bodiless requests only; a body is the retry policy's to replay.
        again = exc.refused or (reused and exc.before_response and request.method in IDEMPOTENT)
        if not (again and request.body.length == 0):
            raise
    conn = pool.take_h2() or await _connect(cluster, endpoint)
    endpoint.started()
    return await conn.send(request)
