"""Load balancers: pick one endpoint of a service for a request.

- `round_robin`: weighted, smooth (nginx's algorithm: no bursts to the heaviest endpoint);
- `least_request`: power of two choices, weighted by `active_requests / weight`, as Envoy does;
- `random`: weighted random;
- `ring_hash`: consistent hashing of a request key (`ring.py`).
Each balancer is built for the available endpoints and rebuilt when that list changes (`ring_hash`
keeps its ring over all endpoints and walks past unavailable ones). `pick_other` is for a retry: an
endpoint other than `avoid`; the cluster calls it only when another endpoint is available.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from itertools import accumulate
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..http.message import Request
    from .endpoint import Endpoint


class Balancer(Protocol):
    def pick(self, request: Request | None = None) -> Endpoint: ...

    def pick_other(self, request: Request | None, avoid: Endpoint) -> Endpoint: ...


def _others(endpoints: Sequence[Endpoint], avoid: Endpoint) -> list[Endpoint]:
    return [e for e in endpoints if e is not avoid] or list(endpoints)


class RoundRobin:
    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self.endpoints = list(endpoints)
        self.current = [0] * len(self.endpoints)
        self.total = sum(e.weight for e in self.endpoints)
        self.uniform = all(e.weight == self.endpoints[0].weight for e in self.endpoints)
        self.next = 0

    def pick(self, request: Request | None = None) -> Endpoint:
        endpoints = self.endpoints
        if self.uniform:
            i = self.next
            self.next = (i + 1) % len(endpoints)
            return endpoints[i]
        current = self.current
        best = 0
        for i, endpoint in enumerate(endpoints):
            current[i] += endpoint.weight
            if current[i] > current[best]:
                best = i
        current[best] -= self.total
        return endpoints[best]

    def pick_other(self, request: Request | None, avoid: Endpoint) -> Endpoint:
        """The next endpoint in the rotation that is not `avoid` (one full cycle visits them all)."""
        for _ in range(self.total):
            endpoint = self.pick()
            if endpoint is not avoid:
                return endpoint
        return _others(self.endpoints, avoid)[0]


class LeastRequest:
    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self.endpoints = list(endpoints)
        self.cum_weights = list(accumulate(e.weight for e in self.endpoints))
        self.uniform = all(e.weight == self.endpoints[0].weight for e in self.endpoints)

    def pick(self, request: Request | None = None) -> Endpoint:
        endpoints = self.endpoints
        if len(endpoints) == 1:
            return endpoints[0]
        if self.uniform:
            a, b = random.sample(endpoints, 2)
        else:
            a, b = random.choices(endpoints, cum_weights=self.cum_weights, k=2)
        return _less_loaded(a, b)

    def pick_other(self, request: Request | None, avoid: Endpoint) -> Endpoint:
        """Power of two choices among the endpoints other than `avoid`."""
        others = _others(self.endpoints, avoid)
        if len(others) == 1:
            return others[0]
        a, b = random.choices(others, weights=[e.weight for e in others], k=2)
        return _less_loaded(a, b)


def _less_loaded(a: Endpoint, b: Endpoint) -> Endpoint:
    """The one with fewer active requests per unit of weight (`a` on a tie)."""
    if a.active_requests * b.weight <= b.active_requests * a.weight:
        return a
    return b


class Random:
    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self.endpoints = list(endpoints)
        self.cum_weights = list(accumulate(e.weight for e in self.endpoints))

    def pick(self, request: Request | None = None) -> Endpoint:
        return random.choices(self.endpoints, cum_weights=self.cum_weights)[0]

    def pick_other(self, request: Request | None, avoid: Endpoint) -> Endpoint:
        others = _others(self.endpoints, avoid)
        return random.choices(others, weights=[e.weight for e in others])[0]


BALANCERS: dict[str, type[RoundRobin] | type[LeastRequest] | type[Random]] = {
    "round_robin": RoundRobin,
    "least_request": LeastRequest,
    "random": Random,
}


def make_balancer(kind: str, endpoints: Sequence[Endpoint]) -> Balancer:
    """A balancer of `kind` (not `ring_hash`, which the cluster builds over its ring)."""
    return BALANCERS[kind](endpoints)
