"""sidecar.http.h1: request/response heads, body framing and keep-alive decisions."""

from __future__ import annotations

import pytest

from sidecar.http.errors import BadRequest
from sidecar.http.h1 import (
    CHUNKED,
    UNTIL_CLOSE,
    ProtocolViolation,
    RequestHead,
    ResponseHead,
    parse_request_head,
    parse_response_head,
    request_body_length,
    response_body_length,
    wants_keep_alive,
)
from sidecar.http.message import Headers

# --------------------------------------------------------------------------------------------------
# Request heads
# --------------------------------------------------------------------------------------------------


def test_request_head_fields() -> None:
    head = parse_request_head(b"GET /a/b?q=1 HTTP/1.1\r\nHost: example.com\r\nX-Custom-Thing: Some Value")
    assert head.method == b"GET"
    assert head.target == b"/a/b?q=1"
    assert head.minor == 1
    assert head.headers.fields == [
        (b"host", b"Host", b"example.com"),
        (b"x-custom-thing", b"X-Custom-Thing", b"Some Value"),
    ]


def test_request_head_http10_without_headers() -> None:
    head = parse_request_head(b"POST /submit HTTP/1.0")
    assert (head.method, head.target, head.minor) == (b"POST", b"/submit", 0)
    assert head.headers.fields == []


def test_request_head_casing_kept_raw_and_lowered_for_lookup() -> None:
    head = parse_request_head(b"GET / HTTP/1.1\r\nHOST: a\r\nx-MiXeD-cAsE: v\r\ncontent-TYPE: text/plain")
    assert [raw for _, raw, _ in head.headers.fields] == [b"HOST", b"x-MiXeD-cAsE", b"content-TYPE"]
    assert [lname for lname, _, _ in head.headers.fields] == [b"host", b"x-mixed-case", b"content-type"]
    assert head.headers.get(b"x-mixed-case") == b"v"
    assert head.headers.get(b"content-type") == b"text/plain"


def test_request_head_value_whitespace_trimmed_inner_kept() -> None:
    head = parse_request_head(b"GET / HTTP/1.1\r\nA:   spaced  out \t\r\nB:\r\nC:\tx")
    assert head.headers.fields == [(b"a", b"A", b"spaced  out"), (b"b", b"B", b""), (b"c", b"C", b"x")]


def test_request_head_obs_text_value_accepted() -> None:
    head = parse_request_head(b"GET / HTTP/1.1\r\nX-Name: caf\xc3\xa9 \x80\xff")
    assert head.headers.get(b"x-name") == b"caf\xc3\xa9 \x80\xff"


def test_request_head_repeated_fields_kept_in_order() -> None:
    head = parse_request_head(b"GET / HTTP/1.1\r\nX-A: 1\r\nX-B: 2\r\nx-a: 3")
    assert head.headers.get_all(b"x-a") == [b"1", b"3"]


@pytest.mark.parametrize(
    "target",
    [b"/", b"*", b"http://example.com/path?x=1", b"/%20encoded/~user", b"example.com:443"],
)
def test_request_targets_accepted(target: bytes) -> None:
    assert parse_request_head(b"OPTIONS " + target + b" HTTP/1.1\r\nHost: h").target == target


