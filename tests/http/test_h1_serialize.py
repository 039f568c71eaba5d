"""sidecar.http.h1 serializers: framing comes from the length argument, never from stale headers."""

from __future__ import annotations

import h11
import pytest

from sidecar.http.h1 import (
    CHUNKED,
    UNTIL_CLOSE,
    chunk_bytes,
    last_chunk_bytes,
    parse_request_head,
    parse_response_head,
    request_body_length,
    request_head_bytes,
    response_body_length,
    response_head_bytes,
)
from sidecar.http.message import Headers


def test_request_head_with_content_length() -> None:
    headers = Headers.of([(b"Host", b"example.com"), (b"X-Trace-ID", b"abc")])
    assert request_head_bytes(b"POST", b"/upload?x=1", headers, 5) == (
        b"POST /upload?x=1 HTTP/1.1\r\nHost: example.com\r\nX-Trace-ID: abc\r\ncontent-length: 5\r\n\r\n"
    )


def test_request_head_without_body_writes_no_framing() -> None:
    headers = Headers.of([(b"Host", b"h")])
    assert request_head_bytes(b"GET", b"/", headers, 0) == b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"


def test_request_head_chunked() -> None:
    headers = Headers.of([(b"Host", b"h")])
    assert request_head_bytes(b"POST", b"/", headers, CHUNKED) == (
        b"POST / HTTP/1.1\r\nHost: h\r\ntransfer-encoding: chunked\r\n\r\n"
    )


def test_truthful_content_length_kept_with_its_casing_and_place() -> None:
    headers = Headers.of([(b"Host", b"h"), (b"CONTENT-Length", b"5"), (b"X-After", b"1")])
    assert request_head_bytes(b"PUT", b"/", headers, 5) == (
        b"PUT / HTTP/1.1\r\nHost: h\r\nCONTENT-Length: 5\r\nX-After: 1\r\n\r\n"
    )


def test_stale_content_length_replaced() -> None:
    headers = Headers.of([(b"Host", b"h"), (b"Content-Length", b"999")])
    data = request_head_bytes(b"POST", b"/", headers, 5)
    assert data == b"POST / HTTP/1.1\r\nHost: h\r\ncontent-length: 5\r\n\r\n"
    assert b"999" not in data


def test_stale_content_length_dropped_for_chunked() -> None:
    headers = Headers.of([(b"Host", b"h"), (b"Content-Length", b"5")])
    data = request_head_bytes(b"POST", b"/", headers, CHUNKED)
    assert data == b"POST / HTTP/1.1\r\nHost: h\r\ntransfer-encoding: chunked\r\n\r\n"


def test_stale_content_length_dropped_for_empty_request() -> None:
    headers = Headers.of([(b"Host", b"h"), (b"Content-Length", b"5")])
    assert request_head_bytes(b"GET", b"/", headers, 0) == b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"


def test_duplicate_content_length_written_once() -> None:
    headers = Headers.of([(b"Content-Length", b"5"), (b"content-length", b"5"), (b"Host", b"h")])
    data = request_head_bytes(b"POST", b"/", headers, 5)
    assert data == b"POST / HTTP/1.1\r\nContent-Length: 5\r\nHost: h\r\n\r\n"


def test_sender_transfer_encoding_never_forwarded() -> None:
    headers = Headers.of([(b"Host", b"h"), (b"Transfer-Encoding", b"gzip, chunked")])
    assert request_head_bytes(b"POST", b"/", headers, 3) == b"POST / HTTP/1.1\r\nHost: h\r\ncontent-length: 3\r\n\r\n"
    chunked = request_head_bytes(b"POST", b"/", headers, CHUNKED)
    assert chunked == b"POST / HTTP/1.1\r\nHost: h\r\ntransfer-encoding: chunked\r\n\r\n"


def test_header_casing_and_order_preserved() -> None:
    pairs = [(b"X-lower-UPPER", b"1"), (b"host", b"h"), (b"ACCEPT", b"*/*"), (b"x-lower-upper", b"2")]
    data = request_head_bytes(b"GET", b"/", Headers.of(pairs), 0)
    assert data == b"GET / HTTP/1.1\r\nX-lower-UPPER: 1\r\nhost: h\r\nACCEPT: */*\r\nx-lower-upper: 2\r\n\r\n"


def test_serialized_request_parses_back() -> None:
    headers = Headers.of([(b"Host", b"h"), (b"Content-Length", b"1"), (b"X-A", b"b")])
    data = request_head_bytes(b"POST", b"/p", headers, 12)
    head = parse_request_head(data[: data.index(b"\r\n\r\n")])
    assert (head.method, head.target, head.minor) == (b"POST", b"/p", 1)
    assert request_body_length(head) == 12
    assert head.headers.get(b"x-a") == b"b"


# --------------------------------------------------------------------------------------------------
# Responses
# --------------------------------------------------------------------------------------------------


def test_response_head_with_length() -> None:
    headers = Headers.of([(b"Content-Type", b"text/plain"), (b"Content-Length", b"2")])
    assert response_head_bytes(200, b"OK", headers, 2) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\n"
    )


def test_response_head_default_reason_phrase() -> None:
    assert response_head_bytes(404, b"", Headers(), 3).startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert response_head_bytes(599, b"", Headers(), 3).startswith(b"HTTP/1.1 599 Unknown\r\n")
    assert response_head_bytes(200, b"Fine", Headers(), 3).startswith(b"HTTP/1.1 200 Fine\r\n")


def test_response_head_stale_length_replaced() -> None:
    headers = Headers.of([(b"Content-Length", b"100")])
    assert response_head_bytes(200, b"OK", headers, 7) == b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n"


