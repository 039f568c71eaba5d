"""sidecar.upstream.balancer: round robin (smooth weighted), least request (P2C), weighted random; retries
avoiding an endpoint, and every balancer (ring_hash too) picking only available endpoints."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from sidecar.config.schema import HashOn
from sidecar.http.errors import NoHealthyUpstream
from sidecar.upstream.balancer import BALANCERS, LeastRequest, Random, RoundRobin, make_balancer
from sidecar.upstream.endpoint import Endpoint

from .clusters import make_cluster, request


@dataclass(eq=False)
class FakeEndpoint:
    name: str
    weight: int = 1
    active_requests: int = 0

    def __repr__(self) -> str:
        return self.name


def eps(*weights: int) -> list[FakeEndpoint]:
    return [FakeEndpoint(chr(ord("a") + i), w) for i, w in enumerate(weights)]


def names(balancer, n: int) -> str:
    return "".join(balancer.pick().name for _ in range(n))


# --------------------------------------------------------------------------------------------------
# RoundRobin
# --------------------------------------------------------------------------------------------------


def test_round_robin_equal_weights_cycle() -> None:
    assert names(RoundRobin(eps(1, 1, 1)), 9) == "abcabcabc"


def test_round_robin_equal_heavy_weights_cycle() -> None:
    assert names(RoundRobin(eps(5, 5)), 6) == "ababab"


def test_round_robin_single_endpoint() -> None:
    assert names(RoundRobin(eps(3)), 4) == "aaaa"


def test_round_robin_smooth_weighted_5_1_1() -> None:
    balancer = RoundRobin(eps(5, 1, 1))
    # nginx's smooth weighted round robin: the heavy endpoint is interleaved, not burst.
    assert names(balancer, 7) == "aabacaa"
    assert names(balancer, 7) == "aabacaa"


@pytest.mark.parametrize("weights", [(5, 1, 1), (3, 2), (1, 2, 3, 4), (10, 1), (2, 3, 7)])
def test_round_robin_exact_over_a_full_cycle(weights: tuple[int, ...]) -> None:
    balancer = RoundRobin(eps(*weights))
    total = sum(weights)
    for _ in range(3):
        counts = Counter(balancer.pick().name for _ in range(total))
        assert counts == {chr(ord("a") + i): w for i, w in enumerate(weights)}


def test_round_robin_smooth_never_bursts_heavy_endpoint() -> None:
    # With weights 3,2 the heaviest endpoint never gets more than 2 picks in a row.
    sequence = names(RoundRobin(eps(3, 2)), 50)
    assert "aaa" not in sequence
    assert sequence[:5] == "abab" + "a"


# --------------------------------------------------------------------------------------------------
# LeastRequest
# --------------------------------------------------------------------------------------------------


def test_least_request_two_endpoints_prefers_idle() -> None:
    random.seed(1)
    a, b = eps(1, 1)
    a.active_requests = 5
    balancer = LeastRequest([a, b])
    assert Counter(balancer.pick().name for _ in range(1000)) == {"b": 1000}


def test_least_request_one_busy_of_many() -> None:
    random.seed(2)
    endpoints = eps(1, 1, 1, 1)
    endpoints[0].active_requests = 10
    counts = Counter(LeastRequest(endpoints).pick().name for _ in range(8000))
    # P2C with distinct samples: the busy one is only chosen when both samples are busy: never here.
    assert counts["a"] == 0
    for name in "bcd":
        assert 2300 <= counts[name] <= 3050


def test_least_request_spreads_when_all_idle() -> None:
    random.seed(3)
    counts = Counter(LeastRequest(eps(1, 1, 1)).pick().name for _ in range(9000))
    for name in "abc":
        assert 2700 <= counts[name] <= 3300


def test_least_request_weighted_idle() -> None:
    random.seed(4)
    counts = Counter(LeastRequest(eps(3, 1)).pick().name for _ in range(20_000))
    # Both idle: picks follow the weights (first sample wins ties) -> about 3:1.
    assert 14_400 <= counts["a"] <= 15_600


def test_least_request_load_relative_to_weight() -> None:
    random.seed(5)
    a, b = eps(4, 1)
    a.active_requests = 2  # 2/4 = 0.5 per unit of weight
    b.active_requests = 1  # 1/1 = 1.0
    counts = Counter(LeastRequest([a, b]).pick().name for _ in range(5000))
    # Whenever the two samples differ, the less loaded one per weight (a) wins.
    assert counts["b"] <= 5000 * 0.06  # only when both samples are b: (1/5)^2 = 4%
    assert counts["a"] >= 5000 * 0.94


def test_least_request_with_one_busy_weighted_endpoint_prefers_idle() -> None:
    random.seed(6)
    a, b = eps(1, 1)
    b.active_requests = 1
    assert {LeastRequest([a, b]).pick().name for _ in range(200)} == {"a"}


def test_least_request_single_endpoint() -> None:
    (only,) = eps(1)
    only.active_requests = 100
    assert LeastRequest([only]).pick() is only


# --------------------------------------------------------------------------------------------------
# Random
# --------------------------------------------------------------------------------------------------


def test_random_by_weight() -> None:
    random.seed(7)
    counts = Counter(Random(eps(6, 3, 1)).pick().name for _ in range(20_000))
    assert 11_500 <= counts["a"] <= 12_500
    assert 5_600 <= counts["b"] <= 6_400
    assert 1_700 <= counts["c"] <= 2_300


def test_random_uniform() -> None:
    random.seed(8)
    counts = Counter(Random(eps(1, 1)).pick().name for _ in range(10_000))
    assert 4_700 <= counts["a"] <= 5_300


# --------------------------------------------------------------------------------------------------
# With real endpoints
# --------------------------------------------------------------------------------------------------


def test_make_balancer_kinds() -> None:
    endpoints = [Endpoint("10.0.0.1", 80, 2, 60.0), Endpoint("10.0.0.2", 80, 1, 60.0)]
    assert set(BALANCERS) == {"round_robin", "least_request", "random"}
    assert isinstance(make_balancer("round_robin", endpoints), RoundRobin)
    assert isinstance(make_balancer("least_request", endpoints), LeastRequest)
    assert isinstance(make_balancer("random", endpoints), Random)
    rr = make_balancer("round_robin", endpoints)
    assert [rr.pick().address for _ in range(3)] == ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.1:80"]


def test_least_request_real_endpoints_follow_active_requests() -> None:
    random.seed(9)
    a, b = Endpoint("10.0.0.1", 80, 1, 60.0), Endpoint("10.0.0.2", 80, 1, 60.0)
    balancer = make_balancer("least_request", [a, b])
    a.active_requests = 3
    assert {balancer.pick().address for _ in range(100)} == {"10.0.0.2:80"}
    a.active_requests, b.active_requests = 0, 3
    assert {balancer.pick().address for _ in range(100)} == {"10.0.0.1:80"}


# --------------------------------------------------------------------------------------------------
# pick_other (a retry goes elsewhere) and availability, through a cluster
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["round_robin", "least_request", "random"])
@pytest.mark.parametrize("weights", [(1, 1, 1), (5, 1, 1), (1, 9)])
def test_pick_other_never_returns_the_avoided_endpoint(kind: str, weights: tuple[int, ...]) -> None:
    random.seed(10)
    endpoints = eps(*weights)
    balancer = make_balancer(kind, endpoints)  # type: ignore[arg-type]
    for avoid in endpoints:
        others = Counter(balancer.pick_other(None, avoid).name for _ in range(300))  # type: ignore[arg-type]
        assert avoid.name not in others
        assert set(others) == {e.name for e in endpoints} - {avoid.name}


KINDS = {
    "round_robin": {},
    "least_request": {},
    "random": {},
    "ring_hash": {"hash_on": HashOn(header="x-user")},
}


@pytest.mark.parametrize("kind", KINDS)
def test_balancers_skip_unavailable_endpoints(kind: str) -> None:
    random.seed(11)
    cluster = make_cluster(4, load_balancer=kind, **KINDS[kind])
    a, b, c, d = cluster.endpoints
    b.healthy = False
    d.ejected = True
    cluster.availability_changed()
    assert cluster.available_count == 2
    picks = Counter(cluster.pick(request([(b"x-user", f"u{i}".encode())])).address for i in range(400))
    assert set(picks) == {a.address, c.address}
    b.healthy = True
    cluster.availability_changed()
    picks = Counter(cluster.pick(request([(b"x-user", f"u{i}".encode())])).address for i in range(400))
    assert set(picks) == {a.address, b.address, c.address}


@pytest.mark.parametrize("kind", KINDS)
def test_avoid_is_skipped_when_another_is_available(kind: str) -> None:
    random.seed(12)
    cluster = make_cluster(3, load_balancer=kind, **KINDS[kind])
    a, b, c = cluster.endpoints
    bob = request([(b"x-user", b"bob")])
    for avoid in (a, b, c):
        assert all(cluster.pick(bob, avoid=avoid) is not avoid for _ in range(100))
    b.healthy = c.healthy = False
    cluster.availability_changed()
    assert cluster.pick(bob, avoid=a) is a  # the only one left: a retry goes there again


@pytest.mark.parametrize("kind", KINDS)
def test_nothing_available_is_no_healthy_upstream(kind: str) -> None:
    cluster = make_cluster(2, load_balancer=kind, **KINDS[kind])
    for endpoint in cluster.endpoints:
        endpoint.healthy = False
    cluster.availability_changed()
    assert cluster.balancer is None
    with pytest.raises(NoHealthyUpstream):
        cluster.pick(request())


def test_removed_endpoints_are_not_available() -> None:
    cluster = make_cluster(3)
    gone = cluster.endpoints[2]
    cluster.configure(make_cluster(2).settings)
    assert gone.removed and not gone.available
    assert {cluster.pick().address for _ in range(10)} == {"10.0.0.1:80", "10.0.0.2:80"}
