"""sidecar.http.h2_conn, rule by rule (RFC 9113): raw frames in, events and frames out. Connection
errors raise `H2ConnectionError` with GOAWAY queued; stream errors answer RST_STREAM on that stream."""

from __future__ import annotations

import struct

import pytest

from sidecar.http.h2_conn import (
    CLOSED_MEMORY,
    DATA_RECEIVED,
    GOAWAY_RECEIVED,
    HEADERS_RECEIVED,
    INFORMATIONAL_RECEIVED,
    MAX_CONTINUATIONS,
    PING_ACKED,
    PING_RECEIVED,
    PREFACE,
    SETTINGS_RECEIVED,
    STREAM_REFUSED,
    STREAM_RESET,
    TRAILERS_RECEIVED,
    WINDOW_OPENED,
    ErrorCode,
    H2Connection,
    H2ConnectionError,
    H2StateError,
    Setting,
)
from tests.http.h2_frames import (
    ACK,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PADDED,
    PING,
    PRIORITY,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    REQUEST,
    RESPONSE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    Frames,
    client,
    frame,
    goaway,
    goaway_code,
    parse,
    ping,
    resets,
    rst,
    server,
    settings,
    window_update,
)


def heads(events: list) -> list:
    """The events, with the list size of HEADERS_RECEIVED left out."""
    return [e[:4] if e[0] == HEADERS_RECEIVED else e for e in events]


def connection_error(conn: H2Connection, data: bytes) -> H2ConnectionError:
    """Feed `data`, expecting a connection error; checks the GOAWAY queued carries its code."""
    with pytest.raises(H2ConnectionError) as raised:
        conn.receive(data)
    assert goaway_code(conn.data_to_send()) == raised.value.code
    assert conn.receive(ping()) == []  # nothing more is read
    return raised.value


def stream_error(conn: H2Connection, data: bytes, stream_id: int) -> int:
    """Feed `data`, expecting a stream error on `stream_id`: its code."""
    conn.receive(data)
    out = conn.data_to_send()
    assert goaway_code(out) is None
    codes = resets(out)
    assert stream_id in codes, parse(out)
    assert stream_id not in conn.streams
    return codes[stream_id]


def data(stream_id: int, payload: bytes, *, end: bool = False, pad: int | None = None) -> bytes:
    if pad is None:
        return frame(DATA, END_STREAM if end else 0, stream_id, payload)
    return frame(DATA, PADDED | (END_STREAM if end else 0), stream_id, bytes([pad]) + payload + b"\0" * pad)


# -- preface and SETTINGS ------------------------------------------------------------------------


def test_server_opening_and_the_preface_in_pieces() -> None:
    conn = H2Connection(client=False, max_concurrent_streams=128)
    conn.initiate()
    frames = parse(conn.data_to_send())
    assert frames == [(SETTINGS, 0, 0, struct.pack(">HL", Setting.MAX_CONCURRENT_STREAMS, 128))]
    opening = PREFACE + settings() + Frames().headers(1, REQUEST)
    events = []
    for i in range(len(opening)):  # a byte at a time
        events += conn.receive(opening[i : i + 1])
    assert [e[0] for e in events] == [SETTINGS_RECEIVED, HEADERS_RECEIVED]
    assert parse(conn.data_to_send()) == [(SETTINGS, ACK, 0, b"")]


def test_client_opening_disables_push() -> None:
    conn = H2Connection(client=True)
    conn.initiate()
    out = conn.data_to_send()
    assert out.startswith(PREFACE)
    assert parse(out) == [(SETTINGS, 0, 0, struct.pack(">HL", Setting.ENABLE_PUSH, 0))]


def test_a_larger_connection_window_is_opened_at_once() -> None:
    conn = H2Connection(client=False, connection_window=1 << 20, initial_window=1 << 18)
    conn.initiate()
    frames = parse(conn.data_to_send())
    assert frames[0][3] == struct.pack(">HL", Setting.INITIAL_WINDOW_SIZE, 1 << 18)
    assert frames[1] == (WINDOW_UPDATE, 0, 0, struct.pack(">L", (1 << 20) - 65535))


def test_invalid_preface() -> None:
    conn = H2Connection(client=False)
    assert connection_error(conn, b"GET / HTTP/1.1\r\n\r\n").code == ErrorCode.PROTOCOL_ERROR


@pytest.mark.parametrize("side", ["server", "client"])
def test_first_frame_must_be_settings(side: str) -> None:
    conn = H2Connection(client=side == "client")
    conn.initiate()
    opening = b"" if side == "client" else PREFACE
    assert connection_error(conn, opening + ping()).code == ErrorCode.PROTOCOL_ERROR


