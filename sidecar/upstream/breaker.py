"""Circuit breakers of one service (Envoy's thresholds), per sidecar process.

`max_connections`: open connections to all the service's endpoints; `max_pending`: requests waiting
for a connection (or an HTTP/2 stream slot); `max_requests`: requests in flight; `max_retries`:
retries in flight. A request that would cross a threshold is answered 503 `overflow` at once, never
queued; `max_connections` refuses only a request that must open a connection (one that finds a pooled
connection free takes it), and `is_open` reads the thresholds the same way. The counters are plain
integers bumped on the request path: O(1), no allocation.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config.schema import CircuitBreaker
from ..http.errors import Overflow


@dataclass(frozen=True, slots=True)
class Thresholds:
    max_connections: int
    max_pending: int
    max_requests: int
    max_retries: int

    @classmethod
    def from_config(cls, config: CircuitBreaker) -> Thresholds:
        return cls(config.max_connections, config.max_pending, config.max_requests, config.max_retries)


UNLIMITED = Thresholds(1 << 62, 1 << 62, 1 << 62, 1 << 62)


class Breaker:
    """The live counts of one service against its thresholds."""

    __slots__ = ("pending", "requests", "retries", "thresholds")

    def __init__(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self.requests = 0  # exchanges in flight, response bodies included
        self.pending = 0  # waiting for a connection or a stream slot
        self.retries = 0  # retries in flight

    def check_requests(self, service: str) -> None:
        """Before a request starts (the count itself moves with each exchange, see Endpoint)."""
        if self.requests >= self.thresholds.max_requests:
            raise Overflow(detail=f"{service}: max_requests ({self.thresholds.max_requests}) in flight")

    def open_pending(self, service: str) -> None:
        if self.pending >= self.thresholds.max_pending:
            raise Overflow(detail=f"{service}: max_pending ({self.thresholds.max_pending}) waiting")
        self.pending += 1

    def close_pending(self) -> None:
        self.pending -= 1

    def check_connections(self, service: str, open_connections: int) -> None:
        if open_connections >= self.thresholds.max_connections:
            raise Overflow(detail=f"{service}: max_connections ({self.thresholds.max_connections}) open")

    def retry_allowed(self) -> bool:
        return self.retries < self.thresholds.max_retries

    def is_open(self, open_connections: int, must_connect: bool) -> bool:
        """Whether a new request would be answered 503 `overflow` now (`sidecar_circuit_breaker_open`;
        docs: reference/observability.md): `max_requests` or `max_pending` is full, or `max_retries` (for a
        retry), or `max_connections` is full and no open connection can take the request (`must_connect`:
        it would have to open one). Idle pooled connections at `max_connections` alone leave it closed.
        `max_retries: 0` means no retries at all, not a breaker that is always open."""
        t = self.thresholds
        return (
            self.requests >= t.max_requests
            or self.pending >= t.max_pending
            or (t.max_retries > 0 and self.retries >= t.max_retries)
            or (must_connect and open_connections >= t.max_connections)
        )