@pytest.mark.parametrize("method", [b"GET", b"PATCH", b"M-SEARCH", b"PROPFIND", b"X_CUSTOM!"])
def test_request_token_methods_accepted(method: bytes) -> None:
    assert parse_request_head(method + b" / HTTP/1.1").method == method


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(b"GET / HTTP/1.1\nHost: a", id="bare-LF-after-request-line"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\nX: b", id="bare-LF-between-fields"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\rX: b", id="bare-CR-between-fields"),
        pytest.param(b"GET / HTTP/1.1\r\nX: a\r\n  continued", id="obs-fold-space"),
        pytest.param(b"GET / HTTP/1.1\r\nX: a\r\n\tcontinued", id="obs-fold-tab"),
        pytest.param(b"GET / HTTP/1.1\r\nHost : a", id="space-before-colon"),
        pytest.param(b"GET / HTTP/1.1\r\nHost\t: a", id="tab-before-colon"),
        pytest.param(b"GET / HTTP/1.1\r\nX(y): a", id="non-token-name-paren"),
        pytest.param(b"GET / HTTP/1.1\r\nX y: a", id="non-token-name-space"),
        pytest.param(b'GET / HTTP/1.1\r\nX"y: a', id="non-token-name-quote"),
        pytest.param(b"GET / HTTP/1.1\r\n: a", id="empty-name"),
        pytest.param(b"GET / HTTP/1.1\r\nNoColonHere", id="no-colon"),
        pytest.param(b"GET / HTTP/1.1\r\nX: a\x00b", id="NUL-in-value"),
        pytest.param(b"GET / HTTP/1.1\r\nX: a\x01b", id="SOH-in-value"),
        pytest.param(b"GET / HTTP/1.1\r\nX: a\x1bb", id="ESC-in-value"),
        pytest.param(b"GET / HTTP/1.1\r\nX: a\x7fb", id="DEL-in-value"),
        pytest.param(b"GET / HTTP/1.1\r\nX: a\r\n\r\nY: b", id="empty-line-inside-head"),
        pytest.param(b"GET / HTTP/2.0", id="HTTP/2.0"),
        pytest.param(b"GET / HTTP/1.2", id="HTTP/1.2"),
        pytest.param(b"GET / HTTP/0.9", id="HTTP/0.9"),
        pytest.param(b"GET / HTTP/1.10", id="HTTP/1.10"),
        pytest.param(b"GET / http/1.1", id="lower-case-protocol"),
        pytest.param(b"GET /", id="missing-version"),
        pytest.param(b"GET", id="method-only"),
        pytest.param(b"", id="empty"),
        pytest.param(b"GET  / HTTP/1.1", id="double-space"),
        pytest.param(b"GET / HTTP/1.1 ", id="trailing-space"),
        pytest.param(b" GET / HTTP/1.1", id="leading-space"),
        pytest.param(b"GET\t/ HTTP/1.1", id="tab-separator"),
        pytest.param(b"GET /a b HTTP/1.1", id="space-in-target"),
        pytest.param(b"GET /a\x00b HTTP/1.1", id="NUL-in-target"),
        pytest.param(b"GET /a\x7f HTTP/1.1", id="DEL-in-target"),
        pytest.param(b"G(T / HTTP/1.1", id="non-token-method"),
        pytest.param(b"GET / HTTP/1.1\r\n", id="trailing-CRLF-empty-field-line"),
    ],
)
def test_request_head_rejected(block: bytes) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_request_head(block)
    assert caught.value.status == 400
    assert caught.value.reason == "bad_request"


def test_request_head_obs_fold_message_names_folding() -> None:
    with pytest.raises(BadRequest, match="folding"):
        parse_request_head(b"GET / HTTP/1.1\r\nX: a\r\n continued")


# --------------------------------------------------------------------------------------------------
# Response heads
# --------------------------------------------------------------------------------------------------


