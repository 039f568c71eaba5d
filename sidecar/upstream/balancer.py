"""Load balancers: pick one endpoint of a service for a request.

- `round_robin`: weighted, smooth (nginx's algorithm: no bursts to the heaviest endpoint);
- `least_request`: power of two choices, weighted by `active_requests / weight`, as Envoy does;
- `random`: weighted random.
Each balancer is built for one endpoint list and rebuilt when the list changes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from itertools import accumulate
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .registry import Endpoint


class Balancer(Protocol):
    def pick(self) -> Endpoint: ...


class RoundRobin:
    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self.endpoints = list(endpoints)
        self.current = [0] * len(self.endpoints)
        self.total = sum(e.weight for e in self.endpoints)
        self.uniform = all(e.weight == self.endpoints[0].weight for e in self.endpoints)
        self.next = 0

    def pick(self) -> Endpoint:
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


class LeastRequest:
    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self.endpoints = list(endpoints)
        self.cum_weights = list(accumulate(e.weight for e in self.endpoints))
        self.uniform = all(e.weight == self.endpoints[0].weight for e in self.endpoints)

    def pick(self) -> Endpoint:
        endpoints = self.endpoints
        if len(endpoints) == 1:
            return endpoints[0]
        if self.uniform:
            a, b = random.sample(endpoints, 2)
        else:
            a, b = random.choices(endpoints, cum_weights=self.cum_weights, k=2)
        if a.active_requests * b.weight <= b.active_requests * a.weight:
            return a
        return b


class Random:
    def __init__(self, endpoints: Sequence[Endpoint]) -> None:
        self.endpoints = list(endpoints)
        self.cum_weights = list(accumulate(e.weight for e in self.endpoints))

    def pick(self) -> Endpoint:
        return random.choices(self.endpoints, cum_weights=self.cum_weights)[0]


BALANCERS: dict[str, type[RoundRobin] | type[LeastRequest] | type[Random]] = {
    "round_robin": RoundRobin,
    "least_request": LeastRequest,
    "random": Random,
}


def make_balancer(kind: str, endpoints: Sequence[Endpoint]) -> Balancer:
    return BALANCERS[kind](endpoints)
