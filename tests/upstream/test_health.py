"""sidecar.upstream.health: thresholds both ways, the rounds every interval, the timeout (MockClock with
a scripted probe), and the probe itself against raw TCP origins on 127.0.0.1 (real clock)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio
import trio.testing

from sidecar.config.schema import HealthCheck
from sidecar.http.errors import NoHealthyUpstream
from sidecar.upstream import health
from sidecar.upstream.endpoint import Endpoint
from sidecar.upstream.health import HealthChecker, check_request, probe
from sidecar.upstream.pool import ConnectionPool
from sidecar.upstream.registry import Cluster

from .clusters import make_cluster, make_settings

POLICY = HealthCheck(path="/healthz", interval=5.0, timeout=1.0, healthy_threshold=2, unhealthy_threshold=3)


class ScriptedProbes:
    """Stands in for `probe`: each endpoint answers its current status (None: no answer; "hang":
    never answers), and every check is logged with its time."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.status: dict[str, int | str | None] = {}
        self.log: list[tuple[float, str]] = []
        monkeypatch.setattr(health, "probe", self.probe)

    async def probe(self, pool: ConnectionPool, request: bytes) -> int | None:
        address = pool.endpoint.address
        self.log.append((trio.current_time(), address))
        answer = self.status.get(address, 200)
        if answer == "hang":
            await trio.sleep_forever()
        await trio.sleep(0.01)
        return answer if isinstance(answer, int) else None


@pytest.fixture
def probes(monkeypatch: pytest.MonkeyPatch) -> ScriptedProbes:
    return ScriptedProbes(monkeypatch)


@pytest.fixture
async def cluster(nursery: trio.Nursery) -> Cluster:
    cluster = make_cluster(3, health_check=POLICY, health_host="orders")
    cluster.set_background(nursery)
    return cluster


def addresses(cluster: Cluster, count: int = 60) -> set[str]:
    return {cluster.pick().address for _ in range(count)}


async def test_endpoints_start_healthy(probes: ScriptedProbes, autojump_clock: trio.testing.MockClock) -> None:
    cluster = make_cluster(3, health_check=POLICY, health_host="orders")
    assert all(e.healthy and e.available for e in cluster.endpoints)  # before any check
    assert addresses(cluster) == {"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"}


