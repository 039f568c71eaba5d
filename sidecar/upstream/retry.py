"""Retries of one service, sans-IO: which failed tries may be sent again, how long to wait first, the
budget that keeps a sick service from a retry storm, and the request body kept for a replay.

The rules (docs: behaviour/resilience.md): `connect-failure` and `refused-stream` retry any method
(the app never saw the request); `reset`, `gateway-error` (502/503/504, or a per-try timeout), `5xx`
and `retriable-status` retry only idempotent methods unless `non_idempotent` is set. A request whose
body outgrew `buffer` is not retried once a byte of it was read. The caller guarantees the rest:
nothing is retried once the response has been handed on.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import trio

from ..config.schema import Retries
from ..http.errors import DownstreamGone, ProxyError, UpstreamConnectFailure, UpstreamReset
from ..http.message import Body, Headers

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
GATEWAY_ERRORS = frozenset({502, 503, 504})


class TryTimedOut(ProxyError):
    """A try ran out of its per-try timeout (a gateway error for retries; 504 if it was the last)."""

    status, reason, default_message = 504, "upstream_timeout", "upstream did not answer in time"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int
    conditions: frozenset[str]
    retriable_status: frozenset[int]
    backoff_base: float
    backoff_max: float
    budget_percent: int
    budget_min_per_second: int
    buffer: int
    non_idempotent: bool

    @classmethod
    def from_config(cls, retries: Retries) -> RetryPolicy:
        return cls(
            attempts=retries.attempts,
            conditions=frozenset(retries.on),
            retriable_status=frozenset(retries.retriable_status),
            backoff_base=retries.backoff.base,
            backoff_max=retries.backoff.max,
            budget_percent=retries.budget.percent,
            budget_min_per_second=retries.budget.min_per_second,
            buffer=retries.buffer,
            non_idempotent=retries.non_idempotent,
        )

    def retries_error(self, method: bytes, error: ProxyError) -> bool:
        """Whether a try that failed with `error` (no response) may be sent again."""
        conditions = self.conditions
        if isinstance(error, UpstreamConnectFailure):  # the app never saw it: any method
            return "connect-failure" in conditions or ("5xx" in conditions and self._may_repeat(method))
        if isinstance(error, UpstreamReset) and error.refused:  # never processed: any method
            return "refused-stream" in conditions or ("5xx" in conditions and self._may_repeat(method))
        if not self._may_repeat(method):
            return False
        if isinstance(error, TryTimedOut):
            return "gateway-error" in conditions or "5xx" in conditions
        if isinstance(error, UpstreamReset):
            return "reset" in conditions or "5xx" in conditions
        return "5xx" in conditions and error.status >= 500

    def retries_status(self, method: bytes, status: int) -> bool:
        """Whether a try answered with `status` may be sent again."""
        if status < 500 and status not in self.retriable_status:
            return False
        if not self._may_repeat(method):
            return False
        conditions = self.conditions
        if status in self.retriable_status and "retriable-status" in conditions:
            return True
        if status >= 500 and "5xx" in conditions:
            return True
        return status in GATEWAY_ERRORS and "gateway-error" in conditions

    def _may_repeat(self, method: bytes) -> bool:
        return self.non_idempotent or method in IDEMPOTENT

    def backoff(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1, 2, ...): full jitter over an exponential
        bound, `base * 2^(retry-1)` capped at `max`."""
        bound = min(self.backoff_max, self.backoff_base * 2 ** (retry - 1))
        return random.uniform(0, bound)


class RetryBudget:
    """Retries in flight may be at most `percent` of the service's requests in flight; beyond that, a
    floor of `min_per_second` retries a second is always allowed (a quiet service can still retry).
    The floor is a token bucket: it holds up to `min_per_second` tokens, refills continuously at
    that rate, and a retry allowed by the floor alone takes one."""

    __slots__ = ("_tokens", "_updated", "in_flight")

    def __init__(self) -> None:
        self.in_flight = 0  # retries in flight now
        self._tokens = math.inf  # full: clipped to the policy's floor at the first use
        self._updated = 0.0

    def allows(self, policy: RetryPolicy, active_requests: int, now: float) -> bool:
        """Whether one more retry may start now; a retry allowed by the floor spends its token here."""
        if (self.in_flight + 1) * 100 <= policy.budget_percent * active_requests:
            return True
        floor = policy.budget_min_per_second
        self._tokens = min(floor, self._tokens + (now - self._updated) * floor)
        self._updated = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def started(self) -> None:
        self.in_flight += 1

    def finished(self) -> None:
        self.in_flight -= 1


class ReplayBuffer:
    """The request body, read once from the client and kept (up to `limit` bytes) so that every try
    reads it from the start through its own `ReplayView`. Once more than `limit` bytes were read the
    kept chunks are dropped and the body passes straight through to the one try still reading it:
    from then on the request can no longer be replayed."""

    __slots__ = ("_ended", "_kept_size", "_lock", "chunks", "limit", "original", "overflowed", "trailers")

    def __init__(self, original: Body, limit: int) -> None:
        self.original = original
        self.limit = limit
        self.chunks: list[bytes] = []
        self._kept_size = 0
        self.overflowed = False
        self._ended = False
        self.trailers: Headers | None = None
        self._lock = trio.Lock()

    @property
    def replayable(self) -> bool:
        return not self.overflowed

    async def chunk(self, index: int) -> bytes:
        """Chunk number `index` of the body (b"" past the end), reading from the client as needed."""
        async with self._lock:
            if index < len(self.chunks):
                return self.chunks[index]
            if self._ended:
                return b""
            data = await self.original.read()
            if not data:
                self._ended = True
                self.trailers = self.original.trailers
                return b""
            if not self.overflowed:
                self._kept_size += len(data)
                if self._kept_size > self.limit:
                    self.overflowed = True
                    self.chunks = []  # too big to keep: nothing more is kept, nothing can be replayed
                else:
                    self.chunks.append(data)
            return data

    def view(self) -> ReplayView:
        return ReplayView(self)


class ReplayView:
    """One try's reading of a `ReplayBuffer`, from the first chunk. `abandon()` makes the try's body
    pump stop at its next read (the try failed; another may start)."""

    __slots__ = ("_abandoned", "_buffer", "_index", "length", "trailers")

    def __init__(self, buffer: ReplayBuffer) -> None:
        self._buffer = buffer
        self._index = 0
        self._abandoned = False
        self.length = buffer.original.length
        self.trailers: Headers | None = None

    async def read(self) -> bytes:
        if self._abandoned:
            raise DownstreamGone("try abandoned")
        data = await self._buffer.chunk(self._index)
        if self._abandoned:
            raise DownstreamGone("try abandoned")
        self._index += 1
        if not data:
            self.trailers = self._buffer.trailers
        return data

    def abandon(self) -> None:
        self._abandoned = True

    async def aclose(self) -> None:
        self._abandoned = True