def test_settings_are_applied_acknowledged_and_reported() -> None:
    conn = server()
    events = conn.receive(settings((Setting.MAX_FRAME_SIZE, 20000), (Setting.MAX_CONCURRENT_STREAMS, 7), (0xFF, 1)))
    changes = {Setting.MAX_FRAME_SIZE: 20000, Setting.MAX_CONCURRENT_STREAMS: 7, 0xFF: 1}
    assert events == [(SETTINGS_RECEIVED, 0, changes)]
    assert parse(conn.data_to_send()) == [(SETTINGS, ACK, 0, b"")]
    assert conn.peer_max_frame == 20000 and conn.peer_max_streams == 7


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (settings((Setting.ENABLE_PUSH, 2)), ErrorCode.PROTOCOL_ERROR),
        (settings((Setting.INITIAL_WINDOW_SIZE, 2**31)), ErrorCode.FLOW_CONTROL_ERROR),
        (settings((Setting.MAX_FRAME_SIZE, 16383)), ErrorCode.PROTOCOL_ERROR),
        (settings((Setting.MAX_FRAME_SIZE, 2**24)), ErrorCode.PROTOCOL_ERROR),
        (settings((Setting.ENABLE_CONNECT_PROTOCOL, 2)), ErrorCode.PROTOCOL_ERROR),
        (frame(SETTINGS, 0, 0, b"\0" * 5), ErrorCode.FRAME_SIZE_ERROR),
        (frame(SETTINGS, ACK, 0, b"\0" * 6), ErrorCode.FRAME_SIZE_ERROR),
        (frame(SETTINGS, 0, 1, b""), ErrorCode.PROTOCOL_ERROR),
    ],
)
def test_invalid_settings(payload: bytes, code: ErrorCode) -> None:
    assert connection_error(server(), payload).code == code


def test_a_server_may_not_enable_push() -> None:
    conn = H2Connection(client=True)
    conn.initiate()
    assert connection_error(conn, settings((Setting.ENABLE_PUSH, 1))).code == ErrorCode.PROTOCOL_ERROR


def test_a_smaller_peer_header_table_is_announced_in_the_next_block() -> None:
    conn = client()
    conn.send_headers(conn.new_stream_id(), REQUEST, end_stream=True)
    assert parse(conn.data_to_send())[0][3][0] != 0x20  # the default table: nothing to announce
    conn.receive(settings((Setting.HEADER_TABLE_SIZE, 0)))
    conn.data_to_send()
    conn.send_headers(conn.new_stream_id(), REQUEST, end_stream=True)
    assert parse(conn.data_to_send())[0][3][0] == 0x20  # a table size update to 0
    conn.send_headers(conn.new_stream_id(), REQUEST, end_stream=True)
    assert parse(conn.data_to_send())[0][3][0] != 0x20


def test_frame_guard_sees_settings_and_pings_first() -> None:
    conn = server()
    seen: list[int] = []

    def guard(frame_type: int) -> None:
        seen.append(frame_type)
        if len(seen) == 3:
            raise RuntimeError("budget spent")

    conn.frame_guard = guard
    with pytest.raises(RuntimeError):
        conn.receive(settings() + ping() + settings(ack=True) + ping(ack=True) + ping() + ping())
    assert seen == [SETTINGS, PING, PING]


# -- frames --------------------------------------------------------------------------------------


def test_frame_over_our_max_frame_size() -> None:
    assert connection_error(server(), data(1, b"x" * 16385)).code == ErrorCode.FRAME_SIZE_ERROR


def test_frames_split_anywhere_give_the_same_events() -> None:
    peer = Frames()
    head = peer.headers(1, [*REQUEST, (b"content-length", b"5")], end_stream=False)
    wire = head + data(1, b"hel") + data(1, b"lo", end=True)
    whole = server().receive(wire)
    assert whole[0][4] == len(b"".join(n + v for n, v in [*REQUEST, (b"content-length", b"5")])) + 5 * 32
    for cut in range(1, len(wire)):
        conn = server()
        peer.encoder = Frames().encoder
        events = conn.receive(wire[:cut]) + conn.receive(wire[cut:])
        assert events == whole
    assert [e[0] for e in whole] == [HEADERS_RECEIVED, DATA_RECEIVED, DATA_RECEIVED]


def test_unknown_frame_types_are_ignored_but_not_inside_a_header_block() -> None:
    conn = server()
    assert conn.receive(frame(0xEE, 0xFF, 1, b"whatever")) == []
    peer = Frames()
    head = peer.headers(1, REQUEST, end_headers=False)
    assert connection_error(server(), head + frame(0xEE, 0, 0)).code == ErrorCode.PROTOCOL_ERROR


def test_priority_is_parsed_and_ignored() -> None:
    conn = server()
    assert conn.receive(frame(PRIORITY, 0, 5, struct.pack(">LB", 3, 200))) == []  # on an idle stream
    assert conn.streams == {}
    assert connection_error(server(), frame(PRIORITY, 0, 5, b"\0" * 4)).code == ErrorCode.FRAME_SIZE_ERROR
    assert connection_error(server(), frame(PRIORITY, 0, 0, b"\0" * 5)).code == ErrorCode.PROTOCOL_ERROR


def test_priority_in_headers_and_padding() -> None:
    conn = server()
    peer = Frames()
    block = peer.block(REQUEST)
    payload = bytes([3]) + struct.pack(">LB", 0x80000003, 15) + block + b"\0\0\0"
    events = conn.receive(frame(HEADERS, PADDED | PRIORITY_FLAG | END_HEADERS | END_STREAM, 1, payload))
    assert heads(events) == [(HEADERS_RECEIVED, 1, REQUEST, True)]
    conn = server()
    self_dependent = struct.pack(">LB", 1, 15) + Frames().block(REQUEST)
    wire = frame(HEADERS, PRIORITY_FLAG | END_HEADERS, 1, self_dependent)
    assert stream_error(conn, wire, 1) == ErrorCode.PROTOCOL_ERROR