async def test_unhealthy_after_threshold_failures_healthy_after_threshold_successes(
    probes: ScriptedProbes, cluster: Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    a = cluster.endpoints[0]
    probes.status[a.address] = 500
    await trio.sleep(9)  # checks at 0 and 5: two failures
    assert a.healthy and a.checks_failed == 2
    await trio.sleep(2)  # the third, at 10
    assert not a.healthy and not a.available
    assert addresses(cluster) == {"10.0.0.2:80", "10.0.0.3:80"}
    probes.status[a.address] = 200
    await trio.sleep(5)  # one success at 15: not yet
    assert not a.healthy and a.checks_passed == 1
    await trio.sleep(5)  # the second, at 20
    assert a.healthy
    assert addresses(cluster) == {"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"}


async def test_a_success_resets_the_failure_run(
    probes: ScriptedProbes, cluster: Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    a = cluster.endpoints[0]
    await trio.sleep(1)  # between rounds (at 0, 5, 10, ...)
    for status in (503, 503, 204, 404, None, 299, 302):  # 2xx passes; 3xx, 4xx, no answer fail
        probes.status[a.address] = status
        await trio.sleep(5)
    assert a.healthy  # never three failures in a row
    assert (a.checks_failed, a.checks_passed) == (1, 0)
    await trio.sleep(10)
    assert not a.healthy


async def test_every_interval_each_endpoint_once(
    probes: ScriptedProbes, cluster: Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    await trio.sleep(12)
    times = sorted({round(t, 2) for t, _ in probes.log})
    assert times == [0.0, 5.0, 10.0]
    assert len(probes.log) == 9


async def test_no_answer_within_the_timeout_is_a_failure(
    probes: ScriptedProbes, cluster: Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    a = cluster.endpoints[0]
    probes.status[a.address] = "hang"
    await trio.sleep(10.5)  # rounds at 0, 5, 10, each cut at the timeout (1 s)
    assert a.healthy and a.checks_failed == 2
    await trio.sleep(1)
    assert not a.healthy
    assert [round(t) for t, address in probes.log if address == a.address] == [0, 5, 10]


async def test_all_unhealthy_gives_no_healthy_upstream_at_once(
    probes: ScriptedProbes, cluster: Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    for endpoint in cluster.endpoints:
        probes.status[endpoint.address] = None
    await trio.sleep(11)
    started = trio.current_time()
    with pytest.raises(NoHealthyUpstream):
        cluster.pick()
    assert trio.current_time() == started
    probes.status.clear()
    await trio.sleep(10)  # two successes
    assert cluster.pick() is not None


async def test_health_survives_a_reload_and_removing_checks_makes_all_healthy(
    probes: ScriptedProbes, cluster: Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    a = cluster.endpoints[0]
    probes.status[a.address] = 500
    await trio.sleep(11)
    assert not a.healthy
    cluster.configure(make_settings(4, health_check=POLICY, health_host="orders"))  # one more endpoint
    assert cluster.endpoints[0] is a and not a.healthy
    assert cluster.endpoints[3].healthy  # new endpoints start healthy
    await trio.sleep(5)
    assert not a.healthy
    cluster.configure(make_settings(4))  # health checks removed
    assert a.healthy and a.available
    checks = len(probes.log)
    await trio.sleep(20)
    assert len(probes.log) == checks  # the checker stopped


async def test_a_new_policy_restarts_the_checks(
    probes: ScriptedProbes, cluster: Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    await trio.sleep(1)
    cluster.configure(make_settings(3, health_check=HealthCheck(interval=2.0), health_host="orders"))
    await trio.sleep(4.5)
    times = sorted({round(t, 2) for t, _ in probes.log})
    assert times == [0.0, 1.0, 3.0, 5.0]  # a round at once, then every 2 s


async def test_endpoints_removed_during_a_round_are_left_alone(autojump_clock: trio.testing.MockClock) -> None:
    cluster = make_cluster(2, health_check=POLICY, health_host="orders")
    checker = cluster.health
    assert checker is not None
    gone = cluster.endpoints[1]
    cluster.configure(make_settings(1, health_check=POLICY, health_host="orders"))
    for _ in range(5):
        checker.observe(gone, False)
    assert gone.healthy and gone.checks_failed == 0


# --------------------------------------------------------------------------------------------------
# The probe over real sockets
# --------------------------------------------------------------------------------------------------

Respond = Callable[[trio.SocketStream, bytes], Awaitable[None]]


async def raw_origin(nursery: trio.Nursery, respond: Respond, heads: list[bytes]) -> int:
    async def handle(stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            data += chunk
        heads.append(data)
        await respond(stream, data)
        await stream.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


def answer(raw: bytes) -> Respond:
    async def respond(stream: trio.SocketStream, head: bytes) -> None:
        await stream.send_all(raw)

    return respond


def test_check_request_bytes() -> None:
    assert check_request("/healthz?deep=1", "orders") == (
        b"GET /healthz?deep=1 HTTP/1.1\r\nHost: orders\r\nUser-Agent: sidecar-health-check\r\nConnection: close\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", 200),
        (b"HTTP/1.1 503 Service Unavailable\r\nx-sidecar-reason: no_healthy_upstream\r\n\r\n", 503),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", 204),
        (b"HTTP/1.1 200 OK\r\nx: " + b"y" * 70_000 + b"\r\n\r\n", None),  # a head too large
        (b"hello\r\n\r\n", None),  # not HTTP
        (b"HTTP/1.1 200 OK\r\n", None),  # closed before the end of the head
        (b"", None),  # closed without a byte
    ],
)
async def test_probe_reads_the_status(nursery: trio.Nursery, raw: bytes, status: int | None) -> None:
    heads: list[bytes] = []
    port = await raw_origin(nursery, answer(raw), heads)
    endpoint = Endpoint("127.0.0.1", port, 1, 60.0)
    with trio.fail_after(5):
        assert await probe(endpoint.pool, check_request("/healthz", "orders")) == status
    assert heads == [check_request("/healthz", "orders")]
    assert endpoint.pool.open_connections == 0 and endpoint.active_requests == 0  # not counted as traffic


async def test_probe_of_a_closed_port_is_no_answer() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        endpoint = Endpoint("127.0.0.1", port, 1, 60.0)
        with trio.fail_after(5):
            assert await probe(endpoint.pool, check_request("/healthz", "orders")) is None


async def test_checker_against_a_real_origin_that_turns_sick(nursery: trio.Nursery) -> None:
    sick = False

    async def respond(stream: trio.SocketStream, head: bytes) -> None:
        await stream.send_all(b"HTTP/1.1 500 Oops\r\n\r\n" if sick else b"HTTP/1.1 200 OK\r\n\r\n")

    port = await raw_origin(nursery, respond, [])
    policy = HealthCheck(interval=0.05, timeout=1.0, healthy_threshold=1, unhealthy_threshold=2)
    cluster = Cluster("orders", make_settings(1, health_check=policy, health_host="orders"))
    cluster.set_endpoints([("127.0.0.1", port, 1, "127.0.0.1")])
    cluster.set_background(nursery)
    endpoint = cluster.endpoints[0]
    with trio.fail_after(5):
        while endpoint.checks_passed < 2:
            await trio.sleep(0.01)
        sick = True
        while endpoint.healthy:
            await trio.sleep(0.01)
        with pytest.raises(NoHealthyUpstream):
            cluster.pick()
        sick = False
        while not endpoint.healthy:
            await trio.sleep(0.01)
    assert cluster.pick() is endpoint
    assert isinstance(cluster.health, HealthChecker)
