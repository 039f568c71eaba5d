"""Hostile input: random frames (any type, flags, stream ids, lengths, payloads, valid header blocks
and mangled ones) fed to both sides of our HTTP/2 codec, cut anywhere. The codec may only answer
with events or `H2ConnectionError`, never another exception, and its bookkeeping stays bounded and
consistent."""

from __future__ import annotations

import struct

import hpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.http.h2_conn import CLOSED_MEMORY, PREFACE, H2Connection, H2ConnectionError
from tests.http.h2_frames import REQUEST, frame

_encoder = hpack.Encoder()
BLOCKS = [
    _encoder.encode(REQUEST),
    _encoder.encode([*REQUEST, (b"content-length", b"3")]),
    _encoder.encode([(b":status", b"200")]),
    _encoder.encode([(b":status", b"100")]),
    _encoder.encode([(b"grpc-status", b"0")]),
    _encoder.encode([*REQUEST, (b"x-big", b"v" * 3000)]),
    b"\x80",  # index 0
    b"\x3f\xe2\x1f",  # table size over the limit
    b"",
]

payloads = st.one_of(
    st.binary(max_size=64),
    st.sampled_from(BLOCKS),
    st.builds(lambda block, cut: block[:cut], st.sampled_from(BLOCKS), st.integers(0, 40)),
    st.builds(lambda n: struct.pack(">L", n), st.integers(0, 2**32 - 1)),
    st.builds(lambda a, b: struct.pack(">HL", a, b), st.integers(0, 10), st.integers(0, 2**32 - 1)),
    st.builds(lambda pad, block: bytes([pad]) + block, st.integers(0, 255), st.sampled_from(BLOCKS)),
)
frames = st.builds(
    frame,
    st.integers(0, 12),  # the ten types, and unknown ones
    st.integers(0, 255),  # any flags
    st.sampled_from([0, 1, 2, 3, 4, 5, 7, 9, 2**31 - 1]),
    payloads,
)


FIELDS = [
    REQUEST,
    [*REQUEST, (b"content-length", b"3")],
    [(b":method", b"POST"), (b":scheme", b"https"), (b":authority", b"a"), (b":path", b"/x"), (b"te", b"trailers")],
    [(b":status", b"200")],
    [(b":status", b"204"), (b"content-length", b"0")],
    [(b":status", b"103"), (b"link", b"</a>")],
    [(b"grpc-status", b"0"), (b"grpc-message", b"ok")],
    [*REQUEST, (b"Upper", b"x")],
    [*REQUEST, (b"x-big", b"v" * 3000)],
    [(b"cookie", b"a=1"), (b"cookie", b"b=2")],
]


KINDS = ["headers", "split", "data", "data", "window", "rst", "settings", "ping", "priority", "goaway", "any"]


@st.composite
def conversations(draw: st.DrawFn) -> bytes:
    """Frames that are mostly well formed (so that a conversation goes on for a while), on a few
    streams, with header blocks from one HPACK context, now and then broken on purpose."""
    encoder = hpack.Encoder()
    out = []
    opened: list[int] = []
    for _ in range(draw(st.integers(1, 40))):
        kind = (
            "headers"
            if not opened
            else draw(
                st.sampled_from(
                    ["headers", "split", "data", "window", "rst", "settings", "ping", "priority", "goaway", "any"]
                )
            )
        )
        if kind in ("headers", "split"):
            last = opened[-1] if opened else -1
            sid = draw(st.sampled_from([last + 2] * 20 + [max(last, 0), 2, 0]))  # mostly a new stream
            opened.append(max(sid, last))
        else:
            sid = draw(st.sampled_from(opened * 20 + [0, 2, opened[-1] + 2]))  # mostly a stream opened
        if kind in ("headers", "split"):
            block = encoder.encode(draw(st.sampled_from(FIELDS)), huffman=draw(st.booleans()))
            end = 0x1 if draw(st.booleans()) else 0
            if kind == "headers":
                out.append(frame(1, end | 0x4, sid, block))
            else:
                cut = draw(st.integers(0, len(block)))
                out.append(frame(1, end, sid, block[:cut]) + frame(9, 0x4, sid, block[cut:]))
        elif kind == "data":
            out.append(frame(0, draw(st.sampled_from([0, 1])), sid, draw(st.binary(max_size=50))))
        elif kind == "window":
            out.append(frame(8, 0, sid, struct.pack(">L", draw(st.integers(0, 70_000)))))
        elif kind == "rst":
            out.append(frame(3, 0, sid, struct.pack(">L", draw(st.integers(0, 14)))))
        elif kind == "settings":
            setting = st.one_of(
                st.tuples(st.sampled_from([1, 3, 4, 6]), st.integers(0, 70_000)),
                st.tuples(st.just(5), st.integers(16384, 20000)),
                st.tuples(st.integers(1, 8), st.integers(0, 70_000)),  # maybe invalid
            )
            pairs = draw(st.lists(setting, max_size=3))
            out.append(frame(4, 0, 0, b"".join(struct.pack(">HL", k, v) for k, v in pairs)))
        elif kind == "ping":
            out.append(frame(6, draw(st.sampled_from([0, 1])), 0, b"12345678"))
        elif kind == "priority":
            out.append(frame(2, 0, sid, struct.pack(">LB", draw(st.sampled_from([0, 1, sid])), 16)))
        elif kind == "goaway":
            out.append(frame(7, 0, 0, struct.pack(">LL", draw(st.integers(0, 11)), draw(st.integers(0, 14)))))
        else:
            out.append(draw(frames))
    return b"".join(out)


