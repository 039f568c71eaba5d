"""sidecar.upstream.pool.ConnectionPool: LIFO reuse, idle timeout, peer-closed checks, sweeping."""

from __future__ import annotations

import pytest
import trio

from sidecar.config.schema import Address
from sidecar.upstream.endpoint import Endpoint
from sidecar.upstream.pool import CHECK_AFTER_IDLE, MAX_IDLE, ConnectionPool
from sidecar.upstream.registry import Cluster, ClusterSettings

IDLE_TIMEOUT = 10.0


class FakeConn:
    """Stands in for H1ClientConnection: what the pool touches is idle_since, generation, exchanges,
    close(), peer_closed()."""

    def __init__(self, name: str, *, peer_gone: bool = False) -> None:
        self.name = name
        self.idle_since = 0.0
        self.generation = 0
        self.exchanges = 0
        self.closed = 0
        self.peer_gone = peer_gone
        self.peer_checks = 0

    def close(self) -> None:
        self.closed += 1

    def peer_closed(self) -> bool:
        self.peer_checks += 1
        return self.peer_gone

    def __repr__(self) -> str:
        return f"FakeConn({self.name})"


@pytest.fixture
def endpoint() -> Endpoint:
    return Endpoint("10.0.0.1", 8080, 1, IDLE_TIMEOUT)


def checkout(pool: ConnectionPool, *conns: FakeConn) -> None:
    """Pretend each connection was opened and carried one exchange (as call.py counts them)."""
    pool.open_connections += len(conns)
    pool.endpoint.active_requests += len(conns)


def give_back(pool: ConnectionPool, *conns: FakeConn, reuse: bool = True) -> None:
    for conn in conns:
        pool.exchange_done(conn, reuse=reuse)  # type: ignore[arg-type]


async def test_empty_pool_has_nothing(endpoint: Endpoint, autojump_clock: trio.testing.MockClock) -> None:
    assert endpoint.pool.take_idle() is None


async def test_take_idle_returns_freshest_first(endpoint: Endpoint, autojump_clock: trio.testing.MockClock) -> None:
    pool = endpoint.pool
    a, b, c = FakeConn("a"), FakeConn("b"), FakeConn("c")
    checkout(pool, a, b, c)
    give_back(pool, a)
    await trio.sleep(0.1)
    give_back(pool, b)
    await trio.sleep(0.1)
    give_back(pool, c)
    assert endpoint.active_requests == 0
    assert [pool.take_idle(), pool.take_idle(), pool.take_idle(), pool.take_idle()] == [c, b, a, None]
    assert (a.closed, b.closed, c.closed) == (0, 0, 0)
    assert pool.open_connections == 3


async def test_exchange_done_stamps_idle_since(endpoint: Endpoint, autojump_clock: trio.testing.MockClock) -> None:
    pool = endpoint.pool
    conn = FakeConn("a")
    checkout(pool, conn)
    await trio.sleep(42)
    give_back(pool, conn)
    assert conn.idle_since == trio.current_time()
    assert pool.idle == [conn]


async def test_take_idle_skips_and_closes_expired(endpoint: Endpoint, autojump_clock: trio.testing.MockClock) -> None:
    pool = endpoint.pool
    old1, old2, fresh = FakeConn("old1"), FakeConn("old2"), FakeConn("fresh")
    checkout(pool, old1, old2, fresh)
    give_back(pool, fresh)  # oldest in the stack, but...
    await trio.sleep(0.5)
    give_back(pool, old1, old2)
    # ...make the two on top of the stack stale by rewriting their stamps.
    await trio.sleep(IDLE_TIMEOUT - 1)
    old1.idle_since = old2.idle_since = trio.current_time() - IDLE_TIMEOUT - 0.001
    assert pool.take_idle() is fresh
    assert (old1.closed, old2.closed, fresh.closed) == (1, 1, 0)
    assert pool.idle == []
    assert pool.open_connections == 1