def test_padding_longer_than_the_frame() -> None:
    conn = server()
    conn.receive(Frames().headers(1, REQUEST, end_stream=False))
    assert connection_error(conn, frame(DATA, PADDED, 1, bytes([5]) + b"abc")).code == ErrorCode.PROTOCOL_ERROR
    assert connection_error(server(), frame(HEADERS, PADDED | END_HEADERS, 1, b"")).code == ErrorCode.FRAME_SIZE_ERROR


def test_push_promise_is_a_protocol_error_both_ways() -> None:
    payload = struct.pack(">L", 2) + Frames().block(REQUEST)
    conn = client()
    conn.send_headers(1, REQUEST, end_stream=True)
    assert connection_error(conn, frame(PUSH_PROMISE, END_HEADERS, 1, payload)).code == ErrorCode.PROTOCOL_ERROR
    assert connection_error(server(), frame(PUSH_PROMISE, END_HEADERS, 1, payload)).code == ErrorCode.PROTOCOL_ERROR


def test_ping_is_answered() -> None:
    conn = server()
    assert conn.receive(ping(b"abcdefgh")) == [(PING_RECEIVED, 0, b"abcdefgh")]
    assert parse(conn.data_to_send()) == [(PING, ACK, 0, b"abcdefgh")]
    assert conn.receive(ping(b"zyxwvuts", ack=True)) == [(PING_ACKED, 0, b"zyxwvuts")]
    assert conn.data_to_send() == b""
    conn.ping(b"00000000")
    assert parse(conn.data_to_send()) == [(PING, 0, 0, b"00000000")]
    assert connection_error(server(), ping(b"short")).code == ErrorCode.FRAME_SIZE_ERROR
    assert connection_error(server(), frame(PING, 0, 1, b"12345678")).code == ErrorCode.PROTOCOL_ERROR


def test_goaway_received() -> None:
    conn = client()
    for _ in range(3):
        conn.send_headers(conn.new_stream_id(), REQUEST, end_stream=True)
    assert conn.receive(goaway(3, ErrorCode.NO_ERROR, b"bye")) == [(GOAWAY_RECEIVED, 0, 3, 0, b"bye")]
    assert conn.peer_last_stream == 3 and conn.goaway_received
    with pytest.raises(H2StateError):
        conn.new_stream_id()
    assert connection_error(client(), frame(GOAWAY, 0, 0, b"\0" * 7)).code == ErrorCode.FRAME_SIZE_ERROR
    assert connection_error(client(), frame(GOAWAY, 0, 1, b"\0" * 8)).code == ErrorCode.PROTOCOL_ERROR


def test_goaway_sent_names_the_last_stream_opened() -> None:
    conn = server()
    peer = Frames()
    conn.receive(peer.headers(1, REQUEST) + peer.headers(7, REQUEST))
    conn.data_to_send()
    conn.goaway(ErrorCode.NO_ERROR)
    assert parse(conn.data_to_send()) == [(GOAWAY, 0, 0, struct.pack(">LL", 7, 0))]
    assert conn.goaway_sent


# -- streams -------------------------------------------------------------------------------------


def test_a_request_and_its_response() -> None:
    conn = server()
    peer = Frames()
    head = peer.headers(1, [*REQUEST, (b"te", b"trailers")], end_stream=False)
    events = heads(conn.receive(head + data(1, b"body", end=True)))
    assert events == [
        (HEADERS_RECEIVED, 1, [*REQUEST, (b"te", b"trailers")], False),
        (DATA_RECEIVED, 1, b"body", 4, True),
    ]
    assert conn.streams[1].remote_ended
    conn.send_headers(1, [(b":status", b"200"), (b"content-type", b"text/plain")])
    conn.send_data(1, b"hello")
    conn.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
    frames = parse(conn.data_to_send())
    assert [(t, f) for t, f, _, _ in frames] == [(HEADERS, END_HEADERS), (DATA, 0), (HEADERS, END_HEADERS | END_STREAM)]
    assert conn.streams == {} and conn.open_inbound == 0
    with pytest.raises(H2StateError):
        conn.send_data(1, b"more")


@pytest.mark.parametrize("stream_id", [2, 0])
def test_a_client_may_not_open_even_or_zero_streams(stream_id: int) -> None:
    assert connection_error(server(), Frames().headers(stream_id, REQUEST)).code == ErrorCode.PROTOCOL_ERROR


def test_stream_ids_only_go_up() -> None:
    conn = server()
    peer = Frames()
    conn.receive(peer.headers(5, REQUEST))
    conn.send_headers(5, RESPONSE, end_stream=True)
    conn.data_to_send()
    assert 3 not in conn.streams  # skipped: closed
    assert connection_error(conn, peer.headers(5, REQUEST)).code == ErrorCode.STREAM_CLOSED


@pytest.mark.parametrize(
    "wire",
    [data(1, b"x"), rst(1, 8), window_update(1, 10), frame(CONTINUATION, END_HEADERS, 1, b"\x82")],
    ids=["data", "rst_stream", "window_update", "continuation"],
)
def test_frames_on_idle_streams(wire: bytes) -> None:
    assert connection_error(server(), wire).code == ErrorCode.PROTOCOL_ERROR