def check(conn: H2Connection) -> None:
    inbound = sum(1 for sid in conn.streams if sid & 1 == (0 if conn.client else 1))
    assert conn.open_inbound == inbound
    assert conn.open_outbound == len(conn.streams) - inbound
    assert len(conn._pending) <= 9 + conn.local_max_frame + 65536
    assert len(conn._closed) + len(conn._closed_before) <= 2 * CLOSED_MEMORY
    assert conn._block_size <= conn.max_header_block


def feed(conn: H2Connection, wire: bytes, cuts: list[int]) -> None:
    pieces = []
    start = 0
    for cut in sorted(c % (len(wire) + 1) for c in cuts):
        pieces.append(wire[start:cut])
        start = cut
    pieces.append(wire[start:])
    for piece in pieces:
        try:
            conn.receive(piece)
        except H2ConnectionError:
            assert conn.closed
            return
        finally:
            check(conn)
            conn.data_to_send()


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.lists(frames, max_size=30), st.lists(st.integers(0, 10_000), max_size=5))
def test_the_server_side_survives_any_frames(wire: list[bytes], cuts: list[int]) -> None:
    conn = H2Connection(client=False, max_concurrent_streams=3, stream_hard_limit=5, max_header_block=4000)
    conn.initiate()
    feed(conn, PREFACE + frame(4, 0, 0) + b"".join(wire), cuts)


@SETTINGS
@given(st.lists(frames, max_size=30), st.lists(st.integers(0, 10_000), max_size=5), st.integers(0, 3))
def test_the_client_side_survives_any_frames(wire: list[bytes], cuts: list[int], requests: int) -> None:
    conn = H2Connection(client=True, max_header_block=4000)
    conn.initiate()
    for _ in range(requests):
        conn.send_headers(conn.new_stream_id(), REQUEST, end_stream=False)
    feed(conn, frame(4, 0, 0) + b"".join(wire), cuts)


@SETTINGS
@given(st.binary(max_size=2000))
def test_any_bytes_after_the_preface(data: bytes) -> None:
    conn = H2Connection(client=False, max_concurrent_streams=3, stream_hard_limit=5)
    feed(conn, PREFACE + data, [])


@SETTINGS
@given(conversations(), st.lists(st.integers(0, 10_000), max_size=5))
def test_the_server_side_through_long_conversations(wire: bytes, cuts: list[int]) -> None:
    conn = H2Connection(client=False, max_concurrent_streams=3, stream_hard_limit=5, max_header_block=4000)
    conn.initiate()
    feed(conn, PREFACE + frame(4, 0, 0) + wire, cuts)


@SETTINGS
@given(conversations(), st.lists(st.integers(0, 10_000), max_size=5), st.integers(0, 6))
def test_the_client_side_through_long_conversations(wire: bytes, cuts: list[int], requests: int) -> None:
    conn = H2Connection(client=True, max_header_block=4000)
    conn.initiate()
    for _ in range(requests):
        conn.send_headers(conn.new_stream_id(), REQUEST, end_stream=requests % 2 == 0)
    feed(conn, frame(4, 0, 0) + wire, cuts)
