"""sidecar.upstream.breaker: each threshold answers 503 overflow at once when full, and frees up; the
breaker shows open (`sidecar_circuit_breaker_open`, `/clusters` `breaker_open`) exactly while a new
request would get that 503, as `call_cluster` decides it from the service's pools."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing

from sidecar.config.schema import CircuitBreaker
from sidecar.http.errors import Overflow, ProxyError
from sidecar.http.message import Headers, Request, Response
from sidecar.upstream.breaker import Breaker, Thresholds
from sidecar.upstream.call import call_cluster
from sidecar.upstream.pool import CHECK_AFTER_IDLE, ConnectionPool
from sidecar.upstream.registry import Cluster

from .clusters import make_cluster, request


def breaker(**fields: int) -> Breaker:
    return Breaker(Thresholds.from_config(CircuitBreaker(**fields)))


def test_max_requests() -> None:
    b = breaker(max_requests=2)
    b.check_requests("orders")
    b.requests = 2
    with pytest.raises(Overflow) as caught:
        b.check_requests("orders")
    assert caught.value.status == 503 and caught.value.reason == "overflow"
    assert "max_requests" in (caught.value.detail or "")
    assert b.is_open(open_connections=0, must_connect=True)
    b.requests = 1
    b.check_requests("orders")
    assert not b.is_open(open_connections=0, must_connect=True)


def test_max_pending() -> None:
    b = breaker(max_pending=1)
    b.open_pending("orders")
    with pytest.raises(Overflow):
        b.open_pending("orders")
    assert b.is_open(open_connections=0, must_connect=False)
    b.close_pending()
    assert not b.is_open(open_connections=0, must_connect=False)
    b.open_pending("orders")


def test_max_connections_and_max_retries() -> None:
    b = breaker(max_connections=3, max_retries=1)
    b.check_connections("orders", 2)
    with pytest.raises(Overflow):
        b.check_connections("orders", 3)
    assert b.is_open(open_connections=3, must_connect=True)
    assert b.retry_allowed()
    b.retries = 1
    assert not b.retry_allowed() and b.is_open(open_connections=0, must_connect=False)


def test_max_connections_full_is_open_only_when_a_new_request_must_connect() -> None:
    b = breaker(max_connections=2)
    assert b.is_open(open_connections=2, must_connect=True)
    assert not b.is_open(open_connections=2, must_connect=False)  # e.g. two idle pooled connections
    assert not b.is_open(open_connections=1, must_connect=True)


def test_max_retries_zero_forbids_retries_without_showing_an_open_breaker() -> None:
    b = breaker(max_retries=0)
    assert not b.retry_allowed()
    assert not b.is_open(open_connections=0, must_connect=True)


# --------------------------------------------------------------------------------------------------
# The gauge and the real refusal agree: a cluster's `breaker_open` is true exactly when call_cluster
# answers 503 overflow, whatever its pools hold.
# --------------------------------------------------------------------------------------------------


class FakeH1:
    """Stands in for an H1ClientConnection in the pool: answers 200 at once."""

    def __init__(self, *, peer_gone: bool = False) -> None:
        self.idle_since = 0.0
        self.peer_gone = peer_gone
        self.closed = False

    async def send(self, request: Request) -> Response:
        return Response(200, Headers.of([]))

    def peer_closed(self) -> bool:
        return self.peer_gone

    def close(self) -> None:
        self.closed = True


class FakeH2(FakeH1):
    """Stands in for a shared H2ClientConnection with `capacity` free stream slots."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[ConnectionPool]:
    """ConnectionPool.connect opens a FakeH1 (counted, as the real one counts it); the pools it did
    so for, in order."""
    opened: list[ConnectionPool] = []

    async def connect(pool: ConnectionPool) -> FakeH1:
        pool.open_connections += 1
        opened.append(pool)
        return FakeH1()

    monkeypatch.setattr(ConnectionPool, "connect", connect)
    return opened


def limited(endpoints: int = 1, **thresholds: int) -> Cluster:
    return make_cluster(endpoints, thresholds=Thresholds.from_config(CircuitBreaker(**thresholds)))


async def outcome(cluster: Cluster) -> str:
    """What a new request gets: its status, or the reason of the sidecar's own reply."""
    try:
        response = await call_cluster(cluster, request(), 15.0)
    except ProxyError as error:
        return error.reason
    return str(response.status)


def busy(count: int) -> Callable[[ConnectionPool], None]:
    """`count` HTTP/1.1 connections carrying an exchange (open, not in the idle list)."""

    def fill(pool: ConnectionPool) -> None:
        pool.open_connections += count

    return fill


def idle(*conns: FakeH1) -> Callable[[ConnectionPool], None]:
    def fill(pool: ConnectionPool) -> None:
        pool.open_connections += len(conns)
        pool.idle.extend(conns)  # type: ignore[arg-type]

    return fill