def test_frames_on_stream_zero() -> None:
    assert connection_error(server(), data(0, b"x")).code == ErrorCode.PROTOCOL_ERROR
    assert connection_error(server(), rst(0, 8)).code == ErrorCode.PROTOCOL_ERROR
    assert connection_error(server(), frame(RST_STREAM, 0, 1, b"\0" * 3)).code == ErrorCode.FRAME_SIZE_ERROR


def test_data_after_end_stream_is_stream_closed() -> None:
    conn = server()
    conn.receive(Frames().headers(1, REQUEST))  # END_STREAM: half-closed (remote)
    assert stream_error(conn, data(1, b"late"), 1) == ErrorCode.STREAM_CLOSED


def test_headers_after_end_stream_is_stream_closed() -> None:
    conn = server()
    peer = Frames()
    conn.receive(peer.headers(1, REQUEST))
    assert stream_error(conn, peer.headers(1, [(b"x", b"y")]), 1) == ErrorCode.STREAM_CLOSED


def test_frames_after_the_peer_reset_are_stream_closed() -> None:
    conn = server()
    peer = Frames()
    events = conn.receive(peer.headers(1, REQUEST, end_stream=False) + rst(1, ErrorCode.CANCEL))
    assert events[-1] == (STREAM_RESET, 1, ErrorCode.CANCEL, True)
    assert conn.streams == {}
    conn.receive(data(1, b"x"))
    assert resets(conn.data_to_send()) == {1: ErrorCode.STREAM_CLOSED}
    assert conn.receive(rst(1, 8) + window_update(1, 5) + frame(PRIORITY, 0, 1, b"\0" * 5)) == []


def test_frames_after_we_reset_are_ignored_and_their_window_returned() -> None:
    conn = server()
    peer = Frames()
    conn.receive(peer.headers(1, REQUEST, end_stream=False))
    assert conn.reset(1, ErrorCode.CANCEL)
    assert resets(conn.data_to_send()) == {1: ErrorCode.CANCEL}
    assert not conn.reset(1)  # closed: nothing more
    for _ in range(6):  # 96 KB of DATA in flight: more than the connection window, unless credited
        assert conn.receive(data(1, b"x" * 16000)) == []
    assert conn.receive(peer.headers(1, [(b"grpc-status", b"0")])) == []  # trailers in flight (decoded)
    out = parse(conn.data_to_send())
    assert [t for t, _, s, _ in out] == [WINDOW_UPDATE, WINDOW_UPDATE] and {s for _, _, s, _ in out} == {0}
    assert conn.recv_connection_window > 0


def test_data_on_a_stream_ended_both_ways_is_a_connection_error() -> None:
    conn = server()
    conn.receive(Frames().headers(1, REQUEST))
    conn.send_headers(1, RESPONSE, end_stream=True)
    conn.data_to_send()
    assert connection_error(conn, data(1, b"x")).code == ErrorCode.STREAM_CLOSED


def test_rst_and_window_update_after_our_end_stream_are_fine() -> None:
    conn = server()
    conn.receive(Frames().headers(1, REQUEST))
    conn.send_headers(1, RESPONSE, end_stream=True)
    conn.data_to_send()
    assert conn.receive(window_update(1, 100) + rst(1, ErrorCode.NO_ERROR)) == []
    assert conn.data_to_send() == b""


def test_closed_streams_are_remembered_within_bounds() -> None:
    conn = server()
    peer = Frames()
    for stream_id in range(1, 4 * CLOSED_MEMORY, 2):
        conn.receive(peer.headers(stream_id, REQUEST))
        conn.send_headers(stream_id, RESPONSE, end_stream=True)
    assert len(conn._closed) + len(conn._closed_before) <= 2 * CLOSED_MEMORY
    assert conn.receive(data(1, b"x")) == []  # forgotten: ignored
    assert resets(conn.data_to_send()) == {}


# -- concurrency ---------------------------------------------------------------------------------


def test_streams_past_the_limit_are_refused_until_one_closes() -> None:
    conn = server(max_concurrent_streams=2, stream_hard_limit=10)
    peer = Frames()
    events = conn.receive(b"".join(peer.headers(i, REQUEST) for i in (1, 3, 5, 7)))
    kinds = [(HEADERS_RECEIVED, 1), (HEADERS_RECEIVED, 3), (STREAM_REFUSED, 5), (STREAM_REFUSED, 7)]
    assert [e[:2] for e in events] == kinds
    assert resets(conn.data_to_send()) == {5: ErrorCode.REFUSED_STREAM, 7: ErrorCode.REFUSED_STREAM}
    assert conn.receive(data(5, b"x")) == []  # refused: frames in flight are ignored
    conn.send_headers(1, RESPONSE, end_stream=True)
    assert conn.receive(peer.headers(9, REQUEST))[0][:2] == (HEADERS_RECEIVED, 9)


def test_refused_streams_keep_the_hpack_context() -> None:
    conn = server(max_concurrent_streams=1, stream_hard_limit=10)
    peer = Frames()
    fields = [*REQUEST, (b"x-indexed", b"a value the encoder puts in its table")]
    conn.receive(peer.headers(1, fields) + peer.headers(3, fields))  # 3 is refused, its block decoded
    conn.send_headers(1, RESPONSE, end_stream=True)
    assert heads(conn.receive(peer.headers(5, fields))) == [(HEADERS_RECEIVED, 5, fields, True)]