def test_response_head_chunked_drops_content_length() -> None:
    headers = Headers.of([(b"Content-Length", b"100"), (b"Transfer-Encoding", b"chunked"), (b"X-Y", b"z")])
    assert response_head_bytes(200, b"OK", headers, CHUNKED) == (
        b"HTTP/1.1 200 OK\r\nX-Y: z\r\ntransfer-encoding: chunked\r\n\r\n"
    )


def test_response_head_until_close_writes_no_framing() -> None:
    headers = Headers.of([(b"Content-Length", b"100"), (b"Transfer-Encoding", b"chunked"), (b"X-Y", b"z")])
    assert response_head_bytes(200, b"OK", headers, UNTIL_CLOSE, minor=0, close=True) == (
        b"HTTP/1.1 200 OK\r\nX-Y: z\r\nconnection: close\r\n\r\n"
    )


def test_response_head_empty_body_is_delimited() -> None:
    """A 200 with no body must say `content-length: 0`; without framing a client reads until close."""
    data = response_head_bytes(200, b"OK", Headers(), 0)
    head = parse_response_head(data[: data.index(b"\r\n\r\n")])
    assert response_body_length(head, b"GET") == 0


def test_response_head_close() -> None:
    data = response_head_bytes(200, b"OK", Headers.of([(b"Content-Length", b"1")]), 1, close=True)
    assert data == b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nconnection: close\r\n\r\n"


def test_response_head_http10_keep_alive() -> None:
    data = response_head_bytes(200, b"OK", Headers.of([(b"Content-Length", b"1")]), 1, minor=0)
    assert data == b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nconnection: keep-alive\r\n\r\n"
    closing = response_head_bytes(200, b"OK", Headers.of([(b"Content-Length", b"1")]), 1, minor=0, close=True)
    assert closing == b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nconnection: close\r\n\r\n"


def test_response_head_only_passes_length_headers() -> None:
    headers = Headers.of([(b"Content-Length", b"1234"), (b"Transfer-Encoding", b"chunked"), (b"ETag", b'"x"')])
    data = response_head_bytes(200, b"OK", headers, 0, head_only=True)
    assert data == b'HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nETag: "x"\r\n\r\n'
    not_modified = response_head_bytes(304, b"", Headers.of([(b"ETag", b'"x"')]), 0, head_only=True)
    assert not_modified == b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n'


def test_response_head_casing_preserved() -> None:
    headers = Headers.of([(b"X-Legacy-HEADER", b"v"), (b"set-COOKIE", b"a=b")])
    assert response_head_bytes(200, b"OK", headers, 0, head_only=True) == (
        b"HTTP/1.1 200 OK\r\nX-Legacy-HEADER: v\r\nset-COOKIE: a=b\r\n\r\n"
    )


# --------------------------------------------------------------------------------------------------
# Chunks
# --------------------------------------------------------------------------------------------------


def test_chunk_bytes() -> None:
    assert chunk_bytes(b"hello") == b"5\r\nhello\r\n"
    assert chunk_bytes(b"x" * 255) == b"ff\r\n" + b"x" * 255 + b"\r\n"
    assert chunk_bytes(b"x" * 4096) == b"1000\r\n" + b"x" * 4096 + b"\r\n"


def test_last_chunk_bytes() -> None:
    assert last_chunk_bytes(None) == b"0\r\n\r\n"
    assert last_chunk_bytes(Headers()) == b"0\r\n\r\n"
    trailers = Headers.of([(b"Grpc-Status", b"0"), (b"grpc-message", b"ok")])
    assert last_chunk_bytes(trailers) == b"0\r\nGrpc-Status: 0\r\ngrpc-message: ok\r\n\r\n"


def test_chunked_response_read_by_h11() -> None:
    headers = Headers.of([(b"Content-Type", b"text/plain"), (b"Content-Length", b"3")])
    wire = (
        response_head_bytes(200, b"OK", headers, CHUNKED)
        + chunk_bytes(b"hello ")
        + chunk_bytes(b"world")
        + last_chunk_bytes(Headers.of([(b"X-Sum", b"9")]))
    )
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "h")]))
    client.send(h11.EndOfMessage())
    client.receive_data(wire)
    events = []
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            break
        events.append(event)
        if isinstance(event, h11.EndOfMessage):
            break
    assert isinstance(events[0], h11.Response)
    assert events[0].status_code == 200
    assert (b"content-length", b"3") not in list(events[0].headers)
    assert b"".join(bytes(e.data) for e in events if isinstance(e, h11.Data)) == b"hello world"
    assert list(events[-1].headers) == [(b"x-sum", b"9")]


@pytest.mark.parametrize("status", [200, 404])
def test_empty_response_is_complete_for_h11(status: int) -> None:
    """An empty body written with length 0 must end the message without closing the connection."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("Host", "h")]))
    client.send(h11.EndOfMessage())
    client.receive_data(response_head_bytes(status, b"", Headers(), 0))
    assert isinstance(client.next_event(), h11.Response)
    assert isinstance(client.next_event(), h11.EndOfMessage)


def test_response_truthful_zero_length_written_once() -> None:
    headers = Headers.of([(b"Content-Length", b"0"), (b"X-A", b"1")])
    assert response_head_bytes(200, b"OK", headers, 0) == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n"


def test_response_stale_length_with_empty_body() -> None:
    headers = Headers.of([(b"Content-Length", b"5"), (b"X-A", b"1")])
    assert response_head_bytes(200, b"OK", headers, 0) == b"HTTP/1.1 200 OK\r\nX-A: 1\r\ncontent-length: 0\r\n\r\n"
