"""sidecar.upstream.retry: which failures and statuses retry, backoff bounds, the budget's
arithmetic, and the replay buffer behind a retried request body."""

from __future__ import annotations

import pytest
import trio

from sidecar.config.schema import Backoff, Retries
from sidecar.config.schema import RetryBudget as BudgetConfig
from sidecar.http.errors import (
    DownstreamGone,
    UpstreamConnectFailure,
    UpstreamProtocolError,
    UpstreamReset,
)
from sidecar.http.message import BytesBody, Headers
from sidecar.upstream.retry import ReplayBuffer, RetryBudget, RetryPolicy, TryTimedOut

DEFAULT = RetryPolicy.from_config(Retries())


def policy(**fields: object) -> RetryPolicy:
    return RetryPolicy.from_config(Retries(**fields))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "method", "expected"),
    [
        (UpstreamConnectFailure(), b"POST", True),  # never reached the app: any method
        (UpstreamReset(refused=True), b"POST", True),
        (UpstreamReset(), b"GET", True),
        (UpstreamReset(), b"POST", False),  # may have reached the app
        (TryTimedOut(), b"GET", True),  # a per-try timeout is a gateway error
        (TryTimedOut(), b"PATCH", False),
        (UpstreamProtocolError(), b"GET", False),  # not among the default conditions
    ],
)
def test_default_conditions(error: Exception, method: bytes, expected: bool) -> None:
    assert DEFAULT.retries_error(method, error) is expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "method", "expected"),
    [(502, b"GET", True), (503, b"PUT", True), (504, b"DELETE", True), (503, b"POST", False), (500, b"GET", False)],
)
def test_gateway_error_statuses(status: int, method: bytes, expected: bool) -> None:
    assert DEFAULT.retries_status(method, status) is expected


def test_5xx_retriable_status_and_non_idempotent() -> None:
    p = policy(on=("5xx", "retriable-status"), retriable_status=(409,))
    assert p.retries_status(b"GET", 500) and p.retries_status(b"GET", 409)
    assert not p.retries_status(b"GET", 404) and not p.retries_status(b"POST", 500)
    assert p.retries_error(b"GET", UpstreamProtocolError())  # 5xx covers local 502s too
    assert policy(on=("5xx",), non_idempotent=True).retries_status(b"POST", 503)
    assert not policy(on=("connect-failure",)).retries_status(b"GET", 503)
    assert not policy(on=("gateway-error",)).retries_error(b"POST", UpstreamConnectFailure())


def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    p = policy(backoff=Backoff(base=0.025, max=0.25))
    for retry, bound in [(1, 0.025), (2, 0.05), (3, 0.1), (4, 0.2), (5, 0.25), (9, 0.25)]:
        samples = [p.backoff(retry) for _ in range(400)]
        assert all(0 <= s <= bound for s in samples)
        assert max(samples) > bound * 0.8  # jitter spreads over the whole range
        assert min(samples) < bound * 0.2


def test_budget_percent_of_requests_in_flight_plus_a_floor_per_second() -> None:
    p = policy(budget=BudgetConfig(percent=20, min_per_second=3))
    budget = RetryBudget()
    # 10 requests in flight: 20 % allows 2 retries in flight, without touching the floor
    assert budget.allows(p, 10, now=100.0)
    budget.started()
    assert budget.allows(p, 10, now=100.0)
    budget.started()
    # beyond that, the floor: 3 tokens, then empty
    assert [budget.allows(p, 10, now=100.0) for _ in range(4)] == [True, True, True, False]
    assert not budget.allows(p, 10, now=100.2)  # 0.6 of a token back: not yet one
    assert budget.allows(p, 10, now=100.4)  # 1.2 tokens: one more retry
    assert not budget.allows(p, 10, now=100.4)
    assert [budget.allows(p, 10, now=200.0) for _ in range(4)] == [True, True, True, False]  # never above 3
    budget.finished()
    budget.finished()
    assert budget.in_flight == 0


class Chunks:
    def __init__(self, *chunks: bytes, trailers: Headers | None = None) -> None:
        self.chunks = list(chunks)
        self.length: int | None = None
        self.trailers: Headers | None = None
        self._trailers = trailers
        self.reads = 0

    async def read(self) -> bytes:
        self.reads += 1
        if self.chunks:
            return self.chunks.pop(0)
        self.trailers = self._trailers
        return b""

    async def aclose(self) -> None:
        pass


async def drain(view: object) -> bytes:
    out = b""
    while chunk := await view.read():  # type: ignore[attr-defined]
        out += chunk
    return out


async def test_every_try_reads_the_whole_body_and_its_trailers() -> None:
    original = Chunks(b"ab", b"cd", trailers=Headers.of([(b"X-Sum", b"1")]))
    buffer = ReplayBuffer(original, limit=100)
    first = buffer.view()
    assert await first.read() == b"ab"  # the first try fails after one chunk
    first.abandon()
    with pytest.raises(DownstreamGone):
        await first.read()
    second = buffer.view()
    assert await drain(second) == b"abcd"
    assert second.trailers is not None and second.trailers.get(b"x-sum") == b"1"
    third = buffer.view()
    assert await drain(third) == b"abcd"
    assert original.reads == 3  # read once from the client: two chunks and the end
    assert buffer.replayable


async def test_a_body_over_the_buffer_passes_through_and_cannot_be_replayed() -> None:
    buffer = ReplayBuffer(Chunks(b"x" * 60, b"y" * 60, b"z"), limit=100)
    view = buffer.view()
    assert await drain(view) == b"x" * 60 + b"y" * 60 + b"z"
    assert not buffer.replayable and buffer.chunks == []  # nothing kept


async def test_a_try_that_never_read_leaves_the_body_replayable() -> None:
    buffer = ReplayBuffer(BytesBody(b"q" * 1000), limit=10)
    buffer.view().abandon()  # failed to connect: nothing read
    assert buffer.replayable
    assert await drain(buffer.view()) == b"q" * 1000


async def test_concurrent_reads_do_not_interleave(autojump_clock: trio.testing.MockClock) -> None:
    class Slow(Chunks):
        async def read(self) -> bytes:
            await trio.sleep(1)
            return await super().read()

    buffer = ReplayBuffer(Slow(b"1", b"2", b"3"), limit=100)
    results: list[bytes] = []

    async def reader() -> None:
        results.append(await drain(buffer.view()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        nursery.start_soon(reader)
    assert results == [b"123", b"123"]