def test_streams_far_past_the_limit_end_the_connection() -> None:
    conn = server(max_concurrent_streams=2, stream_hard_limit=4)
    peer = Frames()
    wire = b"".join(peer.headers(i, REQUEST) for i in range(1, 12, 2))
    error = connection_error(conn, wire)
    assert error.code == ErrorCode.PROTOCOL_ERROR and error.reason == "too_many_streams"


def test_client_respects_the_peers_stream_limit() -> None:
    conn = client()
    conn.receive(settings((Setting.MAX_CONCURRENT_STREAMS, 1)))
    conn.send_headers(conn.new_stream_id(), REQUEST, end_stream=True)
    with pytest.raises(H2StateError):
        conn.send_headers(conn.new_stream_id(), REQUEST, end_stream=True)


# -- flow control --------------------------------------------------------------------------------


def test_data_past_the_connection_window() -> None:
    conn = server(initial_window=1 << 20)
    conn.receive(Frames().headers(1, REQUEST, end_stream=False))
    for _ in range(3):
        conn.receive(data(1, b"x" * 16384))
    conn.receive(data(1, b"x" * (65535 - 3 * 16384)))
    assert connection_error(conn, data(1, b"x")).code == ErrorCode.FLOW_CONTROL_ERROR


def test_data_past_the_stream_window_is_a_stream_error() -> None:
    conn = server(connection_window=1 << 20)
    conn.receive(Frames().headers(1, REQUEST, end_stream=False))
    for _ in range(3):
        conn.receive(data(1, b"x" * 16384))
    conn.receive(data(1, b"x" * (65535 - 3 * 16384)))
    assert stream_error(conn, data(1, b"x"), 1) == ErrorCode.FLOW_CONTROL_ERROR


def test_credit_goes_back_in_batches_of_half_a_window() -> None:
    conn = server()
    conn.receive(Frames().headers(1, REQUEST, end_stream=False))
    ((_, _, payload, length, _),) = conn.receive(data(1, b"x" * 16000, pad=10))
    assert payload == b"x" * 16000
    assert length == 16011
    conn.acknowledge(1, length)
    assert conn.data_to_send() == b""  # less than half a window owed
    conn.receive(data(1, b"x" * 9000) + data(1, b"x" * 8000))
    conn.acknowledge(1, 17000)
    updates = {s: int.from_bytes(p, "big") for t, _, s, p in parse(conn.data_to_send()) if t == WINDOW_UPDATE}
    assert updates == {0: 33011, 1: 33011}
    assert conn.recv_connection_window == 65535 and conn.streams[1].recv_window == 65535


def test_padding_only_frames_are_credited_at_once() -> None:
    conn = server()
    conn.receive(Frames().headers(1, REQUEST, end_stream=False))
    assert conn.receive(data(1, b"", pad=200)) == []
    assert conn.receive(data(1, b"", pad=0, end=True)) == [(DATA_RECEIVED, 1, b"", 0, True)]


def test_send_window_and_peer_window_updates() -> None:
    conn = server()
    conn.receive(Frames().headers(1, REQUEST))
    conn.send_headers(1, RESPONSE)
    assert conn.send_window(1) == 65535
    conn.send_data(1, b"x" * 65535)
    assert conn.send_window(1) == 0
    with pytest.raises(H2StateError):
        conn.send_data(1, b"x")
    assert conn.receive(window_update(1, 100)) == [(WINDOW_OPENED, 1)]
    assert conn.send_window(1) == 0  # the connection window is still shut
    assert conn.receive(window_update(0, 50)) == [(WINDOW_OPENED, 0)]
    assert conn.send_window(1) == 50


def test_data_is_split_to_the_peers_frame_size() -> None:
    conn = server()
    conn.receive(Frames().headers(1, REQUEST) + window_update(0, 100000) + window_update(1, 100000))
    conn.send_headers(1, RESPONSE)
    conn.data_to_send()
    conn.send_data(1, b"x" * 40000, end_stream=True)
    frames = parse(conn.data_to_send())
    assert [(len(p), f) for _, f, _, p in frames] == [(16384, 0), (16384, 0), (7232, END_STREAM)]
    conn = server()
    conn.receive(settings((Setting.MAX_FRAME_SIZE, 40000)) + Frames().headers(1, REQUEST) + window_update(0, 1 << 20))
    conn.receive(window_update(1, 1 << 20))
    conn.data_to_send()
    conn.send_data(1, b"x" * 40000)
    assert [len(p) for _, _, _, p in parse(conn.data_to_send())] == [40000]


def test_initial_window_size_changes_apply_to_open_streams() -> None:
    conn = server()
    conn.receive(Frames().headers(1, REQUEST))
    conn.send_headers(1, RESPONSE)
    conn.send_data(1, b"x" * 1000)
    events = conn.receive(settings((Setting.INITIAL_WINDOW_SIZE, 500)))
    assert events[-1] == (WINDOW_OPENED, 0)
    assert conn.streams[1].send_window == -500
    assert conn.send_window(1) == -500
    conn.receive(settings((Setting.INITIAL_WINDOW_SIZE, 2000)))
    assert conn.send_window(1) == 1000
    assert len(conn.receive(settings((Setting.INITIAL_WINDOW_SIZE, 2000)))) == 1  # unchanged: no window event


