"""sidecar.transport.h2_guard without an event loop: the token bucket, the connection's budgets, and
the limits of the guarded codec (the byte bound on a header block buffered across CONTINUATION
frames, the frame bound, and the abuse reasons its errors carry)."""

from __future__ import annotations

import pytest

from sidecar.http.h2_conn import PREFACE, ErrorCode, H2Connection, H2ConnectionError
from sidecar.http.hpack_codec import HeaderEncoder
from sidecar.transport.h2_guard import (
    HEADER_BOUND_FLOOR,
    MAX_CONCURRENT_STREAMS,
    PING_BURST,
    RESET_BURST,
    RESET_RATE,
    SETTINGS_BURST,
    STREAM_HARD_LIMIT,
    ConnectionGuard,
    PeerAbuse,
    RateBudget,
    guarded_connection,
    header_bound,
)
from tests.http.h2_frames import CONTINUATION, DATA, END_HEADERS, END_STREAM, HEADERS, Frames, frame, ping, settings


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
    assert raised.value.error_code == ErrorCode.ENHANCE_YOUR_CALM
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


def test_the_codec_spends_the_ping_and_settings_budgets_as_frames_arrive() -> None:
    guard = ConnectionGuard()
    conn = guarded_connection(64 * 1024)
    conn.frame_guard = guard.frame_guard(lambda: 0.0)
    conn.receive(PREFACE + settings())
    with pytest.raises(PeerAbuse, match="ping_flood"):
        conn.receive(ping() * (PING_BURST + 10))
    assert len(conn.data_to_send()) < 17 * (PING_BURST + 1)  # the ACKs stop where the budget did
    conn = guarded_connection(64 * 1024)
    conn.frame_guard = ConnectionGuard().frame_guard(lambda: 0.0)
    with pytest.raises(PeerAbuse, match="settings_flood"):
        conn.receive(PREFACE + settings() * (SETTINGS_BURST + 1))


def _opened(conn: H2Connection) -> H2Connection:
    conn.receive(PREFACE + settings())
    conn.data_to_send()
    return conn


def _connection_error(conn: H2Connection, data: bytes) -> H2ConnectionError:
    with pytest.raises(H2ConnectionError) as raised:
        conn.receive(data)
    return raised.value


def test_header_block_bounded_in_bytes_across_continuation_frames() -> None:
    conn = _opened(guarded_connection(200_000))  # 400 000 bytes buffered at most
    piece = b"\x82" * 16000  # never decoded
    assert conn.receive(frame(HEADERS, 0, 1, piece) + frame(CONTINUATION, 0, 1, piece) * 23) == []
    error = _connection_error(conn, frame(CONTINUATION, 0, 1, piece) * 2)
    assert (error.code, error.reason) == (ErrorCode.ENHANCE_YOUR_CALM, "continuation_flood")


def test_the_header_bound_has_a_floor() -> None:
    """A small limit still lets a block of what a default sidecar forwards be decoded (and answered
    431 on its stream); a large limit gets twice itself."""
    assert header_bound(2048) == HEADER_BOUND_FLOOR >= 2 * 64 * 1024
    assert header_bound(1 << 20) == 2 << 20
    conn = _opened(guarded_connection(2048))
    fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]
    events = conn.receive(Frames().headers(1, [*fields, (b"x-big", b"z" * 15_000)]))
    assert events[0][:2] == (1, 1) and events[0][4] > 15_000  # decoded, its size known: a 431 follows


def test_header_block_counter_restarts_after_each_block() -> None:
    conn = _opened(guarded_connection(20_000))
    peer = Frames()
    for stream_id in range(1, 40, 2):  # many blocks of 30 000 bytes each: none over the bound
        block = peer.block(
            [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":authority", b"a"),
                (b":path", b"/"),
                (b"x-filler", b"f" * 29_900),
            ]
        )
        half = len(block) // 2
        events = conn.receive(
            frame(HEADERS, 0, stream_id, block[:half])
            + frame(CONTINUATION, END_HEADERS, stream_id, block[half:])
            + frame(DATA, END_STREAM, stream_id, b"x" * 16000)
        )
        assert [e[1] for e in events] == [stream_id, stream_id]
        conn.acknowledge(stream_id, 16000)
        conn.reset(stream_id)


def test_single_frame_header_blocks_are_not_counted() -> None:
    conn = _opened(H2Connection(client=False, max_header_block=100, max_header_list=1 << 20))
    peer = HeaderEncoder()  # no Huffman coding: the block is as long as its fields
    for stream_id in range(1, 9, 2):
        fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/" + b"p" * 15000)]
        block = peer.encode(fields)
        assert len(block) > 15000
        assert conn.receive(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block))[0][:2] == (1, stream_id)


def test_the_codec_errors_carry_their_abuse_reason() -> None:
    empty = _connection_error(
        _opened(guarded_connection(1 << 20)),
        Frames().headers(1, [], end_headers=False) + frame(CONTINUATION, 0, 1) * 100,
    )
    assert (empty.code, empty.reason) == (ErrorCode.PROTOCOL_ERROR, "continuation_flood")
    bomb = Frames().headers(1, [(b"x-bomb", b"a" * 4000)] * 100)
    assert _connection_error(_opened(guarded_connection(16 * 1024)), bomb).reason == "hpack_bomb"
    peer = Frames()
    request = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]
    flood = b"".join(peer.headers(2 * i + 1, request) for i in range(STREAM_HARD_LIMIT + 1))
    too_many = _connection_error(_opened(guarded_connection(16 * 1024)), flood)
    assert (too_many.code, too_many.reason) == (ErrorCode.PROTOCOL_ERROR, "too_many_streams")
    assert _connection_error(_opened(guarded_connection(16 * 1024)), frame(DATA, 0, 0, b"x")).reason is None


def test_the_guarded_codec_advertises_the_stream_limit() -> None:
    conn = guarded_connection(16 * 1024)
    assert conn.local_max_streams == MAX_CONCURRENT_STREAMS and conn.stream_hard_limit == STREAM_HARD_LIMIT
