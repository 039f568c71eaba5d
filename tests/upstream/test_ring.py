"""sidecar.upstream.ring: a key stays on its endpoint, one endpoint more or less moves about 1/N of the
keys, unavailable endpoints are walked past, and the key comes from a header, a cookie or the caller."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from sidecar.config.schema import HashOn, OutlierDetection
from sidecar.http.errors import NoHealthyUpstream
from sidecar.http.message import Headers
from sidecar.upstream.endpoint import Endpoint
from sidecar.upstream.ring import HashRing, RingHash, cookie_value, hash64, key_reader

from .clusters import make_cluster, request

KEYS = [f"user-{i}".encode() for i in range(10_000)]


def endpoints(count: int, start: int = 1, weight: int = 1) -> list[Endpoint]:
    return [Endpoint(f"10.0.1.{i}", 8080, weight, 60.0) for i in range(start, start + count)]


def assignment(ring: HashRing) -> dict[bytes, str]:
    return {key: ring.endpoint_from(ring.index_of(hash64(key))).address for key in KEYS}


def test_hash_is_stable() -> None:
    # The same in every process (unlike hash()): sidecars agree, and restarts keep keys in place.
    assert hash64(b"user-1") == hash64(b"user-1") == 0x9AAC5A8621EAE188
    assert hash64(b"user-1") != hash64(b"user-2")


def test_keys_spread_evenly() -> None:
    counts = Counter(assignment(HashRing(endpoints(10))).values())
    assert len(counts) == 10
    for count in counts.values():
        assert 700 <= count <= 1300  # 1000 each, within 30 %


def test_weights_set_the_shares() -> None:
    heavy, light = Endpoint("10.0.1.1", 80, 3, 60.0), Endpoint("10.0.1.2", 80, 1, 60.0)
    counts = Counter(assignment(HashRing([heavy, light])).values())
    assert 6800 <= counts["10.0.1.1:80"] <= 8200  # 3/4 of the keys


def test_weights_are_reduced_by_their_common_divisor() -> None:
    assert len(HashRing(endpoints(3, weight=5)).hashes) == len(HashRing(endpoints(3)).hashes)


def test_adding_one_endpoint_moves_about_one_nth_and_only_to_it() -> None:
    before = assignment(HashRing(endpoints(10)))
    after = assignment(HashRing(endpoints(11)))
    moved = [key for key in KEYS if before[key] != after[key]]
    assert {after[key] for key in moved} == {"10.0.1.11:8080"}
    assert 0.6 / 11 <= len(moved) / len(KEYS) <= 1.4 / 11


def test_removing_one_endpoint_moves_only_its_keys() -> None:
    before = assignment(HashRing(endpoints(10)))
    after = assignment(HashRing(endpoints(9, start=2)))  # 10.0.1.1 is gone
    moved = [key for key in KEYS if before[key] != after[key]]
    assert {before[key] for key in moved} == {"10.0.1.1:8080"}
    assert 0.6 / 10 <= len(moved) / len(KEYS) <= 1.4 / 10


def test_the_order_of_endpoints_does_not_matter() -> None:
    shuffled = endpoints(8)
    random.Random(1).shuffle(shuffled)
    assert assignment(HashRing(endpoints(8))) == assignment(HashRing(shuffled))


def test_an_unavailable_endpoint_is_walked_past_and_its_keys_come_back() -> None:
    members = endpoints(5)
    ring = HashRing(members)
    before = assignment(ring)
    members[2].healthy = False
    during = assignment(ring)
    for key in KEYS:
        if before[key] == "10.0.1.3:8080":
            assert during[key] != "10.0.1.3:8080"
        else:
            assert during[key] == before[key]  # nobody else's keys move
    assert len(set(during.values())) == 4  # its keys spread over the others
    members[2].healthy = True
    assert assignment(ring) == before


def test_a_huge_weight_keeps_the_ring_bounded() -> None:
    big, small = Endpoint("10.0.1.1", 80, 100_000, 60.0), Endpoint("10.0.1.2", 80, 1, 60.0)
    ring = HashRing([big, small])
    assert len(ring.hashes) <= 1 << 16
    assert small in ring.owners


# --------------------------------------------------------------------------------------------------
# The request key
# --------------------------------------------------------------------------------------------------


def test_key_from_a_header_a_cookie_or_the_source_ip() -> None:
    by_header = key_reader(HashOn(header="X-User"))
    assert by_header(request([(b"X-User", b"alice")])) == b"alice"
    assert by_header(request()) is None
    by_cookie = key_reader(HashOn(cookie="sid"))
    assert by_cookie(request([(b"cookie", b"theme=dark; sid=abc123"), (b"cookie", b"sid=late")])) == b"abc123"
    assert by_cookie(request([(b"cookie", b"theme=dark"), (b"cookie", b'lang=en; sid="q"')])) == b"q"
    assert by_cookie(request([(b"cookie", b"xsid=1; Sid=2")])) is None  # names are exact
    by_source = key_reader(HashOn(source_ip=True))
    assert by_source(request(peer="203.0.113.9")) == b"203.0.113.9"


def test_cookie_value_edge_cases() -> None:
    assert cookie_value(Headers.of([(b"Cookie", b"a=1;b=2;;c")]), b"b") == b"2"
    assert cookie_value(Headers.of([(b"Cookie", b"a")]), b"a") is None
    assert cookie_value(Headers.of([(b"Cookie", b"a=")]), b"a") == b""


def test_a_request_without_its_key_gets_a_random_endpoint() -> None:
    balancer = RingHash(HashRing(endpoints(4)), key_reader(HashOn(header="x-user")))
    assert len({balancer.pick(request()).address for _ in range(200)}) == 4
    assert len({balancer.pick(request([(b"x-user", b"")])).address for _ in range(200)}) == 4
    assert len({balancer.pick(request([(b"x-user", b"bob")])).address for _ in range(200)}) == 1


def test_pick_other_is_the_next_endpoint_along_the_ring() -> None:
    balancer = RingHash(HashRing(endpoints(4)), key_reader(HashOn(header="x-user")))
    bob = request([(b"x-user", b"bob")])
    first = balancer.pick(bob)
    other = balancer.pick_other(bob, first)
    assert other is not first
    assert all(balancer.pick_other(bob, first) is other for _ in range(20))  # a consistent failover


# --------------------------------------------------------------------------------------------------
# In a cluster
# --------------------------------------------------------------------------------------------------


async def test_cluster_keeps_a_key_on_one_endpoint_and_builds_the_ring_once() -> None:
    cluster = make_cluster(
        5,
        load_balancer="ring_hash",
        hash_on=HashOn(header="x-user"),
        outlier_detection=OutlierDetection(consecutive_5xx=1),
    )
    ring = cluster.balancer
    alice = request([(b"x-user", b"alice")])
    home = cluster.pick(alice)
    assert all(cluster.pick(alice) is home for _ in range(100))
    cluster.record(home, 500)  # ejected: alice goes elsewhere, consistently
    assert home.ejected
    elsewhere = cluster.pick(alice)
    assert elsewhere is not home
    assert all(cluster.pick(alice) is elsewhere for _ in range(100))
    assert cluster.balancer is ring  # availability changes do not rebuild the ring
    cluster.configure(cluster.settings)  # nor does a reload with the same endpoints
    assert cluster.balancer is ring
    home.ejected = False
    cluster.availability_changed()
    assert cluster.pick(alice) is home


def test_cluster_rebuilds_the_ring_when_endpoints_change() -> None:
    cluster = make_cluster(3, load_balancer="ring_hash", hash_on=HashOn(source_ip=True))
    ring = cluster.balancer
    cluster.configure(make_cluster(4, load_balancer="ring_hash", hash_on=HashOn(source_ip=True)).settings)
    assert cluster.balancer is not ring
    assert len(cluster.endpoints) == 4


def test_cluster_ring_with_nothing_available() -> None:
    cluster = make_cluster(2, load_balancer="ring_hash", hash_on=HashOn(header="x-user"))
    for endpoint in cluster.endpoints:
        endpoint.healthy = False
    cluster.availability_changed()
    with pytest.raises(NoHealthyUpstream):
        cluster.pick(request([(b"x-user", b"alice")]))