def test_window_overflows() -> None:
    conn = server()
    conn.receive(Frames().headers(1, REQUEST))
    assert stream_error(conn, window_update(1, 2**31 - 1), 1) == ErrorCode.FLOW_CONTROL_ERROR
    assert connection_error(server(), window_update(0, 2**31 - 1)).code == ErrorCode.FLOW_CONTROL_ERROR
    conn = server()
    conn.receive(Frames().headers(1, REQUEST) + window_update(1, 2**31 - 65536))
    assert connection_error(conn, settings((Setting.INITIAL_WINDOW_SIZE, 65536))).code == ErrorCode.FLOW_CONTROL_ERROR


def test_window_update_of_zero() -> None:
    conn = server()
    conn.receive(Frames().headers(1, REQUEST))
    assert stream_error(conn, window_update(1, 0), 1) == ErrorCode.PROTOCOL_ERROR
    assert connection_error(server(), window_update(0, 0)).code == ErrorCode.PROTOCOL_ERROR
    assert connection_error(server(), frame(WINDOW_UPDATE, 0, 0, b"\0\0\1")).code == ErrorCode.FRAME_SIZE_ERROR


# -- header blocks -------------------------------------------------------------------------------


def test_header_block_across_continuation_frames() -> None:
    peer = Frames()
    fields = [*REQUEST, (b"x-big", b"v" * 40000)]
    block = peer.block(fields)
    pieces = [block[i : i + 16384] for i in range(0, len(block), 16384)]
    wire = frame(HEADERS, END_STREAM, 1, pieces[0])
    for i, piece in enumerate(pieces[1:], 2):
        wire += frame(CONTINUATION, END_HEADERS if i == len(pieces) else 0, 1, piece)
    conn = server(max_header_list=100000)
    assert heads(conn.receive(wire)) == [(HEADERS_RECEIVED, 1, fields, True)]


def test_continuation_rules() -> None:
    peer = Frames()
    head = peer.headers(1, REQUEST, end_headers=False)
    assert connection_error(server(), frame(CONTINUATION, END_HEADERS, 1, b"")).code == ErrorCode.PROTOCOL_ERROR
    assert connection_error(server(), head + frame(CONTINUATION, END_HEADERS, 3, b"")).code == ErrorCode.PROTOCOL_ERROR
    assert connection_error(server(), head + ping()).code == ErrorCode.PROTOCOL_ERROR


def test_header_block_bounded_in_bytes_while_buffered() -> None:
    conn = server(max_header_block=40000)
    piece = b"\x82" * 16000
    conn.receive(frame(HEADERS, 0, 1, piece) + frame(CONTINUATION, 0, 1, piece))
    error = connection_error(conn, frame(CONTINUATION, 0, 1, piece))
    assert (error.code, error.reason) == (ErrorCode.ENHANCE_YOUR_CALM, "continuation_flood")


def test_header_block_bounded_in_frames() -> None:
    conn = server()
    wire = Frames().headers(1, REQUEST, end_headers=False) + frame(CONTINUATION, 0, 1) * MAX_CONTINUATIONS
    error = connection_error(conn, wire)
    assert (error.code, error.reason) == (ErrorCode.PROTOCOL_ERROR, "continuation_flood")


def test_hpack_bomb_stops_at_the_list_bound() -> None:
    conn = server(max_header_list=30000)
    peer = Frames()
    wire = peer.headers(1, [*REQUEST, *[(b"x-bomb", b"a" * 4000)] * 1000])
    assert len(wire) < 10000
    error = connection_error(conn, wire)
    assert (error.code, error.reason) == (ErrorCode.ENHANCE_YOUR_CALM, "hpack_bomb")


def test_undecodable_header_block() -> None:
    error = connection_error(server(), frame(HEADERS, END_HEADERS, 1, b"\x80"))  # index 0
    assert error.code == ErrorCode.COMPRESSION_ERROR


MALFORMED_REQUESTS = {
    "upper-case name": [*REQUEST, (b"X-Upper", b"1")],
    "connection": [*REQUEST, (b"connection", b"close")],
    "transfer-encoding": [*REQUEST, (b"transfer-encoding", b"chunked")],
    "upgrade": [*REQUEST, (b"upgrade", b"websocket")],
    "keep-alive": [*REQUEST, (b"keep-alive", b"5")],
    "proxy-connection": [*REQUEST, (b"proxy-connection", b"close")],
    "te gzip": [*REQUEST, (b"te", b"gzip")],
    "no method": REQUEST[1:],
    "no path": REQUEST[:3],
    "no scheme": [REQUEST[0], *REQUEST[2:]],
    "two paths": [*REQUEST, (b":path", b"/x")],
    "pseudo after regular": [*REQUEST[:3], (b"accept", b"*/*"), REQUEST[3]],
    "unknown pseudo": [*REQUEST, (b":protocol", b"websocket")],
    "status in a request": [*REQUEST, (b":status", b"200")],
    "empty path": [*REQUEST[:3], (b":path", b"")],
    "absolute path": [*REQUEST[:3], (b":path", b"http://elsewhere/")],
    "space in path": [*REQUEST[:3], (b":path", b"/a b")],
    "bad method": [(b":method", b"G T"), *REQUEST[1:]],
    "bad scheme": [REQUEST[0], (b":scheme", b"ht tp"), *REQUEST[2:]],
    "bad authority": [*REQUEST[:2], (b":authority", b"a/b"), REQUEST[3]],
    "CR in value": [*REQUEST, (b"x", b"a\rb")],
    "LF in value": [*REQUEST, (b"x", b"a\nb")],
    "NUL in value": [*REQUEST, (b"x", b"a\0b")],
    "control in value": [*REQUEST, (b"x", b"a\x01b")],
    "DEL in value": [*REQUEST, (b"x", b"a\x7fb")],
    "leading space": [*REQUEST, (b"x", b" a")],
    "trailing tab": [*REQUEST, (b"x", b"a\t")],
    "space in name": [*REQUEST, (b"x y", b"1")],
    "colon in name": [*REQUEST, (b"x:y", b"1")],
    "empty name": [*REQUEST, (b"", b"1")],
    "host differs": [*REQUEST, (b"host", b"elsewhere")],
    "two hosts": [*REQUEST[:2], REQUEST[3], (b"host", b"a"), (b"host", b"a")],
    "no authority nor host": [*REQUEST[:2], REQUEST[3]],
    "content-length not digits": [*REQUEST, (b"content-length", b"-1")],
    "differing content-lengths": [*REQUEST, (b"content-length", b"1"), (b"content-length", b"2")],
    "CONNECT with a path": [(b":method", b"CONNECT"), (b":authority", b"a:443"), (b":path", b"/")],
}


