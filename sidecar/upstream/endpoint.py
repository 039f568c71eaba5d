"""One upstream address (an IP and port) of a service, and the state kept about it: `Endpoint`.

The state outlives config reloads (the registry keeps an endpoint while its address stays): its
connection pool, its exchanges in flight, the verdict of active health checks (`health.py`) and the
ejection state of outlier detection (`outlier.py`). The balancers (`balancer.py`, `ring.py`) read
it to pick one. Its pool sees it as a `pool.PooledEndpoint`: where to connect, whether it left the
config, and `finished()` when an exchange ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .pool import ConnectionPool

if TYPE_CHECKING:
    from .breaker import Breaker


@dataclass(frozen=True, slots=True)
class EndpointStatistics:
    """One endpoint as `/clusters` shows it."""

    address: str
    healthy: bool
    ejected: bool
    active_requests: int
    times_ejected: int


class Endpoint:
    """One upstream address (an IP and port) of a service, and the state kept about it.

    `healthy` is the verdict of active health checks (True when the service has none); `ejected`,
    `ejected_until` and `times_ejected` belong to outlier detection, as do the consecutive counters.
    The policies change these fields and tell the cluster (`availability_changed`). Its exchanges in
    flight count both here (for least_request) and in the service's breaker (for max_requests):
    `started()`/`finished()`.
    """

    __slots__ = (
        "active_requests",
        "address",
        "breaker",
        "checks_failed",
        "checks_passed",
        "consecutive_5xx",
        "consecutive_gateway_errors",
        "ejected",
        "ejected_until",
        "healthy",
        "host",
        "hostname",
        "pool",
        "port",
        "refused_until",
        "removed",
        "returned_at",
        "times_ejected",
        "weight",
    )

    def __init__(self, host: str, port: int, weight: int, idle_timeout: float, hostname: str | None = None) -> None:
        self.host = host.strip("[]")
        self.hostname = hostname or self.host  # as configured, before DNS: the name TLS verifies
        self.port = port
        self.address = f"[{self.host}]:{port}" if ":" in self.host else f"{self.host}:{port}"
        self.weight = weight
        self.active_requests = 0
        self.removed = False
        self.healthy = True  # endpoints start healthy, before their first check
        self.checks_passed = 0  # consecutive
        self.checks_failed = 0  # consecutive
        self.ejected = False
        self.ejected_until = 0.0  # trio time
        self.times_ejected = 0
        self.returned_at = 0.0  # trio time of the last return from an ejection
        self.refused_until = 0.0  # trio time until which a failed connect makes picks pass it over
        self.consecutive_5xx = 0
        self.consecutive_gateway_errors = 0
        self.breaker: Breaker | None = None  # the service's, set when the endpoint joins a cluster
        self.pool = ConnectionPool(self, idle_timeout)

    @property
    def available(self) -> bool:
        """Whether it may take new requests: not removed, healthy, not ejected."""
        return self.healthy and not self.ejected and not self.removed

    def started(self) -> None:
        self.active_requests += 1
        breaker = self.breaker
        if breaker is not None:
            breaker.requests += 1

    def finished(self) -> None:
        self.active_requests -= 1
        breaker = self.breaker
        if breaker is not None:
            breaker.requests -= 1

    def statistics(self) -> EndpointStatistics:
        return EndpointStatistics(self.address, self.healthy, self.ejected, self.active_requests, self.times_ejected)
