"""Consistent hashing for `load_balancer: ring_hash`: the ring, and the request key hashed onto it.

The ring is Ketama-shaped: each endpoint owns `POINTS_PER_WEIGHT * weight` points (weights divided
by their greatest common divisor), each point the 64-bit BLAKE2b hash of `address#i`. A key is hashed
the same way and belongs to the first point at or after its hash (wrapping around). Because an
endpoint's points depend only on its own address and weight, adding an endpoint takes over only the
keys that now fall on its points (about 1/N of them) and removing one moves only its own keys.
An endpoint that is not available (unhealthy, ejected) is skipped by walking on to the next point
of an available endpoint, so its keys spread over the others and come back when it does; the keys
of every other endpoint stay where they are.

The ring is built once per endpoint set (by the cluster); a pick is one hash and one binary search.
A request without the key (header or cookie absent) goes to a random point: a weighted random pick.
This module owns no availability state: it reads `Endpoint.available`.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left
from collections.abc import Callable, Sequence
from hashlib import blake2b
from typing import TYPE_CHECKING

from ..http.errors import NoHealthyUpstream

if TYPE_CHECKING:
    from ..config.schema import HashOn
    from ..http.message import Headers, Request
    from .endpoint import Endpoint

POINTS_PER_WEIGHT = 160  # points per unit of (gcd-reduced) weight: shares within a few % of the weights
MAX_POINTS = 1 << 16  # a larger ring is scaled down (extreme weights), keeping at least one point each

KeyReader = Callable[["Request"], bytes | None]


def hash64(data: bytes) -> int:
    """A stable 64-bit hash (the same in every process and run, unlike `hash()`)."""
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


class HashRing:
    """The sorted points of a set of endpoints, and the walk from a point to an available endpoint."""

    __slots__ = ("hashes", "owners")

    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        divisor = math.gcd(*(e.weight for e in endpoints)) if endpoints else 1
        units = [e.weight // divisor for e in endpoints]
        scale = min(1.0, MAX_POINTS / (POINTS_PER_WEIGHT * max(1, sum(units))))
        points: list[tuple[int, str, Endpoint]] = []
        for endpoint, unit in zip(endpoints, units, strict=True):
            count = max(1, round(POINTS_PER_WEIGHT * unit * scale))
            points += [(hash64(f"{endpoint.address}#{i}".encode()), endpoint.address, endpoint) for i in range(count)]
        points.sort(key=lambda point: (point[0], point[1]))
        self.hashes = [point[0] for point in points]
        self.owners = [point[2] for point in points]

    def index_of(self, key_hash: int) -> int:
        """The point a key hash belongs to: the first at or after it, wrapping around."""
        index = bisect_left(self.hashes, key_hash)
        return 0 if index == len(self.hashes) else index

    def endpoint_from(self, index: int, avoid: Endpoint | None = None) -> Endpoint:
        """The owner of the point at `index`, or of the next point whose owner is available (and is
        not `avoid`)."""
        owners = self.owners
        endpoint = owners[index]
        if endpoint.available and endpoint is not avoid:
            return endpoint
        size = len(owners)
        for step in range(1, size):
            endpoint = owners[(index + step) % size]
            if endpoint.available and endpoint is not avoid:
                return endpoint
        raise NoHealthyUpstream(detail="no available endpoint on the hash ring")


class RingHash:
    """The `ring_hash` balancer: the request's key decides its endpoint."""

    __slots__ = ("key_of", "ring")

    def __init__(self, ring: HashRing, key_of: KeyReader) -> None:
        self.ring = ring
        self.key_of = key_of

    def _index(self, request: Request | None) -> int:
        key = self.key_of(request) if request is not None else None
        if not key:
            return random.randrange(len(self.ring.owners))
        return self.ring.index_of(hash64(key))

    def pick(self, request: Request | None = None) -> Endpoint:
        return self.ring.endpoint_from(self._index(request))

    def pick_other(self, request: Request | None, avoid: Endpoint) -> Endpoint:
        """The next available endpoint along the ring after the key's own: a retry's failover is
        as consistent as the first pick."""
        return self.ring.endpoint_from(self._index(request), avoid)


def key_reader(hash_on: HashOn) -> KeyReader:
    """How to read the key `hash_on` names from a request (None when the request has none)."""
    if hash_on.header is not None:
        header = hash_on.header.encode("latin-1")
        return lambda request: request.headers.get(header)
    if hash_on.cookie is not None:
        cookie = hash_on.cookie.encode("latin-1")
        return lambda request: cookie_value(request.headers, cookie)
    return lambda request: request.conn.peer_host.encode("latin-1")


def cookie_value(headers: Headers, name: bytes) -> bytes | None:
    """The value of cookie `name` in the request's `Cookie` fields (HTTP/2 may send several)."""
    for value in headers.get_all(b"cookie"):
        for pair in value.split(b";"):
            key, sep, found = pair.strip().partition(b"=")
            if sep and key == name:
                return found.strip(b'"')
    return None