@pytest.mark.parametrize("fields", MALFORMED_REQUESTS.values(), ids=MALFORMED_REQUESTS.keys())
def test_malformed_requests_are_stream_errors(fields: list[tuple[bytes, bytes]]) -> None:
    conn = server()
    peer = Frames()
    assert stream_error(conn, peer.headers(1, fields), 1) == ErrorCode.PROTOCOL_ERROR
    assert conn.receive(peer.headers(3, REQUEST))[0][:2] == (HEADERS_RECEIVED, 3)  # the connection goes on


WELL_FORMED_REQUESTS = {
    "te trailers": [*REQUEST, (b"te", b"Trailers")],
    "CONNECT": [(b":method", b"CONNECT"), (b":authority", b"db:5432")],
    "OPTIONS *": [(b":method", b"OPTIONS"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"*")],
    "host alone": [*REQUEST[:2], REQUEST[3], (b"host", b"orders")],
    "host and authority equal": [*REQUEST, (b"host", b"orders")],
    "equal content-lengths": [*REQUEST, (b"content-length", b"0"), (b"content-length", b"0")],
    "empty value and inner spaces": [*REQUEST, (b"x-empty", b""), (b"x-words", b"a  b\tc"), (b"x-high", b"\xff\x80")],
}


@pytest.mark.parametrize("fields", WELL_FORMED_REQUESTS.values(), ids=WELL_FORMED_REQUESTS.keys())
def test_well_formed_requests(fields: list[tuple[bytes, bytes]]) -> None:
    conn = server()
    assert heads(conn.receive(Frames().headers(1, fields))) == [(HEADERS_RECEIVED, 1, fields, True)]


def test_cookies_are_joined() -> None:
    conn = server()
    fields = [*REQUEST, (b"cookie", b"a=1"), (b"accept", b"*/*"), (b"cookie", b"b=2")]
    (event,) = conn.receive(Frames().headers(1, fields))
    assert event[2] == [*REQUEST, (b"cookie", b"a=1; b=2"), (b"accept", b"*/*")]


def test_content_length_against_the_data() -> None:
    peer = Frames()
    with_length = [*REQUEST, (b"content-length", b"5")]
    conn = server()
    conn.receive(peer.headers(1, with_length, end_stream=False) + data(1, b"abc"))
    assert stream_error(conn, data(1, b"abc"), 1) == ErrorCode.PROTOCOL_ERROR  # more than declared
    conn = server()
    peer = Frames()
    conn.receive(peer.headers(1, with_length, end_stream=False) + data(1, b"abc"))
    assert stream_error(conn, data(1, b"", end=True), 1) == ErrorCode.PROTOCOL_ERROR  # less
    conn = server()
    peer = Frames()
    assert stream_error(conn, peer.headers(1, with_length), 1) == ErrorCode.PROTOCOL_ERROR  # none at all
    conn = server()
    peer = Frames()
    conn.receive(peer.headers(1, with_length, end_stream=False) + data(1, b"abc"))
    assert stream_error(conn, peer.headers(1, [(b"x", b"y")]), 1) == ErrorCode.PROTOCOL_ERROR  # trailers early
    conn = server()
    peer = Frames()
    events = conn.receive(peer.headers(1, with_length, end_stream=False) + data(1, b"abc") + data(1, b"de", end=True))
    assert events[-1] == (DATA_RECEIVED, 1, b"de", 2, True)


def test_request_trailers() -> None:
    conn = server()
    peer = Frames()
    conn.receive(peer.headers(1, REQUEST, end_stream=False) + data(1, b"x"))
    trailers = conn.receive(peer.headers(1, [(b"x-checksum", b"1")]))
    assert trailers == [(TRAILERS_RECEIVED, 1, [(b"x-checksum", b"1")], 43)]  # 43: name, value and 32
    conn = server()
    peer = Frames()
    conn.receive(peer.headers(1, REQUEST, end_stream=False))
    assert stream_error(conn, peer.headers(1, [(b"x", b"1")], end_stream=False), 1) == ErrorCode.PROTOCOL_ERROR
    conn = server()
    peer = Frames()
    conn.receive(peer.headers(1, REQUEST, end_stream=False))
    assert stream_error(conn, peer.headers(1, [(b":path", b"/")]), 1) == ErrorCode.PROTOCOL_ERROR


