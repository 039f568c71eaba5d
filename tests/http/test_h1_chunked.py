"""sidecar.http.h1.ChunkedDecoder: exact consumption, any split of the input, strict chunk sizes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.http.h1 import END, MAX_CHUNK_LINE, ChunkedDecoder, ProtocolViolation

NEXT = b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"


def decode_all(data: bytes) -> tuple[bytes, list[tuple[bytes, bytes, bytes]] | None, bytes]:
    """Feed `data` at once; returns (body, trailer fields, what is left in the buffer)."""
    decoder = ChunkedDecoder()
    buf = bytearray(data)
    out = bytearray()
    while True:
        piece = decoder.next(buf)
        assert piece is not None, "decoder asked for more bytes on a complete body"
        if piece is END:
            break
        out += piece
    assert decoder.done
    return bytes(out), (decoder.trailers.fields if decoder.trailers is not None else None), bytes(buf)


def decode_in_pieces(pieces: list[bytes]) -> tuple[bytes, list[tuple[bytes, bytes, bytes]] | None, bytes]:
    """Feed `pieces` one after another into a shared buffer, as a connection would."""
    decoder = ChunkedDecoder()
    buf = bytearray()
    out = bytearray()
    feed = iter(pieces)
    while True:
        piece = decoder.next(buf)
        if piece is None:
            assert not decoder.done
            buf += next(feed)  # StopIteration here = the decoder wanted more than the body
            continue
        if piece is END:
            break
        assert piece, "a data chunk is never empty"
        out += piece
    rest = bytes(buf) + b"".join(feed)
    return bytes(out), (decoder.trailers.fields if decoder.trailers is not None else None), rest


def test_simple_body() -> None:
    body, trailers, rest = decode_all(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert body == b"hello world"
    assert trailers is None
    assert rest == b""


def test_leaves_next_message_in_buffer() -> None:
    body, trailers, rest = decode_all(b"3\r\nabc\r\n0\r\n\r\n" + NEXT)
    assert (body, trailers, rest) == (b"abc", None, NEXT)


def test_trailers_parsed_and_next_message_left() -> None:
    body, trailers, rest = decode_all(b"3\r\nabc\r\n0\r\nX-Checksum: 42\r\ngrpc-status: 0\r\n\r\n" + NEXT)
    assert body == b"abc"
    assert trailers == [(b"x-checksum", b"X-Checksum", b"42"), (b"grpc-status", b"grpc-status", b"0")]
    assert rest == NEXT


def test_empty_body() -> None:
    assert decode_all(b"0\r\n\r\n") == (b"", None, b"")


@pytest.mark.parametrize("size_line", [b"a", b"A", b"00a", b"a;name=value", b"a ;ext", b'a\t;x="q"', b"a  "])
def test_size_line_forms_accepted(size_line: bytes) -> None:
    body, _, rest = decode_all(size_line + b"\r\n0123456789\r\n0\r\n\r\n")
    assert body == b"0123456789"
    assert rest == b""


def test_fifteen_hex_digits_accepted() -> None:
    decoder = ChunkedDecoder()
    buf = bytearray(b"000000000000003\r\nabc\r\n0\r\n\r\n")
    assert decoder.next(buf) == b"abc"
    assert decoder.next(buf) is END


def test_byte_by_byte() -> None:
    data = b"5\r\nhello\r\n1a;ext=1\r\n" + b"z" * 26 + b"\r\n0\r\nA: 1\r\nB: 2\r\n\r\n"
    body, trailers, rest = decode_in_pieces([data[i : i + 1] for i in range(len(data))] + [NEXT])
    assert body == b"hello" + b"z" * 26
    assert trailers == [(b"a", b"A", b"1"), (b"b", b"B", b"2")]
    assert rest == NEXT


def test_needs_more_returns_none_without_consuming_partial_size_line() -> None:
    decoder = ChunkedDecoder()
    buf = bytearray(b"1")
    assert decoder.next(buf) is None
    assert buf == b"1"
    buf += b"0\r\n"
    assert decoder.next(buf) is None  # size 0x10 read; no data yet
    assert buf == b""
    buf += b"x" * 16 + b"\r\n0\r\n"
    assert decoder.next(buf) == b"x" * 16
    assert decoder.next(buf) is None  # waiting for the end of the trailer section
    assert not decoder.done
    buf += b"\r\n"
    assert decoder.next(buf) is END
    assert decoder.done


def test_data_delivered_as_it_arrives() -> None:
    decoder = ChunkedDecoder()
    buf = bytearray(b"a\r\nabc")
    assert decoder.next(buf) == b"abc"
    buf += b"defg"
    assert decoder.next(buf) == b"defg"
    buf += b"hij\r\n0\r\n\r\n"
    assert decoder.next(buf) == b"hij"
    assert decoder.next(buf) is END


def test_after_end_keeps_returning_end_and_consumes_nothing() -> None:
    decoder = ChunkedDecoder()
    buf = bytearray(b"0\r\n\r\n" + NEXT)
    assert decoder.next(buf) is END
    assert decoder.next(buf) is END
    assert buf == NEXT


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"0x10\r\n", id="0x-prefix"),
        pytest.param(b"-1\r\n", id="negative"),
        pytest.param(b"+1\r\n", id="plus"),
        pytest.param(b"1 0\r\n", id="inner-space"),
        pytest.param(b" 1\r\n", id="leading-space"),
        pytest.param(b"\r\n", id="empty-size"),
        pytest.param(b"g\r\n", id="non-hex"),
        pytest.param(b"1" * 16 + b"\r\n", id="16-hex-digits"),
        pytest.param(b"0" * 16 + b"5\r\n", id="17-digits-leading-zeros"),
        pytest.param(b"5\nhello\r\n", id="bare-LF-after-size"),
        pytest.param(b"5;a\x00b\r\n", id="NUL-in-extension"),
        pytest.param(b"5\r\nhelloXX0\r\n\r\n", id="missing-CRLF-after-data"),
        pytest.param(b"5\r\nhello\n0\r\n\r\n", id="bare-LF-after-data"),
        pytest.param(b"5\r\nhelloworld\r\n", id="data-longer-than-size"),
        pytest.param(b"3\r\nabc\r\n0\r\nX: a\r\n folded\r\n\r\n", id="obs-fold-in-trailers"),
        pytest.param(b"3\r\nabc\r\n0\r\nBad Name: a\r\n\r\n", id="bad-trailer-name"),
    ],
)
def test_invalid_encodings(data: bytes) -> None:
    decoder = ChunkedDecoder()
    buf = bytearray(data)
    with pytest.raises(ProtocolViolation):
        for _ in range(10):
            if decoder.next(buf) is END:
                break


def test_oversized_size_line_without_crlf() -> None:
    decoder = ChunkedDecoder()
    buf = bytearray(b"5;" + b"x" * MAX_CHUNK_LINE)
    with pytest.raises(ProtocolViolation):
        decoder.next(buf)


def test_oversized_size_line_with_crlf_beyond_limit() -> None:
    decoder = ChunkedDecoder()
    buf = bytearray(b"5;" + b"x" * (MAX_CHUNK_LINE * 2) + b"\r\nhello\r\n0\r\n\r\n")
    with pytest.raises(ProtocolViolation):
        decoder.next(buf)


def test_oversized_size_line_grown_slowly() -> None:
    decoder = ChunkedDecoder()
    buf = bytearray(b"5;")
    with pytest.raises(ProtocolViolation):
        for _ in range(MAX_CHUNK_LINE):
            assert decoder.next(buf) is None
            buf += b"xx"


def test_oversized_trailers() -> None:
    decoder = ChunkedDecoder()
    buf = bytearray(b"0\r\n")
    with pytest.raises(ProtocolViolation):
        for _ in range(200):
            decoder.next(buf)
            buf += b"X-Pad: " + b"p" * 1000 + b"\r\n"


# --------------------------------------------------------------------------------------------------
# Property: any split of a valid encoding decodes to the same data and trailers.
# --------------------------------------------------------------------------------------------------

_token = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_!#$%&'*+.^`|~", min_size=1, max_size=12
)
_value = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=20)


@st.composite
def chunked_messages(draw: st.DrawFn) -> tuple[bytes, bytes, list[tuple[bytes, bytes, bytes]] | None]:
    """(encoding, data, expected trailer fields) of a valid chunked body with random sizes and extensions."""
    chunks = draw(st.lists(st.binary(min_size=1, max_size=300), max_size=8))
    parts = []
    for chunk in chunks:
        size = b"%x" % len(chunk)
        if draw(st.booleans()):
            size = size.upper()
        size = b"0" * draw(st.integers(0, 3)) + size
        if draw(st.booleans()):
            size += b";" + draw(_token).encode() + b"=" + draw(_token).encode()
        parts.append(size + b"\r\n" + chunk + b"\r\n")
    trailers = draw(st.lists(st.tuples(_token, _value), max_size=3))
    parts.append(b"0\r\n")
    for name, value in trailers:
        parts.append(f"{name}: {value}\r\n".encode())
    parts.append(b"\r\n")
    expected = [(n.lower().encode(), n.encode(), v.encode()) for n, v in trailers] or None
    return b"".join(parts), b"".join(chunks), expected


@settings(max_examples=300, deadline=None)
@given(message=chunked_messages(), data=st.data())
def test_random_splits_decode_identically(
    message: tuple[bytes, bytes, list[tuple[bytes, bytes, bytes]] | None], data: st.DataObject
) -> None:
    encoding, body, trailers = message
    whole = encoding + NEXT
    cuts = sorted(data.draw(st.lists(st.integers(0, len(whole)), max_size=20)))
    pieces = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)], strict=True)]
    assert decode_all(whole) == (body, trailers, NEXT)
    assert decode_in_pieces(pieces) == (body, trailers, NEXT)


@settings(max_examples=50, deadline=None)
@given(message=chunked_messages())
def test_byte_by_byte_property(message: tuple[bytes, bytes, list[tuple[bytes, bytes, bytes]] | None]) -> None:
    encoding, body, trailers = message
    whole = encoding + NEXT
    assert decode_in_pieces([whole[i : i + 1] for i in range(len(whole))]) == (body, trailers, NEXT)


@settings(max_examples=100, deadline=None)
@given(message=chunked_messages(), cut=st.data())
def test_truncated_body_never_ends(
    message: tuple[bytes, bytes, list[tuple[bytes, bytes, bytes]] | None], cut: st.DataObject
) -> None:
    """Every strict prefix of a valid encoding leaves the decoder waiting, never finished."""
    encoding, _, _ = message
    n = cut.draw(st.integers(0, len(encoding) - 1))
    decoder = ChunkedDecoder()
    buf = bytearray(encoding[:n])
    for _ in range(len(encoding) + 2):
        piece = decoder.next(buf)
        assert piece is not END
        if piece is None:
            break
    assert piece is None
    assert not decoder.done
