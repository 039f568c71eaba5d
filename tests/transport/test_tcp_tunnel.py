"""sidecar.transport.tcp_tunnel: the frames of the sidecar-tcp/1 tunnel (sans-IO `FrameDecoder`: any
split of a valid stream decodes to the same bytes, the end frame, what may not follow it, oversized
frames) and the tunnel's end as the relay sees it (`TunnelSide`, the port that opens a tunnel) over a
real loopback TCP pair standing in for the TLS stream."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from sidecar.tls import ALPN_TCP as TLS_ALPN_TCP
from sidecar.transport.relay import TunnelError
from sidecar.transport.tcp import TcpStream
from sidecar.transport.tcp_tunnel import (
    ALPN_TCP,
    HEADER,
    MAX_FRAME,
    FrameDecoder,
    TunnelSide,
    receive_port,
    send_port,
)


def frame(payload: bytes) -> bytes:
    return struct.pack("!I", len(payload)) + payload


END = b"\x00\x00\x00\x00"


def decode_all(decoder: FrameDecoder, pieces: list[bytes]) -> bytes:
    return b"".join(decoder.feed(piece) for piece in pieces)


# --------------------------------------------------------------------------------------------------
# FrameDecoder
# --------------------------------------------------------------------------------------------------


def test_one_frame_in_one_feed() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(frame(b"hello")) == b"hello"
    assert not decoder.ended


def test_a_header_split_across_feeds() -> None:
    decoder = FrameDecoder()
    data = frame(b"abcdef")
    assert decoder.feed(data[:1]) == b""
    assert decoder.feed(data[1:3]) == b""
    assert decoder.feed(data[3:5]) == b"a"  # the header's last byte, and the first payload byte
    assert decoder.feed(data[5:]) == b"bcdef"
    assert not decoder.ended


def test_a_payload_split_across_feeds_comes_out_as_it_arrives() -> None:
    decoder = FrameDecoder()
    data = frame(b"x" * 1000)
    assert decoder.feed(data[:504]) == b"x" * 500
    assert decoder.feed(data[504:]) == b"x" * 500


def test_several_frames_in_one_feed() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(frame(b"one") + frame(b"two") + frame(b"three")) == b"onetwothree"
    assert decoder.feed(frame(b"four") + frame(b"fi")[:3]) == b"four"
    assert decoder.feed(frame(b"fi")[3:]) == b"fi"


def test_an_empty_feed_is_nothing() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"") == b""
    assert not decoder.ended


def test_the_end_frame_ends_the_stream() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(frame(b"last") + END) == b"last"
    assert decoder.ended
    assert decoder.feed(b"") == b""  # nothing more is fine


def test_the_end_frame_split_across_feeds() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(frame(b"x") + END[:2]) == b"x"
    assert not decoder.ended
    assert decoder.feed(END[2:]) == b""
    assert decoder.ended


def test_bytes_after_the_end_frame_in_the_same_feed_are_an_error() -> None:
    decoder = FrameDecoder()
    with pytest.raises(TunnelError):
        decoder.feed(END + b"\x00")


def test_bytes_after_the_end_frame_in_a_later_feed_are_an_error() -> None:
    decoder = FrameDecoder()
    decoder.feed(frame(b"a") + END)
    with pytest.raises(TunnelError):
        decoder.feed(frame(b"more"))
    with pytest.raises(TunnelError):
        decoder.feed(END)


def test_a_frame_of_max_frame_bytes_is_fine_one_more_is_an_error() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(frame(b"z" * MAX_FRAME)) == b"z" * MAX_FRAME
    with pytest.raises(TunnelError):
        FrameDecoder().feed(HEADER.pack(MAX_FRAME + 1))
    with pytest.raises(TunnelError):
        FrameDecoder().feed(b"\xff\xff\xff\xff")


def test_an_oversized_header_split_across_feeds_is_an_error_at_its_last_byte() -> None:
    decoder = FrameDecoder()
    header = HEADER.pack(MAX_FRAME + 1)
    assert decoder.feed(frame(b"ok") + header[:3]) == b"ok"
    with pytest.raises(TunnelError):
        decoder.feed(header[3:])


def test_the_alpn_protocol_is_the_same_in_tls_and_the_tunnel() -> None:
    assert ALPN_TCP == TLS_ALPN_TCP == "sidecar-tcp/1"


payloads = st.lists(st.binary(min_size=1, max_size=300), max_size=12)


@st.composite
def split_streams(draw: st.DrawFn) -> tuple[list[bytes], list[bytes], bool]:
    """Payloads, their frame stream (with or without the end frame) cut at arbitrary points."""
    chunks = draw(payloads)
    ended = draw(st.booleans())
    stream = b"".join(frame(c) for c in chunks) + (END if ended else b"")
    cuts = sorted(draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=20)))
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    return chunks, pieces, ended


@given(split_streams())
def test_any_split_of_a_valid_frame_stream_decodes_to_the_same_payload(
    case: tuple[list[bytes], list[bytes], bool],
) -> None:
    chunks, pieces, ended = case
    decoder = FrameDecoder()
    assert decode_all(decoder, pieces) == b"".join(chunks)
    assert decoder.ended is ended


@given(payloads, st.binary(min_size=1, max_size=10))
def test_any_bytes_after_the_end_frame_are_refused_in_the_same_feed_or_a_later_one(
    chunks: list[bytes], extra: bytes
) -> None:
    stream = b"".join(frame(c) for c in chunks) + END
    with pytest.raises(TunnelError):
        FrameDecoder().feed(stream + extra)
    decoder = FrameDecoder()
    assert decoder.feed(stream) == b"".join(chunks)
    with pytest.raises(TunnelError):
        decoder.feed(extra)


# --------------------------------------------------------------------------------------------------
# TunnelSide, send_port / receive_port over a loopback TCP pair (the TLS stream's place)
# --------------------------------------------------------------------------------------------------


def tcp_socket_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    return client, accepted


@pytest.fixture
async def pair() -> AsyncIterator[tuple[TcpStream, trio.SocketStream]]:
    """Our end (the tunnel's stream, as the sidecar holds it) and the peer sidecar's raw end."""
    ours, theirs = tcp_socket_pair()
    stream = TcpStream(ours)
    peer = trio.SocketStream(trio.socket.from_stdlib_socket(theirs))
    try:
        yield stream, peer
    finally:
        stream.close_now()
        await peer.aclose()


def tunnel_side(stream: TcpStream, first: bytes = b"") -> TunnelSide:
    return TunnelSide(cast(Any, stream), first)


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    got = b""
    with trio.fail_after(5):
        while len(got) < size:
            data = await stream.receive_some(size - len(got))
            assert data, f"ended after {len(got)} of {size} bytes"
            got += data
    return got


async def test_the_port_opens_the_tunnel_and_bytes_after_it_are_kept(
    pair: tuple[TcpStream, trio.SocketStream],
) -> None:
    stream, peer = pair
    await peer.send_all(struct.pack("!H", 6379) + frame(b"PING"))
    with trio.fail_after(5):
        port, first = await receive_port(cast(Any, stream))
        while len(first) < 8:  # the frame may come in its own segment
            first += await stream.receive_some()
    assert port == 6379
    side = tunnel_side(stream, first)
    with trio.fail_after(5):
        assert await side.receive() == b"PING"


async def test_the_port_split_in_two_reads(pair: tuple[TcpStream, trio.SocketStream]) -> None:
    stream, peer = pair
    async with trio.open_nursery() as nursery:
        got: list[tuple[int, bytes]] = []

        async def take() -> None:
            got.append(await receive_port(cast(Any, stream)))

        nursery.start_soon(take)
        await peer.send_all(b"\x19")
        await trio.sleep(0.05)
        await peer.send_all(b"\xeb")
    assert got == [(6635, b"")]


async def test_a_tunnel_that_ends_before_its_port_is_an_error(pair: tuple[TcpStream, trio.SocketStream]) -> None:
    stream, peer = pair
    await peer.send_all(b"\x18")
    await peer.send_eof()
    with trio.fail_after(5), pytest.raises(TunnelError):
        await receive_port(cast(Any, stream))


async def test_send_port_writes_two_bytes_big_endian(pair: tuple[TcpStream, trio.SocketStream]) -> None:
    stream, peer = pair
    await send_port(cast(Any, stream), 5432)
    assert await receive_exactly(peer, 2) == b"\x15\x38"


async def test_tunnel_side_frames_what_it_sends_and_ends_with_an_empty_frame(
    pair: tuple[TcpStream, trio.SocketStream],
) -> None:
    stream, peer = pair
    side = tunnel_side(stream)
    await side.send(b"hello")
    await side.send(b"x" * 70000)
    await side.send_eof()
    expected = frame(b"hello") + frame(b"x" * 70000) + END
    assert await receive_exactly(peer, len(expected)) == expected


async def test_tunnel_side_receives_payloads_then_the_end_then_nothing_more(
    pair: tuple[TcpStream, trio.SocketStream],
) -> None:
    stream, peer = pair
    side = tunnel_side(stream)
    await peer.send_all(frame(b"abc") + frame(b"def"))
    got = b""
    with trio.fail_after(5):
        while len(got) < 6:
            got += await side.receive()
    assert got == b"abcdef"
    await peer.send_all(frame(b"g") + END)
    with trio.fail_after(5):
        rest = b""
        while (data := await side.receive()) != b"":
            rest += data
        assert rest == b"g"
        assert await side.receive() == b""  # and ever after


async def test_tunnel_side_headers_only_read_waits_for_the_payload(pair: tuple[TcpStream, trio.SocketStream]) -> None:
    stream, peer = pair
    side = tunnel_side(stream)
    await peer.send_all(HEADER.pack(3))
    async with trio.open_nursery() as nursery:
        got: list[bytes] = []

        async def take() -> None:
            got.append(await side.receive())

        nursery.start_soon(take)
        await trio.sleep(0.05)
        assert got == []  # no empty read that the relay could take for the end
        await peer.send_all(b"xyz")
    assert got == [b"xyz"]


async def test_a_tunnel_cut_without_its_end_frame_is_an_error(pair: tuple[TcpStream, trio.SocketStream]) -> None:
    stream, peer = pair
    side = tunnel_side(stream)
    await peer.send_all(frame(b"partial")[:6])
    await peer.send_eof()  # a bare FIN: not the tunnel's end
    with trio.fail_after(5), pytest.raises(TunnelError):
        while True:
            await side.receive()


async def test_a_tunnel_that_sends_after_its_end_is_an_error(pair: tuple[TcpStream, trio.SocketStream]) -> None:
    stream, peer = pair
    side = tunnel_side(stream)
    await peer.send_all(END + frame(b"sneaky"))
    with trio.fail_after(5), pytest.raises(TunnelError):
        await side.receive()


async def test_an_oversized_frame_from_the_peer_is_an_error(pair: tuple[TcpStream, trio.SocketStream]) -> None:
    stream, peer = pair
    side = tunnel_side(stream)
    await peer.send_all(HEADER.pack(MAX_FRAME + 1) + b"x" * 100)
    with trio.fail_after(5), pytest.raises(TunnelError):
        await side.receive()


async def test_abort_resets_the_connection(pair: tuple[TcpStream, trio.SocketStream]) -> None:
    stream, peer = pair
    side = tunnel_side(stream)
    side.abort()
    with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
        await peer.receive_some()