async def test_connection_at_exactly_idle_timeout_still_usable(
    endpoint: Endpoint, autojump_clock: trio.testing.MockClock
) -> None:
    pool = endpoint.pool
    conn = FakeConn("a")
    checkout(pool, conn)
    give_back(pool, conn)
    await trio.sleep(IDLE_TIMEOUT)
    assert pool.take_idle() is conn


async def test_all_expired_gives_none(endpoint: Endpoint, autojump_clock: trio.testing.MockClock) -> None:
    pool = endpoint.pool
    conns = [FakeConn(str(i)) for i in range(3)]
    checkout(pool, *conns)
    give_back(pool, *conns)
    await trio.sleep(IDLE_TIMEOUT + 1)
    assert pool.take_idle() is None
    assert [c.closed for c in conns] == [1, 1, 1]
    assert pool.open_connections == 0


async def test_fresh_connection_trusted_without_peer_check(
    endpoint: Endpoint, autojump_clock: trio.testing.MockClock
) -> None:
    pool = endpoint.pool
    conn = FakeConn("a", peer_gone=True)
    checkout(pool, conn)
    give_back(pool, conn)
    await trio.sleep(CHECK_AFTER_IDLE / 2)
    assert pool.take_idle() is conn
    assert conn.peer_checks == 0
    assert conn.closed == 0


async def test_older_connection_checked_for_peer_close(
    endpoint: Endpoint, autojump_clock: trio.testing.MockClock
) -> None:
    pool = endpoint.pool
    alive, gone = FakeConn("alive"), FakeConn("gone", peer_gone=True)
    checkout(pool, alive, gone)
    give_back(pool, alive, gone)  # `gone` is freshest
    await trio.sleep(CHECK_AFTER_IDLE + 1)
    assert pool.take_idle() is alive
    assert gone.closed == 1
    assert gone.peer_checks == 1
    assert alive.peer_checks == 1
    assert alive.closed == 0
    assert pool.open_connections == 1


async def test_exchange_done_without_reuse_closes(endpoint: Endpoint, autojump_clock: trio.testing.MockClock) -> None:
    pool = endpoint.pool
    conn = FakeConn("a")
    checkout(pool, conn)
    give_back(pool, conn, reuse=False)
    assert conn.closed == 1
    assert pool.idle == []
    assert pool.open_connections == 0
    assert endpoint.active_requests == 0
    assert pool.take_idle() is None


async def test_removed_endpoint_keeps_nothing(endpoint: Endpoint, autojump_clock: trio.testing.MockClock) -> None:
    pool = endpoint.pool
    conn = FakeConn("a")
    checkout(pool, conn)
    endpoint.removed = True
    give_back(pool, conn, reuse=True)
    assert conn.closed == 1
    assert pool.idle == []
    assert pool.open_connections == 0
    assert endpoint.active_requests == 0