def test_response_head_fields() -> None:
    head = parse_response_head(b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nX-Thing: Y")
    assert (head.minor, head.status, head.reason) == (1, 404, b"Not Found")
    assert head.headers.fields == [(b"content-length", b"Content-Length", b"3"), (b"x-thing", b"X-Thing", b"Y")]


@pytest.mark.parametrize(
    ("line", "minor", "status", "reason"),
    [
        (b"HTTP/1.0 200 OK", 0, 200, b"OK"),
        (b"HTTP/1.1 200", 1, 200, b""),
        (b"HTTP/1.1 200 ", 1, 200, b""),
        (b"HTTP/1.1 599 Weird Custom Reason", 1, 599, b"Weird Custom Reason"),
        (b"HTTP/1.1 101 Switching Protocols", 1, 101, b"Switching Protocols"),
    ],
)
def test_response_status_lines(line: bytes, minor: int, status: int, reason: bytes) -> None:
    head = parse_response_head(line)
    assert (head.minor, head.status, head.reason) == (minor, status, reason)


@pytest.mark.parametrize(
    "block",
    [
        pytest.param(b"HTTP/2.0 200 OK", id="HTTP/2.0"),
        pytest.param(b"HTTP/1.2 200 OK", id="HTTP/1.2"),
        pytest.param(b"HTTP/1.1 20 OK", id="two-digit-status"),
        pytest.param(b"HTTP/1.1 2000 OK", id="four-digit-status"),
        pytest.param(b"HTTP/1.1 099 OK", id="status-below-100"),
        pytest.param(b"HTTP/1.1 OK", id="no-status"),
        pytest.param(b"HTTP/1.1 200 OK\nX: y", id="bare-LF"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX: y\r\n folded", id="obs-fold"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX : y", id="space-before-colon"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX: a\x00", id="NUL-in-value"),
        pytest.param(b"HTTP/1.1 200 O\x00K", id="NUL-in-reason"),
        pytest.param(b"ICY 200 OK", id="not-http"),
    ],
)
def test_response_head_rejected(block: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        parse_response_head(block)


# --------------------------------------------------------------------------------------------------
# Request body framing
# --------------------------------------------------------------------------------------------------


def _head_bytes(start: bytes, fields: tuple[tuple[bytes, bytes], ...]) -> bytes:
    return b"\r\n".join([start, *(name + b": " + value for name, value in fields)])


@pytest.fixture(params=["parsed", "constructed"])
def make_req(request: pytest.FixtureRequest):
    """Request heads both as the parser makes them from wire bytes and as code builds them."""

    def make(*fields: tuple[bytes, bytes], minor: int = 1) -> RequestHead:
        if request.param == "parsed":
            return parse_request_head(_head_bytes(b"POST / HTTP/1.%d" % minor, fields))
        return RequestHead(b"POST", b"/", minor, Headers.of(fields))

    return make


@pytest.fixture(params=["parsed", "constructed"])
def make_resp(request: pytest.FixtureRequest):
    def make(status: int, *fields: tuple[bytes, bytes], minor: int = 1) -> ResponseHead:
        if request.param == "parsed":
            return parse_response_head(_head_bytes(b"HTTP/1.%d %d X" % (minor, status), fields))
        return ResponseHead(minor, status, b"", Headers.of(fields))

    return make


def test_request_without_framing_has_no_body(make_req) -> None:
    assert request_body_length(make_req((b"Host", b"a"))) == 0


@pytest.mark.parametrize(("value", "expected"), [(b"0", 0), (b"5", 5), (b"1234567", 1234567), (b"007", 7)])
def test_request_content_length(value: bytes, expected: int, make_req) -> None:
    assert request_body_length(make_req((b"Content-Length", value))) == expected


def test_request_content_length_http10(make_req) -> None:
    assert request_body_length(make_req((b"Content-Length", b"12"), minor=0)) == 12


def test_request_identical_repeated_content_length_accepted(make_req) -> None:
    assert request_body_length(make_req((b"Content-Length", b"5"), (b"content-length", b"5"))) == 5
    assert request_body_length(make_req((b"Content-Length", b"5, 5"))) == 5
    assert request_body_length(make_req((b"Content-Length", b"5,5, 5"), (b"Content-Length", b"5"))) == 5


@pytest.mark.parametrize("value", [b"chunked", b"Chunked", b"CHUNKED"])
def test_request_chunked(value: bytes, make_req) -> None:
    assert request_body_length(make_req((b"Transfer-Encoding", value))) == CHUNKED


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param([(b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")], id="CL+TE"),
        pytest.param([(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"5")], id="TE+CL"),
        pytest.param([(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"0")], id="TE+CL0"),
        pytest.param([(b"Content-Length", b"5"), (b"Content-Length", b"6")], id="two-CL"),
        pytest.param([(b"Content-Length", b"5, 6")], id="CL-list"),
        pytest.param([(b"Content-Length", b"5,")], id="CL-list-empty-member"),
        pytest.param([(b"Content-Length", b"+5")], id="CL-plus"),
        pytest.param([(b"Content-Length", b"-5")], id="CL-minus"),
        pytest.param([(b"Content-Length", b"5a")], id="CL-hex-ish"),
        pytest.param([(b"Content-Length", b"0x5")], id="CL-0x"),
        pytest.param([(b"Content-Length", b"5.0")], id="CL-decimal"),
        pytest.param([(b"Content-Length", b"")], id="CL-empty"),
        pytest.param([(b"Content-Length", b"1 2")], id="CL-inner-space"),
        pytest.param([(b"Content-Length", "\u0665".encode())], id="CL-arabic-digit"),
        pytest.param([(b"Content-Length", b"9" * 19)], id="CL-19-digits"),
        pytest.param([(b"Transfer-Encoding", b"gzip, chunked")], id="TE-gzip-chunked"),
        pytest.param([(b"Transfer-Encoding", b"chunked, identity")], id="TE-chunked-identity"),
        pytest.param([(b"Transfer-Encoding", b"chunked, chunked")], id="TE-chunked-twice"),
        pytest.param([(b"Transfer-Encoding", b"xchunked")], id="TE-xchunked"),
        pytest.param([(b"Transfer-Encoding", b"chunkedx")], id="TE-chunkedx"),
        pytest.param([(b"Transfer-Encoding", b"identity")], id="TE-identity"),
        pytest.param([(b"Transfer-Encoding", b"gzip")], id="TE-gzip"),
        pytest.param([(b"Transfer-Encoding", b"")], id="TE-empty"),
        pytest.param([(b"Transfer-Encoding", b"chunked"), (b"Transfer-Encoding", b"chunked")], id="TE-two-fields"),
        pytest.param([(b"Transfer-Encoding", b"gzip"), (b"Transfer-Encoding", b"chunked")], id="TE-gzip-then-chunked"),
    ],
)
def test_request_smuggling_shapes_rejected(fields: list[tuple[bytes, bytes]], make_req) -> None:
    with pytest.raises(BadRequest) as caught:
        request_body_length(make_req(*fields))
    assert (caught.value.status, caught.value.reason) == (400, "bad_request")


def test_request_leading_space_xchunked_from_the_wire_rejected() -> None:
    head = parse_request_head(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  xchunked")
    with pytest.raises(BadRequest):
        request_body_length(head)


def test_request_te_in_http10_rejected(make_req) -> None:
    with pytest.raises(BadRequest):
        request_body_length(make_req((b"Transfer-Encoding", b"chunked"), minor=0))


def test_request_parsed_cl_te_smuggling_rejected() -> None:
    head = parse_request_head(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked")
    with pytest.raises(BadRequest):
        request_body_length(head)


# --------------------------------------------------------------------------------------------------
# Response body framing
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [100, 101, 103, 204, 304])
def test_response_without_body_by_status(status: int, make_resp) -> None:
    assert response_body_length(make_resp(status, (b"Content-Length", b"10")), b"GET") == 0
    assert response_body_length(make_resp(status, (b"Transfer-Encoding", b"chunked")), b"GET") == 0


def test_response_to_head_has_no_body(make_resp) -> None:
    assert response_body_length(make_resp(200, (b"Content-Length", b"10")), b"HEAD") == 0
    assert response_body_length(make_resp(200, (b"Transfer-Encoding", b"chunked")), b"HEAD") == 0
    assert response_body_length(make_resp(200), b"HEAD") == 0


def test_response_content_length(make_resp) -> None:
    assert response_body_length(make_resp(200, (b"Content-Length", b"10")), b"GET") == 10
    assert response_body_length(make_resp(200, (b"Content-Length", b"0")), b"GET") == 0
    assert response_body_length(make_resp(200, (b"Content-Length", b"7"), (b"Content-Length", b"7")), b"GET") == 7


def test_response_chunked(make_resp) -> None:
    assert response_body_length(make_resp(200, (b"Transfer-Encoding", b"chunked")), b"GET") == CHUNKED
    assert response_body_length(make_resp(200, (b"Transfer-Encoding", b"gzip, chunked")), b"POST") == CHUNKED


def test_response_until_close(make_resp) -> None:
    assert response_body_length(make_resp(200), b"GET") == UNTIL_CLOSE
    assert response_body_length(make_resp(200, (b"Transfer-Encoding", b"gzip")), b"GET") == UNTIL_CLOSE


@pytest.mark.parametrize(
    "fields",
    [
        [(b"Content-Length", b"5"), (b"Content-Length", b"6")],
        [(b"Content-Length", b"5, 6")],
        [(b"Content-Length", b"-1")],
        [(b"Content-Length", b"abc")],
    ],
)
def test_response_bad_content_length(fields: list[tuple[bytes, bytes]], make_resp) -> None:
    with pytest.raises(ProtocolViolation):
        response_body_length(make_resp(200, *fields), b"GET")


# --------------------------------------------------------------------------------------------------
# Keep-alive
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("minor", "connection", "expected"),
    [
        (1, None, True),
        (0, None, False),
        (1, b"close", False),
        (1, b"Close", False),
        (1, b"keep-alive", True),
        (0, b"keep-alive", True),
        (0, b"Keep-Alive", True),
        (0, b"close", False),
        (1, b"upgrade, close", False),
        (0, b"keep-alive, close", False),
        (1, b"x-other", True),
        (0, b"x-other", False),
    ],
)
def test_wants_keep_alive(minor: int, connection: bytes | None, expected: bool) -> None:
    fields = [(b"Connection", connection)] if connection is not None else []
    assert wants_keep_alive(minor, Headers.of(fields)) is expected


def test_wants_keep_alive_several_connection_fields() -> None:
    headers = Headers.of([(b"Connection", b"keep-alive"), (b"connection", b"close")])
    assert wants_keep_alive(1, headers) is False
    assert wants_keep_alive(0, headers) is False
