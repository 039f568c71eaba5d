"""sidecar.transport.h2_guard without an event loop: the token bucket, the connection's budgets, and
the byte bound on a header block buffered across CONTINUATION frames."""

from __future__ import annotations

import h2.exceptions
import pytest
from hyperframe.frame import ContinuationFrame, DataFrame, HeadersFrame

from sidecar.transport.h2_guard import (
    PING_BURST,
    RESET_BURST,
    RESET_RATE,
    ConnectionGuard,
    HeaderBlockBuffer,
    HeaderBlockTooLarge,
    PeerAbuse,
    RateBudget,
    abuse_reason,
)
from tests.h2_peer import PREFACE


def test_budget_allows_a_burst_then_refuses() -> None:
    budget = RateBudget(5, 1.0)
    assert all(budget.spend(100.0) for _ in range(5))
    assert not budget.spend(100.0)
    assert not budget.spend(100.5)  # half a token is not a token


def test_budget_refills_with_time_up_to_the_burst() -> None:
    budget = RateBudget(5, 2.0)
    for _ in range(5):
        budget.spend(0.0)
    assert budget.spend(0.5)  # one token back after half a second at 2/s
    assert not budget.spend(0.5)
    assert sum(budget.spend(1000.0) for _ in range(10)) == 5  # never more than the burst


def test_budget_works_whatever_the_clock_reads() -> None:
    assert RateBudget(3, 1.0).spend(-12345.0)


def test_refund_gives_a_token_back_up_to_the_burst() -> None:
    budget = RateBudget(2, 0.0001)
    budget.spend(0.0)
    budget.spend(0.0)
    assert not budget.spend(0.0)
    budget.refund()
    assert budget.spend(0.0)
    for _ in range(10):
        budget.refund()
    assert sum(budget.spend(0.0) for _ in range(10)) == 2


def test_guard_resets_refunded_by_completed_streams() -> None:
    guard = ConnectionGuard()
    for _ in range(10 * RESET_BURST):  # a client that cancels half its streams, at any rate
        guard.stream_completed()
        guard.stream_cancelled(0.0)


def test_guard_rapid_reset_past_the_burst() -> None:
    guard = ConnectionGuard()
    for _ in range(RESET_BURST):
        guard.stream_cancelled(0.0)
    with pytest.raises(PeerAbuse) as raised:
        guard.stream_cancelled(0.0)
    assert raised.value.reason == "rapid_reset"
    assert raised.value.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    guard.stream_cancelled(1.0 / RESET_RATE)  # the budget refills with time


def test_guard_ping_flood() -> None:
    guard = ConnectionGuard()
    for _ in range(PING_BURST):
        guard.ping(0.0)
    with pytest.raises(PeerAbuse, match="ping_flood"):
        guard.ping(0.0)


def test_guard_settings_flood() -> None:
    guard = ConnectionGuard()
    with pytest.raises(PeerAbuse, match="settings_flood"):
        for _ in range(1000):
            guard.settings_frame(0.0)


def _frames(buffer: HeaderBlockBuffer, *frames: object) -> list[object]:
    buffer.max_frame_size = 16384
    buffer.add_data(b"".join(f.serialize() for f in frames))  # type: ignore[attr-defined]
    return list(buffer)


def test_header_block_bounded_in_bytes_across_continuation_frames() -> None:
    buffer = HeaderBlockBuffer(40_000)
    buffer.add_data(PREFACE)
    assert _frames(buffer, HeadersFrame(1, b"\x82" * 16000), ContinuationFrame(1, b"\x82" * 16000)) == []
    with pytest.raises(HeaderBlockTooLarge) as raised:
        _frames(buffer, ContinuationFrame(1, b"\x82" * 16000))
    assert abuse_reason(raised.value) == "continuation_flood"


def test_header_block_counter_restarts_after_each_block() -> None:
    buffer = HeaderBlockBuffer(40_000)
    buffer.add_data(PREFACE)
    for stream_id in range(1, 40, 2):  # many blocks of 30 000 bytes each: none over the bound
        frames = _frames(
            buffer,
            HeadersFrame(stream_id, b"\x82" * 15000),
            ContinuationFrame(stream_id, b"\x82" * 15000, flags=["END_HEADERS"]),
            DataFrame(stream_id, b"x" * 16000),
        )
        assert [type(f) for f in frames] == [HeadersFrame, DataFrame]
        assert len(frames[0].data) == 30000  # type: ignore[attr-defined]


def test_single_frame_header_blocks_are_not_counted() -> None:
    buffer = HeaderBlockBuffer(100)
    buffer.add_data(PREFACE)
    frames = _frames(buffer, *(HeadersFrame(i, b"\x82" * 16000, flags=["END_HEADERS"]) for i in range(1, 9, 2)))
    assert len(frames) == 4


def test_h2_own_continuation_bound_is_reported_as_a_flood() -> None:
    buffer = HeaderBlockBuffer(1 << 30)
    buffer.add_data(PREFACE)
    with pytest.raises(h2.exceptions.ProtocolError) as raised:
        _frames(buffer, HeadersFrame(1, b""), *(ContinuationFrame(1, b"") for _ in range(100)))
    assert abuse_reason(raised.value) == "continuation_flood"
    assert abuse_reason(h2.exceptions.TooManyStreamsError("x")) == "too_many_streams"
    assert abuse_reason(h2.exceptions.DenialOfServiceError("Oversized header block")) == "hpack_bomb"
    assert abuse_reason(h2.exceptions.ProtocolError("Invalid frame during header block.")) is None