def h2(*free_slots: int) -> Callable[[ConnectionPool], None]:
    def fill(pool: ConnectionPool) -> None:
        pool.open_connections += len(free_slots)
        pool.h2_conns.extend(FakeH2(free) for free in free_slots)  # type: ignore[misc]

    return fill


@pytest.mark.parametrize(
    ("fills", "expected"),
    [
        pytest.param([], "200", id="nothing open"),
        pytest.param([busy(1)], "200", id="one of two open, busy"),
        pytest.param([busy(2)], "overflow", id="two of two open, busy"),
        pytest.param([busy(1), idle(FakeH1())], "200", id="two of two open, one idle"),
        pytest.param([idle(FakeH1(), FakeH1())], "200", id="two of two open, both idle"),
        # take_idle closes it, which frees its place: the request opens another
        pytest.param([busy(1), idle(FakeH1(peer_gone=True))], "200", id="two of two open, the idle one closed"),
        pytest.param([h2(0, 1)], "200", id="two HTTP/2 connections, one stream slot free"),
        pytest.param([h2(0, 0)], "overflow", id="two HTTP/2 connections, every slot taken"),
        pytest.param([busy(1), h2(0)], "overflow", id="one busy, one full HTTP/2 connection"),
    ],
)
async def test_breaker_open_exactly_when_a_new_request_gets_overflow(
    fills: list[Callable[[ConnectionPool], None]],
    expected: str,
    connects: list[ConnectionPool],
    autojump_clock: trio.testing.MockClock,
) -> None:
    cluster = limited(max_connections=2)
    await trio.sleep(CHECK_AFTER_IDLE + 1)  # idle long enough that the pool checks for a peer close
    pool = cluster.endpoints[0].pool
    for fill in fills:
        fill(pool)
    gauge = cluster.statistics().breaker_open
    assert (await outcome(cluster)) == expected
    assert gauge == (expected == "overflow")


async def test_an_idle_connection_of_an_ejected_endpoint_takes_no_request(connects: list[ConnectionPool]) -> None:
    cluster = limited(2, max_connections=2)
    a = cluster.endpoints[0]
    idle(FakeH1(), FakeH1())(a.pool)
    assert not cluster.statistics().breaker_open
    a.ejected = True
    cluster.availability_changed()
    assert cluster.statistics().breaker_open
    assert (await outcome(cluster)) == "overflow"  # sent to b, which would have to connect


async def test_an_idle_connection_on_any_available_endpoint_keeps_it_closed() -> None:
    cluster = limited(2, max_connections=2)
    a, b = cluster.endpoints
    busy(1)(a.pool)
    busy(1)(b.pool)
    assert cluster.statistics().breaker_open
    idle(FakeH1())(b.pool)
    b.pool.open_connections -= 1  # one of b's connections finished its exchange and went idle
    assert not cluster.statistics().breaker_open


async def test_without_an_available_endpoint_the_answer_is_no_healthy_upstream_not_overflow(
    connects: list[ConnectionPool],
) -> None:
    cluster = limited(1, max_connections=1)
    busy(1)(cluster.endpoints[0].pool)
    cluster.endpoints[0].ejected = True
    cluster.availability_changed()
    assert not cluster.statistics().breaker_open
    assert (await outcome(cluster)) == "no_healthy_upstream"


async def test_a_request_waits_for_the_http2_connection_being_opened(
    connects: list[ConnectionPool], autojump_clock: trio.testing.MockClock
) -> None:
    cluster = limited(max_connections=1)
    pool = cluster.endpoints[0].pool
    pool.open_connections = 1  # connected, waiting for the peer's SETTINGS
    pool.h2_connecting = opened = trio.Event()
    assert not cluster.statistics().breaker_open
    results: list[str] = []

    async def send() -> None:
        results.append(await outcome(cluster))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        await trio.testing.wait_all_tasks_blocked()
        assert cluster.breaker.pending == 1 and not results  # waiting, not refused
        pool.h2_conns.append(FakeH2(1))  # type: ignore[arg-type]
        pool.h2_connecting = None
        opened.set()
    assert results == ["200"] and not connects


async def test_max_requests_full_is_open_whatever_the_pools_hold(connects: list[ConnectionPool]) -> None:
    cluster = limited(max_connections=2, max_requests=1)
    idle(FakeH1(), FakeH1())(cluster.endpoints[0].pool)
    cluster.endpoints[0].started()  # one request in flight
    assert cluster.statistics().breaker_open
    assert (await outcome(cluster)) == "overflow"
    cluster.endpoints[0].finished()
    assert not cluster.statistics().breaker_open
    assert (await outcome(cluster)) == "200"