# -- the client side -----------------------------------------------------------------------------


def test_client_request_and_response() -> None:
    conn = client()
    stream_id = conn.new_stream_id()
    assert stream_id == 1
    conn.send_headers(stream_id, [*REQUEST[:1], *REQUEST[1:]], end_stream=True)
    assert conn.new_stream_id() == 3
    peer = Frames()
    events = heads(
        conn.receive(
            peer.headers(1, [(b":status", b"100")], end_stream=False)
            + peer.headers(1, [(b":status", b"200"), (b"content-length", b"2")], end_stream=False)
            + data(1, b"ok")
            + peer.headers(1, [(b"grpc-status", b"0")])
        )
    )
    assert events == [
        (INFORMATIONAL_RECEIVED, 1, [(b":status", b"100")]),
        (HEADERS_RECEIVED, 1, [(b":status", b"200"), (b"content-length", b"2")], False),
        (DATA_RECEIVED, 1, b"ok", 2, False),
        (TRAILERS_RECEIVED, 1, [(b"grpc-status", b"0")], 44),
    ]
    assert conn.streams == {} and conn.open_outbound == 0


@pytest.mark.parametrize(
    "fields",
    [
        [(b"x", b"1"), (b":status", b"200")],
        [(b":status", b"20")],
        [(b":status", b"2xx")],
        [(b":status", b"200"), (b":status", b"200")],
        [(b":status", b"200"), (b":path", b"/")],
        [(b":status", b"200"), (b"connection", b"close")],
        [(b":status", b"200"), (b"Upper", b"1")],
        [(b":status", b"101")],
    ],
)
def test_malformed_responses_are_stream_errors(fields: list[tuple[bytes, bytes]]) -> None:
    conn = client()
    conn.send_headers(1, REQUEST, end_stream=True)
    conn.data_to_send()
    assert stream_error(conn, Frames().headers(1, fields, end_stream=False), 1) == ErrorCode.PROTOCOL_ERROR


def test_client_side_stream_errors() -> None:
    peer = Frames()
    conn = client()
    conn.send_headers(1, REQUEST, end_stream=True)
    assert stream_error(conn, data(1, b"x"), 1) == ErrorCode.PROTOCOL_ERROR  # DATA before the head
    conn = client()
    peer = Frames()
    conn.send_headers(1, REQUEST, end_stream=True)
    assert stream_error(conn, peer.headers(1, [(b":status", b"103")]), 1) == ErrorCode.PROTOCOL_ERROR  # 1xx ends
    conn = client()
    peer = Frames()
    conn.send_headers(1, REQUEST, end_stream=True)
    conn.receive(peer.headers(1, RESPONSE, end_stream=False))
    assert stream_error(conn, peer.headers(1, [(b"x", b"1")], end_stream=False), 1) == ErrorCode.PROTOCOL_ERROR


def test_head_and_304_responses_carry_a_length_without_data() -> None:
    for method, status in ((b"HEAD", b"200"), (b"GET", b"304"), (b"GET", b"204")):
        conn = client()
        conn.send_headers(1, [(b":method", method), *REQUEST[1:]], end_stream=True)
        fields = [(b":status", status), (b"content-length", b"1234")]
        assert heads(conn.receive(Frames().headers(1, fields))) == [(HEADERS_RECEIVED, 1, fields, True)]


def test_the_server_may_not_open_streams() -> None:
    conn = client()
    assert connection_error(conn, Frames().headers(2, REQUEST)).code == ErrorCode.PROTOCOL_ERROR


def test_client_stream_reset_by_the_server() -> None:
    conn = client()
    conn.send_headers(1, REQUEST, end_stream=False)
    assert conn.receive(rst(1, ErrorCode.REFUSED_STREAM)) == [(STREAM_RESET, 1, ErrorCode.REFUSED_STREAM, True)]
    with pytest.raises(H2StateError):
        conn.send_data(1, b"x")
    assert connection_error(client(), rst(1, 0)).code == ErrorCode.PROTOCOL_ERROR  # never opened


def test_large_header_blocks_go_out_in_continuation_frames() -> None:
    conn = client()
    fields = [*REQUEST, (b"x-big", b"v" * 40000)]
    conn.send_headers(1, fields, end_stream=True)
    frames = parse(conn.data_to_send())
    assert [(t, f) for t, f, _, _ in frames] == [(HEADERS, END_STREAM), (CONTINUATION, 0), (CONTINUATION, END_HEADERS)]
    peer = server(max_header_list=100000)
    assert heads(peer.receive(b"".join(frame(t, f, s, p) for t, f, s, p in frames))) == [
        (HEADERS_RECEIVED, 1, fields, True)
    ]


def test_the_pending_buffer_holds_at_most_one_frame() -> None:
    conn = server()
    conn.receive(Frames().headers(1, REQUEST, end_stream=False))
    wire = data(1, b"x" * 16384) * 3
    for i in range(0, len(wire), 1000):
        conn.receive(wire[i : i + 1000])
        assert len(conn._pending) <= 9 + 16384