async def test_endpoint_removed_from_cluster_closes_idle_and_inflight_on_return(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settings = ClusterSettings(
        connect_timeout=1.0,
        request_timeout=5.0,
        idle_timeout=IDLE_TIMEOUT,
        load_balancer="round_robin",
        dns_refresh=5.0,
        targets=((Address("10.0.0.1", 80), 1), (Address("10.0.0.2", 80), 1)),
    )
    cluster = Cluster("orders", settings)
    gone = next(e for e in cluster.endpoints if e.address == "10.0.0.2:80")
    idle, busy = FakeConn("idle"), FakeConn("busy")
    checkout(gone.pool, idle, busy)
    give_back(gone.pool, idle)
    cluster.set_endpoints([("10.0.0.1", 80, 1, "10.0.0.1")])
    assert gone.removed
    assert idle.closed == 1
    assert gone.pool.idle == []
    give_back(gone.pool, busy)  # the in-flight exchange finishes after removal
    assert busy.closed == 1
    assert gone.pool.idle == []
    assert gone.pool.open_connections == 0
    assert [e.address for e in cluster.endpoints] == ["10.0.0.1:80"]


async def test_max_idle_bound(endpoint: Endpoint, autojump_clock: trio.testing.MockClock) -> None:
    pool = endpoint.pool
    conns = [FakeConn(str(i)) for i in range(MAX_IDLE + 3)]
    checkout(pool, *conns)
    give_back(pool, *conns)
    assert len(pool.idle) == MAX_IDLE
    assert sum(c.closed for c in conns) == 3
    assert all(c.closed == 1 for c in conns[MAX_IDLE:])
    assert pool.open_connections == MAX_IDLE


async def test_sweep_closes_only_stale(endpoint: Endpoint, autojump_clock: trio.testing.MockClock) -> None:
    pool = endpoint.pool
    a, b, c = FakeConn("a"), FakeConn("b"), FakeConn("c")
    checkout(pool, a, b, c)
    give_back(pool, a)
    await trio.sleep(5)
    give_back(pool, b)
    await trio.sleep(4)
    give_back(pool, c)
    await trio.sleep(2)  # ages: a 11s, b 6s, c 2s
    pool.sweep(trio.current_time())
    assert (a.closed, b.closed, c.closed) == (1, 0, 0)
    assert pool.idle == [b, c]
    assert pool.open_connections == 2
    await trio.sleep(5)  # ages: b 11s, c 7s
    pool.sweep(trio.current_time())
    assert (a.closed, b.closed, c.closed) == (1, 1, 0)
    assert pool.idle == [c]
    pool.sweep(trio.current_time())
    assert c.closed == 0
    assert pool.open_connections == 1


async def test_sweep_empty_pool(endpoint: Endpoint, autojump_clock: trio.testing.MockClock) -> None:
    endpoint.pool.sweep(trio.current_time())
    assert endpoint.pool.idle == []


async def test_close_idle(endpoint: Endpoint, autojump_clock: trio.testing.MockClock) -> None:
    pool = endpoint.pool
    conns = [FakeConn(str(i)) for i in range(3)]
    checkout(pool, *conns)
    give_back(pool, *conns)
    pool.close_idle()
    assert [c.closed for c in conns] == [1, 1, 1]
    assert pool.idle == []
    assert pool.open_connections == 0


def test_a_changed_way_to_the_endpoint_retires_its_connections() -> None:
    """A reload that changes the service's TLS policy or protocol: idle connections close at once, a
    busy one closes when its exchange ends instead of rejoining the pool."""
    endpoint = Endpoint("127.0.0.1", 9, 1, IDLE_TIMEOUT)
    pool = endpoint.pool
    idle, busy = FakeConn("idle"), FakeConn("busy")
    pool.open_connections = 2
    pool.idle.append(idle)  # type: ignore[arg-type]
    endpoint.started()  # busy's exchange
    pool.retire_connections()
    assert (idle.closed, pool.idle, pool.open_connections) == (1, [], 1)
    pool.exchange_done(busy, reuse=True)  # type: ignore[arg-type]
    assert (busy.closed, pool.idle, pool.open_connections) == (1, [], 0)


def test_only_a_new_policy_counts_as_a_changed_way_not_new_contexts() -> None:
    from sidecar.upstream.pool import UpstreamTls
    from sidecar.upstream.registry import _reached_differently

    def settings(tls: UpstreamTls | None, protocol: str = "auto") -> ClusterSettings:
        return ClusterSettings(
            connect_timeout=1.0,
            request_timeout=15.0,
            idle_timeout=IDLE_TIMEOUT,
            load_balancer="round_robin",
            dns_refresh=5.0,
            targets=((Address("127.0.0.1", 9), 1),),
            tls=tls,
            protocol=protocol,
        )

    before = UpstreamTls({}, mutual=True, identity="spiffe://mesh.local/ns/default/sa/orders")
    rotated = UpstreamTls({"auto": object()}, mutual=True, identity=before.identity)  # type: ignore[dict-item]
    assert not _reached_differently(before, "auto", settings(rotated))
    assert _reached_differently(before, "auto", settings(UpstreamTls({}, mutual=True, identity=None)))
    assert _reached_differently(before, "auto", settings(before, "http1"))
    assert _reached_differently(before, "auto", settings(None))
    assert _reached_differently(None, "auto", settings(before))
