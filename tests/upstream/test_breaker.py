"""sidecar.upstream.breaker: each threshold answers 503 overflow at once when full, and frees up."""

from __future__ import annotations

import pytest

from sidecar.config.schema import CircuitBreaker
from sidecar.http.errors import Overflow
from sidecar.upstream.breaker import Breaker, Thresholds


def breaker(**fields: int) -> Breaker:
    return Breaker(Thresholds.from_config(CircuitBreaker(**fields)))


def test_max_requests() -> None:
    b = breaker(max_requests=2)
    b.check_requests("orders")
    b.requests = 2
    with pytest.raises(Overflow) as caught:
        b.check_requests("orders")
    assert caught.value.status == 503 and caught.value.reason == "overflow"
    assert "max_requests" in (caught.value.detail or "")
    assert b.is_open(open_connections=0)
    b.requests = 1
    b.check_requests("orders")
    assert not b.is_open(open_connections=0)


def test_max_pending() -> None:
    b = breaker(max_pending=1)
    b.open_pending("orders")
    with pytest.raises(Overflow):
        b.open_pending("orders")
    b.close_pending()
    b.open_pending("orders")


def test_max_connections_and_max_retries() -> None:
    b = breaker(max_connections=3, max_retries=1)
    b.check_connections("orders", 2)
    with pytest.raises(Overflow):
        b.check_connections("orders", 3)
    assert b.is_open(open_connections=3)
    assert b.retry_allowed()
    b.retries = 1
    assert not b.retry_allowed() and b.is_open(open_connections=0)


def test_max_retries_zero_forbids_retries_without_showing_an_open_breaker() -> None:
    b = breaker(max_retries=0)
    assert not b.retry_allowed()
    assert not b.is_open(open_connections=0)
